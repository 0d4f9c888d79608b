//! The gRPC contract. The `.proto` files and their pure-Rust compilation arrive with
//! issue 5; until then this crate only reserves its place in the workspace.

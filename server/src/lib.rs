//! The gRPC service. It arrives with issue 5; until then this crate only reserves its
//! place in the workspace.

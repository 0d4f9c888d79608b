//! The durable event log. The embedded segment-file backend and the KurrentDB backend
//! arrive with issue 3; until then this crate only reserves its place in the workspace.

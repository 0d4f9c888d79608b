//! Read models built from the event log. They arrive with issue 4; until then this crate
//! only reserves its place in the workspace.

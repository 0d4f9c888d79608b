//! Helpers shared by the integration tests.
#![allow(dead_code)]

use chrono::{TimeZone, Utc};
use ledger::NewEvent;
use uuid::Uuid;

/// A small event whose payload and id follow from `seed`, so that a test (or a parent
/// process) can rebuild exactly what was appended.
pub fn event(seed: u128, event_type: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::from_u128(seed),
        event_type: event_type.to_owned(),
        schema_version: 1,
        recorded_at: Utc
            .timestamp_opt(1_750_000_000 + (seed % 1000) as i64, 0)
            .unwrap(),
        actor: "admin@north.edu".to_owned(),
        correlation_id: Uuid::from_u128(seed ^ 0xabcdef),
        payload: seed.to_be_bytes().to_vec(),
    }
}

/// `n` events with fresh random ids.
pub fn events(n: usize, event_type: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|_| event(Uuid::new_v4().as_u128(), event_type))
        .collect()
}

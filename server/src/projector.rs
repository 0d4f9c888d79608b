//! Feeds the projections from the log: catch up from their checkpoint, then follow the log
//! live through its subscription (issue 4). Each batch is applied atomically with the
//! checkpoint (AUD-6), so a crash resumes exactly where it stopped.
//!
//! Positions: the ledger numbers events from 0; the projections, like the API, count from 1
//! so that 0 can mean "nothing yet". `api_position` is the one place that converts.

use std::sync::Arc;

use ledger::{EventLog, RecordedEvent};
use projections::{ProjectedEvent, Projections};

use crate::core::{CoreError, decode};

/// The most events applied in one projection batch.
pub const PROJECTOR_BATCH_EVENTS_MAX: usize = 1_000;

/// The position clients see for a ledger position.
pub fn api_position(ledger_position: u64) -> u64 {
    ledger_position + 1
}

/// The ledger position of the first event at or after an API position.
pub fn ledger_position(api_position: u64) -> u64 {
    api_position.saturating_sub(1)
}

fn projected(recorded: &RecordedEvent) -> Result<ProjectedEvent, CoreError> {
    let decoded = decode(recorded)?;
    Ok(ProjectedEvent {
        position: api_position(recorded.position),
        stream: recorded.stream.clone(),
        revision: recorded.revision,
        recorded_at: recorded.recorded_at,
        actor: decoded.meta.actor,
        event: decoded.event,
    })
}

/// Runs until the server closes or the log's subscription ends, then returns, so that the
/// caller can await it and know the projections are no longer in use. An error stops the
/// projector (and is logged): queries then wait for a position that never comes and answer
/// UNAVAILABLE, which is what an operator should see rather than a wrong answer.
pub async fn run(
    log: Arc<dyn EventLog>,
    projections: Arc<Projections>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = closing.wait_for(|closing| *closing) => {}
        result = follow(log, projections) => {
            if let Err(error) = result {
                tracing::error!(%error, "the projector stopped");
            }
        }
    }
}

async fn follow(log: Arc<dyn EventLog>, projections: Arc<Projections>) -> Result<(), String> {
    let checkpoint = projections.checkpoint().map_err(|e| e.to_string())?;
    // The checkpoint is the last applied API position, which is the next ledger position.
    let mut subscription = log
        .subscribe_all(checkpoint)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let Some(first) = subscription.next().await else {
            return Ok(());
        };
        let mut batch =
            vec![projected(&first.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?];
        // Take what is already waiting, without waiting for more.
        while batch.len() < PROJECTOR_BATCH_EVENTS_MAX {
            let next = tokio::select! {
                biased;
                next = subscription.next() => next,
                () = std::future::ready(()) => None,
            };
            let Some(next) = next else { break };
            batch.push(projected(&next.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?);
        }
        let writer = projections.clone();
        tokio::task::spawn_blocking(move || writer.apply_batch(&batch))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
}

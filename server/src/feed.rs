//! The `EventFeed` service: a catch-up-then-live subscription to the log from a position,
//! filterable by license and event type, for internal services that react to changes. Only
//! staff and system may subscribe; secrets are removed from the payloads it sends.

use std::sync::Arc;

use domain::Secret;
use domain::events::Event;
use ledger::RecordedEvent;
use proto::event_feed_server::EventFeed;
use proto::{FeedEvent, SubscribeRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Tokens;
use crate::core::{Core, license_stream};

/// Events buffered per subscriber; a slow reader slows its own feed, never the server.
pub const FEED_BUFFER_EVENTS: usize = 1_024;
/// The most event types one subscription may filter on.
pub const FEED_EVENT_TYPES_MAX: usize = 64;

pub struct FeedService {
    pub core: Arc<Core>,
    pub tokens: Tokens,
    /// Turns true when the server starts shutting down: every subscription then ends, so
    /// that graceful shutdown, which waits for calls in flight, is not held open by them.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// The payload with every secret replaced, so a feed reader cannot learn a key or a link.
fn redacted_payload(recorded: &RecordedEvent) -> Vec<u8> {
    let hidden = || Secret::presented("redacted");
    match Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.payload,
    ) {
        Ok(Event::LicenseIssued(mut e)) => {
            e.key = hidden();
            e.link = e.link.map(|_| hidden());
            Event::LicenseIssued(e).encode()
        }
        Ok(Event::LicenseKeyRotated(mut e)) => {
            e.key = hidden();
            Event::LicenseKeyRotated(e).encode()
        }
        Ok(Event::JoinLinkRotated(mut e)) => {
            e.link = hidden();
            Event::JoinLinkRotated(e).encode()
        }
        _ => recorded.payload.clone(),
    }
}

pub fn feed_event(recorded: &RecordedEvent) -> FeedEvent {
    FeedEvent {
        position: crate::projector::api_position(recorded.position),
        stream: recorded.stream.clone(),
        revision: recorded.revision,
        r#type: recorded.event_type.clone(),
        schema_version: u32::from(recorded.schema_version),
        at: crate::time_text(recorded.recorded_at),
        actor: recorded.actor.clone(),
        event_id: recorded.event_id.to_string(),
        command_id: recorded.command_id.to_string(),
        correlation_id: recorded.correlation_id.to_string(),
        payload: redacted_payload(recorded),
    }
}

#[tonic::async_trait]
impl EventFeed for FeedService {
    type SubscribeStream = ReceiverStream<Result<FeedEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let actor = self.tokens.authenticate(request.metadata())?;
        if actor.email().is_some() {
            return Err(Status::permission_denied(
                "only staff and system may subscribe to the event feed",
            ));
        }
        let r = request.into_inner();
        if r.event_types.len() > FEED_EVENT_TYPES_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {FEED_EVENT_TYPES_MAX} event types"
            )));
        }
        if let Some(unknown) = r
            .event_types
            .iter()
            .find(|t| !Event::TYPE_NAMES.contains(&t.as_str()))
        {
            return Err(Status::invalid_argument(format!(
                "unknown event type '{unknown}'"
            )));
        }
        let stream_filter = (!r.license.is_empty()).then(|| license_stream(&r.license));
        let mut subscription = self
            .core
            .log()
            .subscribe_all(crate::projector::ledger_position(r.from_position))
            .await
            .map_err(|e| crate::status::from_core(e.into()))?;
        let (sender, receiver) = tokio::sync::mpsc::channel(FEED_BUFFER_EVENTS);
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = closing.wait_for(|closing| *closing) => break,
                    next = subscription.next() => next,
                };
                let Some(next) = next else { break };
                let message = match next {
                    Ok(recorded) => {
                        let wanted = stream_filter.as_ref().is_none_or(|s| *s == recorded.stream)
                            && (r.event_types.is_empty()
                                || r.event_types.contains(&recorded.event_type));
                        if !wanted {
                            continue;
                        }
                        Ok(feed_event(&recorded))
                    }
                    Err(error) => Err(crate::status::from_core(error.into())),
                };
                let failed = message.is_err();
                // A reader that stopped reading must not hold shutdown open either.
                let sent = tokio::select! {
                    _ = closing.wait_for(|closing| *closing) => false,
                    sent = sender.send(message) => sent.is_ok(),
                };
                if !sent || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

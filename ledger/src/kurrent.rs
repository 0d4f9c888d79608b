//! The KurrentDB backend (cargo feature `kurrentdb`).
//!
//! Mapping: the stream is the KurrentDB stream, the revision its event number, the event
//! id and type KurrentDB's own, the payload KurrentDB's binary data, the commit position
//! the global position, and every other envelope field goes into the event's custom
//! metadata as JSON (`$correlationId` and `$causationId`, the command id, follow
//! KurrentDB's conventions). The ledger computes revisions and hashes itself: it reads
//! the stream's last event, checks the caller's expectation, and appends with the exact
//! revision it read, so that KurrentDB rejects a racing writer.
//!
//! Idempotency: after an append the backend writes a marker event with the result to the
//! stream `ledger-command-<command id>`, and a retry returns that. If the process died
//! between the append and the marker, a retry still finds its own command id on the
//! stream's last event and rebuilds the result from it. A command's answer (AUD-4) goes
//! into the marker and into the metadata of the append's last event, with the number of
//! events the append took, so that it survives the same crash.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionFilter,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::envelope::{GENESIS_HASH, envelope_hash, request_digest, seal, stored_digest};
use crate::types::*;

/// How often an `Any` append is retried when another writer moved the stream in between
/// its read of the head and its write.
const ANY_APPEND_ATTEMPTS_MAX: usize = 16;

/// Events a subscription's catch-up reads per request.
const SUBSCRIPTION_READ_EVENTS: usize = 1024;

/// Events buffered between a subscription's feeder and its consumer.
const SUBSCRIPTION_BUFFER_EVENTS: usize = 1024;

/// The metadata key that marks an event as written by this ledger, with the format version.
const LEDGER_KEY: &str = "ledger";

/// The metadata keys of a command's answer and of its append's event count.
const ANSWER_KEY: &str = "commandAnswer";
const APPEND_EVENTS_KEY: &str = "appendEvents";

/// The event log on a KurrentDB server.
#[derive(Clone)]
pub struct KurrentLog {
    client: Arc<Client>,
}

fn backend(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Backend(e.to_string())
}

/// The stream state KurrentDB is asked to check for an expectation.
pub(crate) fn stream_state(expected: ExpectedRevision) -> StreamState {
    match expected {
        ExpectedRevision::Any => StreamState::Any,
        ExpectedRevision::NoStream => StreamState::NoStream,
        ExpectedRevision::Exact(n) => StreamState::StreamRevision(n),
    }
}

/// KurrentDB's current revision as the ledger's.
pub(crate) fn current_revision(c: kurrentdb::CurrentRevision) -> CurrentRevision {
    match c {
        kurrentdb::CurrentRevision::NoStream => CurrentRevision::NoStream,
        kurrentdb::CurrentRevision::Current(n) => CurrentRevision::Current(n),
    }
}

/// The KurrentDB position to start reading `$all` at so that `from` is included: a
/// caller's `from` is 0 or one more than a position the log returned, and positions must
/// be record boundaries, so the read starts at `from - 1` and skips what is below `from`.
pub(crate) fn read_start(from: u64) -> StreamPosition<Position> {
    if from == 0 {
        StreamPosition::Start
    } else {
        StreamPosition::Position(Position {
            commit: from - 1,
            prepare: from - 1,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What the last event of an append made with an answer carries besides its envelope.
pub(crate) struct AppendAnswer<'a> {
    pub answer: &'a [u8],
    pub events: usize,
}

/// The custom metadata that carries the envelope fields KurrentDB has no place for, and
/// on an append's last event the command's answer.
pub(crate) fn envelope_metadata(e: &RecordedEvent, answer: Option<&AppendAnswer<'_>>) -> Vec<u8> {
    // KurrentDB wants metadata as a JSON object of string keys and string values only.
    let mut v = json!({
        LEDGER_KEY: "1",
        "schemaVersion": e.schema_version.to_string(),
        "recordedAt": e.recorded_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "actor": e.actor,
        "$causationId": e.command_id.to_string(),
        "$correlationId": e.correlation_id.to_string(),
        "predecessorHash": hex(&e.predecessor_hash),
        "hash": hex(&e.hash),
    });
    if let Some(answer) = answer {
        v[ANSWER_KEY] = Value::String(hex(answer.answer));
        v[APPEND_EVENTS_KEY] = Value::String(answer.events.to_string());
    }
    serde_json::to_vec(&v).expect("JSON of plain values")
}

/// The command's answer and the append's event count kept in an event's metadata, if any.
pub(crate) fn stored_answer(custom_metadata: &[u8]) -> Option<(Vec<u8>, usize)> {
    let meta = serde_json::from_slice::<Value>(custom_metadata).ok()?;
    let answer = unhex(meta.get(ANSWER_KEY)?.as_str()?)?;
    let events = meta.get(APPEND_EVENTS_KEY)?.as_str()?.parse().ok()?;
    Some((answer, events))
}

/// The KurrentDB event for an envelope.
pub(crate) fn to_event_data(e: &RecordedEvent, answer: Option<&AppendAnswer<'_>>) -> EventData {
    EventData::binary(e.event_type.clone(), e.payload.clone().into())
        .id(e.event_id)
        .metadata(envelope_metadata(e, answer).into())
}

/// The parts of a KurrentDB event the envelope is rebuilt from.
pub(crate) struct StoredParts<'a> {
    pub stream: &'a str,
    pub revision: u64,
    pub commit_position: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub custom_metadata: &'a [u8],
}

/// Rebuilds the envelope; `None` for an event this ledger did not write.
pub(crate) fn from_stored(p: StoredParts<'_>) -> Result<Option<RecordedEvent>> {
    let Ok(meta) = serde_json::from_slice::<Value>(p.custom_metadata) else {
        return Ok(None);
    };
    if meta.get(LEDGER_KEY).and_then(Value::as_str) != Some("1") {
        return Ok(None);
    }
    let bad = |field: &str| {
        LedgerError::Corrupt(format!(
            "event {:?}@{}: metadata field {field} is missing or malformed",
            p.stream, p.revision
        ))
    };
    let s = |k: &str| meta.get(k).and_then(Value::as_str).ok_or_else(|| bad(k));
    let uuid = |k: &str| s(k).and_then(|v| Uuid::parse_str(v).map_err(|_| bad(k)));
    let hash = |k: &str| s(k).and_then(|v| unhex32(v).ok_or_else(|| bad(k)));
    let schema_version: u16 = s("schemaVersion")?
        .parse()
        .map_err(|_| bad("schemaVersion"))?;
    let recorded_at: DateTime<Utc> = DateTime::parse_from_rfc3339(s("recordedAt")?)
        .map_err(|_| bad("recordedAt"))?
        .with_timezone(&Utc);
    Ok(Some(RecordedEvent {
        event_id: p.event_id,
        stream: p.stream.to_owned(),
        revision: p.revision,
        position: p.commit_position,
        event_type: p.event_type.to_owned(),
        schema_version,
        recorded_at,
        actor: s("actor")?.to_owned(),
        command_id: uuid("$causationId")?,
        correlation_id: uuid("$correlationId")?,
        payload: p.data.to_vec(),
        predecessor_hash: hash("predecessorHash")?,
        hash: hash("hash")?,
    }))
}

fn from_resolved(r: &kurrentdb::ResolvedEvent) -> Result<Option<RecordedEvent>> {
    let e = r.get_original_event();
    if e.stream_id().starts_with('$') {
        return Ok(None);
    }
    from_stored(StoredParts {
        stream: e.stream_id(),
        revision: e.revision,
        commit_position: e.position.commit,
        event_id: e.id,
        event_type: &e.event_type,
        data: &e.data,
        custom_metadata: &e.custom_metadata,
    })
}

/// The marker of an applied command, as stored on its marker stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommandMarker {
    pub stream: String,
    pub digest: [u8; 32],
    pub result: AppendResult,
    pub answer: Option<Vec<u8>>,
}

pub(crate) fn command_marker(marker: &CommandMarker) -> Vec<u8> {
    let r = &marker.result;
    let mut v = json!({
        "stream": marker.stream,
        "digest": hex(&marker.digest),
        "firstPosition": r.first_position,
        "lastPosition": r.last_position,
        "nextExpectedRevision": r.next_expected_revision,
    });
    if let Some(answer) = &marker.answer {
        v[ANSWER_KEY] = Value::String(hex(answer));
    }
    serde_json::to_vec(&v).expect("JSON of plain values")
}

pub(crate) fn parse_command_marker(b: &[u8]) -> Option<CommandMarker> {
    let v: Value = serde_json::from_slice(b).ok()?;
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let answer = match v.get(ANSWER_KEY) {
        None => None,
        Some(answer) => Some(unhex(answer.as_str()?)?),
    };
    Some(CommandMarker {
        stream: v.get("stream")?.as_str()?.to_owned(),
        digest: unhex32(v.get("digest")?.as_str()?)?,
        result: AppendResult {
            first_position: u("firstPosition")?,
            last_position: u("lastPosition")?,
            next_expected_revision: u("nextExpectedRevision")?,
        },
        answer,
    })
}

fn marker_stream(command_id: Uuid) -> String {
    format!("ledger-command-{command_id}")
}

impl KurrentLog {
    /// Connects with a connection string such as `kurrentdb://localhost:2113?tls=false`.
    /// The client connects lazily: a wrong address shows on the first call, not here.
    pub async fn connect(connection_string: &str) -> Result<KurrentLog> {
        let settings: ClientSettings = connection_string.parse().map_err(backend)?;
        let client = Client::new(settings).map_err(backend)?;
        Ok(KurrentLog {
            client: Arc::new(client),
        })
    }

    /// Up to `max` raw KurrentDB events of `stream` from `from` on, in the given direction.
    async fn read_raw(
        &self,
        stream: &str,
        from: StreamPosition<u64>,
        max: usize,
        backwards: bool,
    ) -> Result<Vec<RecordedEvent>> {
        let mut opts = ReadStreamOptions::default().position(from).max_count(max);
        opts = if backwards {
            opts.backwards()
        } else {
            opts.forwards()
        };
        let mut rs = match self.client.read_stream(stream.to_owned(), &opts).await {
            Ok(rs) => rs,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let mut out = Vec::new();
        loop {
            match rs.next().await {
                Ok(Some(r)) => {
                    if let Some(e) = from_resolved(&r)? {
                        out.push(e);
                    }
                }
                Ok(None) => break,
                Err(kurrentdb::Error::ResourceNotFound) => break,
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(out)
    }

    async fn read_marker(&self, command_id: Uuid) -> Result<Option<CommandMarker>> {
        let opts = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Start)
            .max_count(1);
        let mut rs = match self
            .client
            .read_stream(marker_stream(command_id), &opts)
            .await
        {
            Ok(rs) => rs,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        match rs.next().await {
            Ok(Some(r)) => Ok(parse_command_marker(&r.get_original_event().data)),
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn write_marker(&self, command_id: Uuid, marker: &CommandMarker) -> Result<()> {
        let data = EventData::binary("LedgerCommand", command_marker(marker).into());
        let opts = AppendToStreamOptions::default().stream_state(StreamState::Any);
        self.client
            .append_to_stream(marker_stream(command_id), &opts, data)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// The stream's last event and the answer its metadata keeps, if it has one.
    async fn last_with_answer(
        &self,
        stream: &str,
    ) -> Result<Option<(RecordedEvent, Option<(Vec<u8>, usize)>)>> {
        let opts = ReadStreamOptions::default()
            .position(StreamPosition::End)
            .max_count(1)
            .backwards();
        let mut rs = match self.client.read_stream(stream.to_owned(), &opts).await {
            Ok(rs) => rs,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        match rs.next().await {
            Ok(Some(r)) => Ok(from_resolved(&r)?.map(|e| {
                let answer = stored_answer(&r.get_original_event().custom_metadata);
                (e, answer)
            })),
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// The result of the append whose last event is `last`, read back from the stream.
    async fn result_ending_at(&self, last: &RecordedEvent, count: usize) -> Result<AppendResult> {
        let first_revision = last.revision + 1 - count as u64;
        let first = self
            .read_raw(
                &last.stream,
                StreamPosition::Position(first_revision),
                1,
                false,
            )
            .await?;
        let first = first
            .first()
            .ok_or_else(|| backend("appended event not readable"))?;
        Ok(AppendResult {
            first_position: first.position,
            last_position: last.position,
            next_expected_revision: last.revision,
        })
    }
}

#[async_trait]
impl EventLog for KurrentLog {
    async fn append_answered(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        command_id: Uuid,
        answer: Option<Vec<u8>>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events, answer.as_deref())?;
        let digest = request_digest(stream, &events);
        if let Some(marker) = self.read_marker(command_id).await? {
            return if marker.stream == stream && marker.digest == digest {
                Ok(marker.result)
            } else {
                Err(LedgerError::CommandIdReused {
                    command_id,
                    stream: marker.stream,
                })
            };
        }
        let marker = |result: AppendResult, answer: Option<Vec<u8>>| CommandMarker {
            stream: stream.to_owned(),
            digest,
            result,
            answer,
        };
        for _ in 0..ANY_APPEND_ATTEMPTS_MAX {
            let head = self
                .read_raw(stream, StreamPosition::End, 1, true)
                .await?
                .pop();
            if let Some(h) = &head
                && h.command_id == command_id
            {
                // The append landed but its marker did not: this is a retry, if the stored
                // events are what this request asks for.
                let n = events.len() as u64;
                let stored = match (h.revision + 1).checked_sub(n) {
                    Some(first) => {
                        self.read_raw(stream, StreamPosition::Position(first), events.len(), false)
                            .await?
                    }
                    None => Vec::new(),
                };
                let same = stored.len() == events.len()
                    && stored.iter().all(|e| e.command_id == command_id)
                    && stored_digest(stored.iter()) == digest;
                if !same {
                    return Err(LedgerError::CommandIdReused {
                        command_id,
                        stream: stream.to_owned(),
                    });
                }
                let r = self.result_ending_at(h, events.len()).await?;
                // The first answer stays: the one in the stored event's metadata.
                let first_answer = self
                    .last_with_answer(stream)
                    .await?
                    .filter(|(last, _)| last.revision == h.revision)
                    .and_then(|(_, answer)| answer.map(|(answer, _)| answer));
                self.write_marker(command_id, &marker(r, first_answer))
                    .await?;
                return Ok(r);
            }
            let current = match &head {
                None => CurrentRevision::NoStream,
                Some(h) => CurrentRevision::Current(h.revision),
            };
            if !expected.matches(current) {
                return Err(LedgerError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual: current,
                });
            }
            let mut revision = head.as_ref().map_or(0, |h| h.revision + 1);
            let mut prev = head.as_ref().map_or(GENESIS_HASH, |h| h.hash);
            let mut data = Vec::with_capacity(events.len());
            for (i, ev) in events.iter().enumerate() {
                // The position is not known before KurrentDB stores the event; it is not
                // part of the hash.
                let e = seal(stream, revision, 0, command_id, prev, ev);
                prev = e.hash;
                revision += 1;
                let kept = answer
                    .as_deref()
                    .filter(|_| i + 1 == events.len())
                    .map(|answer| AppendAnswer {
                        answer,
                        events: events.len(),
                    });
                data.push(to_event_data(&e, kept.as_ref()));
            }
            let exact = match current {
                CurrentRevision::NoStream => ExpectedRevision::NoStream,
                CurrentRevision::Current(n) => ExpectedRevision::Exact(n),
            };
            let opts = AppendToStreamOptions::default().stream_state(stream_state(exact));
            match self
                .client
                .append_to_stream(stream.to_owned(), &opts, data)
                .await
            {
                Ok(_) => {
                    let last = self
                        .read_raw(stream, StreamPosition::Position(revision - 1), 1, false)
                        .await?
                        .pop()
                        .ok_or_else(|| backend("appended event not readable"))?;
                    let r = self.result_ending_at(&last, events.len()).await?;
                    self.write_marker(command_id, &marker(r, answer.clone()))
                        .await?;
                    return Ok(r);
                }
                Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                    if expected != ExpectedRevision::Any {
                        return Err(LedgerError::WrongExpectedVersion {
                            stream: stream.to_owned(),
                            expected,
                            actual: current_revision(current),
                        });
                    }
                }
                Err(e) => return Err(backend(e)),
            }
        }
        Err(backend(format!(
            "stream {stream:?} kept moving; gave up after {ANY_APPEND_ATTEMPTS_MAX} attempts"
        )))
    }

    async fn command_answer(
        &self,
        stream: &str,
        command_id: Uuid,
    ) -> Result<Option<CommandAnswer>> {
        if let Some(marker) = self.read_marker(command_id).await? {
            return Ok((marker.stream == stream)
                .then_some(marker.answer)
                .flatten()
                .map(|answer| CommandAnswer {
                    result: marker.result,
                    answer,
                }));
        }
        // The process may have died between the append and its marker: the answer is also
        // on the append's last event, if that is still the stream's last.
        let Some((last, Some((answer, events)))) = self.last_with_answer(stream).await? else {
            return Ok(None);
        };
        if last.command_id != command_id || events == 0 || events as u64 > last.revision + 1 {
            return Ok(None);
        }
        let result = self.result_ending_at(&last, events).await?;
        Ok(Some(CommandAnswer { result, answer }))
    }

    async fn command_stream(&self, command_id: Uuid) -> Result<Option<String>> {
        // The marker names the stream. Without one (the process died between an append and
        // its marker) the id's stream is unknown here; `command_answer` still finds the
        // answer on the stream's last event for the command's own retry.
        Ok(self
            .read_marker(command_id)
            .await?
            .map(|marker| marker.stream))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let max = max.min(READ_EVENTS_MAX);
        if max == 0 {
            return Ok(Vec::new());
        }
        self.read_raw(stream, StreamPosition::Position(from_revision), max, false)
            .await
    }

    async fn read_all(&self, from_position: u64, max: usize) -> Result<Vec<RecordedEvent>> {
        let max = max.min(READ_EVENTS_MAX);
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let mut start = read_start(from_position);
        // Pages may hold only system events or other writers' events; keep reading until
        // something of ours turns up or the log ends.
        loop {
            let opts = ReadAllOptions::default()
                .forwards()
                .position(start)
                .max_count(max + 1);
            let mut rs = self.client.read_all(&opts).await.map_err(backend)?;
            let mut seen = 0;
            let mut last_seen = None;
            while let Some(r) = rs.next().await.map_err(backend)? {
                seen += 1;
                let pos = r.get_original_event().position;
                last_seen = Some(pos);
                if pos.commit < from_position {
                    continue;
                }
                if let Some(e) = from_resolved(&r)? {
                    out.push(e);
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
            match last_seen {
                Some(p) if seen > max && out.is_empty() => start = StreamPosition::Position(p),
                _ => return Ok(out),
            }
        }
    }

    async fn subscribe_all(&self, from_position: u64) -> Result<Subscription> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER_EVENTS);
        let this = self.clone();
        let task = tokio::spawn(async move {
            // Catch up with plain reads, then subscribe from just after the last event
            // delivered: KurrentDB starts a subscription after the given position, so
            // there is neither a gap nor a duplicate at the seam.
            let mut next = from_position;
            loop {
                match this.read_all(next, SUBSCRIPTION_READ_EVENTS).await {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => {
                        for e in batch {
                            next = e.position + 1;
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let opts = SubscribeToAllOptions::default()
                .position(read_start(next))
                .filter(SubscriptionFilter::on_event_type().exclude_system_events());
            let mut sub = this.client.subscribe_to_all(&opts).await;
            loop {
                let item = match sub.next().await {
                    Ok(r) => match from_resolved(&r) {
                        Ok(Some(e)) if e.position >= next => e,
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                    Err(e) => {
                        let _ = tx.send(Err(backend(e))).await;
                        return;
                    }
                };
                next = item.position + 1;
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription { rx, task })
    }

    async fn verify(&self) -> Result<VerifyReport> {
        use std::collections::HashMap;
        let mut heads: HashMap<String, (u64, [u8; 32])> = HashMap::new();
        let mut checked = 0u64;
        let mut next = 0u64;
        let mut last_position: Option<u64> = None;
        loop {
            let batch = self.read_all(next, READ_EVENTS_MAX).await?;
            if batch.is_empty() {
                break;
            }
            for e in batch {
                next = e.position + 1;
                let (want_rev, want_hash) = match heads.get(&e.stream) {
                    None => (0, GENESIS_HASH),
                    Some((r, h)) => (r + 1, *h),
                };
                let reason = if last_position.is_some_and(|p| e.position <= p) {
                    Some("position does not increase".to_owned())
                } else if e.revision != want_rev {
                    Some(format!(
                        "revision {} where {want_rev} was expected",
                        e.revision
                    ))
                } else if e.predecessor_hash != want_hash {
                    Some("predecessor hash differs from the previous event's hash".to_owned())
                } else if envelope_hash(&e) != e.hash {
                    Some("own hash does not match the envelope's contents".to_owned())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Ok(VerifyReport {
                        events_checked: checked,
                        streams_checked: heads.len() as u64,
                        first_break: Some(ChainBreak {
                            position: e.position,
                            stream: e.stream.clone(),
                            revision: e.revision,
                            event_id: Some(e.event_id),
                            reason,
                        }),
                    });
                }
                last_position = Some(e.position);
                heads.insert(e.stream.clone(), (e.revision, e.hash));
                checked += 1;
            }
        }
        Ok(VerifyReport {
            events_checked: checked,
            streams_checked: heads.len() as u64,
            first_break: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn envelope() -> RecordedEvent {
        let ev = NewEvent {
            event_id: Uuid::from_u128(1),
            event_type: "SeatAssigned".into(),
            schema_version: 3,
            recorded_at: Utc.timestamp_opt(1_700_000_000, 987_654_321).unwrap(),
            actor: "admin@north.edu".into(),
            correlation_id: Uuid::from_u128(2),
            payload: vec![0x92, 0x01, 0x02],
        };
        seal("license-L1", 4, 0, Uuid::from_u128(3), [9; 32], &ev)
    }

    #[test]
    fn expected_revisions_map_to_stream_states() {
        assert_eq!(stream_state(ExpectedRevision::Any), StreamState::Any);
        assert_eq!(
            stream_state(ExpectedRevision::NoStream),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedRevision::Exact(7)),
            StreamState::StreamRevision(7)
        );
    }

    #[test]
    fn current_revisions_map_back() {
        assert_eq!(
            current_revision(kurrentdb::CurrentRevision::NoStream),
            CurrentRevision::NoStream
        );
        assert_eq!(
            current_revision(kurrentdb::CurrentRevision::Current(5)),
            CurrentRevision::Current(5)
        );
    }

    #[test]
    fn read_start_includes_the_requested_position() {
        assert_eq!(read_start(0), StreamPosition::Start);
        assert_eq!(
            read_start(101),
            StreamPosition::Position(Position {
                commit: 100,
                prepare: 100
            })
        );
    }

    /// The envelope rebuilt from what KurrentDB would store for `e` with `meta`.
    fn stored_back(e: &RecordedEvent, commit_position: u64, meta: &[u8]) -> RecordedEvent {
        from_stored(StoredParts {
            stream: &e.stream,
            revision: e.revision,
            commit_position,
            event_id: e.event_id,
            event_type: &e.event_type,
            data: &e.payload,
            custom_metadata: meta,
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn envelope_survives_the_trip_through_kurrentdb_fields() {
        let e = envelope();
        let meta = envelope_metadata(&e, None);
        let back = stored_back(&e, 4242, &meta);
        assert_eq!(back.position, 4242);
        assert_eq!(
            RecordedEvent {
                position: 0,
                ..back.clone()
            },
            e
        );
        assert_eq!(envelope_hash(&back), back.hash);
        let text: Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(text["$correlationId"], Uuid::from_u128(2).to_string());
        assert_eq!(text["$causationId"], Uuid::from_u128(3).to_string());
        // Every value is a string, as KurrentDB requires of metadata.
        assert!(
            text.as_object().unwrap().values().all(Value::is_string),
            "{text}"
        );
    }

    #[test]
    fn event_data_carries_id_type_payload_and_metadata() {
        let e = envelope();
        let d = to_event_data(&e, None);
        // EventData keeps its fields private; its Debug output is the only window.
        let dbg = format!("{d:?}");
        assert!(dbg.contains(&e.event_id.to_string()), "{dbg}");
        assert!(dbg.contains("SeatAssigned"), "{dbg}");
    }

    #[test]
    fn foreign_and_malformed_events_are_told_apart() {
        let e = envelope();
        let parts = |meta: &'static [u8]| StoredParts {
            stream: "s",
            revision: 0,
            commit_position: 1,
            event_id: e.event_id,
            event_type: "T",
            data: b"",
            custom_metadata: meta,
        };
        assert!(from_stored(parts(b"")).unwrap().is_none());
        assert!(from_stored(parts(b"{\"other\":1}")).unwrap().is_none());
        assert!(matches!(
            from_stored(parts(b"{\"ledger\":\"1\",\"schemaVersion\":\"1\"}")),
            Err(LedgerError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn connection_strings_are_parsed_without_a_server() {
        assert!(matches!(
            KurrentLog::connect("not a connection string").await,
            Err(LedgerError::Backend(_))
        ));
        // The client connects lazily, so a well-formed string is accepted with no server.
        assert!(
            KurrentLog::connect("kurrentdb://127.0.0.1:2113?tls=false")
                .await
                .is_ok()
        );
    }

    // AUD-4: the answer rides on the append's last event, so that a crash between the append
    // and its marker keeps it; every metadata value stays a string.
    #[test]
    fn a_command_answer_survives_the_trip_through_the_last_events_metadata() {
        let e = envelope();
        let kept = AppendAnswer {
            answer: &[0, 1, 0xfe],
            events: 3,
        };
        let meta = envelope_metadata(&e, Some(&kept));
        assert_eq!(stored_answer(&meta), Some((vec![0, 1, 0xfe], 3)));
        assert_eq!(stored_answer(&envelope_metadata(&e, None)), None);
        let back = stored_back(&e, 7, &meta);
        assert_eq!(envelope_hash(&back), back.hash, "the answer is not hashed");
        let text: Value = serde_json::from_slice(&meta).unwrap();
        assert!(
            text.as_object().unwrap().values().all(Value::is_string),
            "{text}"
        );
    }

    #[test]
    fn command_markers_round_trip() {
        let r = AppendResult {
            first_position: 10,
            last_position: 20,
            next_expected_revision: 3,
        };
        for answer in [None, Some(vec![]), Some(vec![1, 2, 0xff])] {
            let marker = CommandMarker {
                stream: "license-L1".to_owned(),
                digest: [7; 32],
                result: r,
                answer,
            };
            let m = command_marker(&marker);
            assert_eq!(parse_command_marker(&m), Some(marker));
        }
        assert_eq!(parse_command_marker(b"{}"), None);
        let odd = br#"{"stream":"s","digest":"0707070707070707070707070707070707070707070707070707070707070707","firstPosition":1,"lastPosition":2,"nextExpectedRevision":3,"commandAnswer":"abc"}"#;
        assert_eq!(
            parse_command_marker(odd),
            None,
            "an answer of odd hex length"
        );
        assert_eq!(unhex32(&hex(&[0xab; 32])), Some([0xab; 32]));
    }
}

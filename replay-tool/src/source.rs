//! Where the events come from: an embedded store opened directly (`--data`), the running
//! server's gRPC event feed (`--server`), or KurrentDB (`--kurrentdb`, feature `kurrentdb`).
//! Every source yields `RecordedEvent`s in position order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, LedgerError, RecordedEvent};
use uuid::Uuid;

use crate::error::{Failure, Result};

/// Events read per page from a log, and handed to a consumer at a time.
pub const PAGE_EVENTS: usize = 10_000;

/// How long the feed may stay silent before the tool takes the log as fully read.
pub const FEED_IDLE_DEFAULT: Duration = Duration::from_millis(1_500);

/// How to reach the events.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A server data directory (`<DIR>/log`), or a ledger directory itself (`<DIR>/segments`).
    Data(PathBuf),
    /// A running server's EventFeed, with a staff or system token.
    Server {
        addr: String,
        token: String,
        idle: Duration,
    },
    /// A KurrentDB connection string.
    KurrentDb(String),
}

/// An opened source.
pub enum Source {
    Log {
        log: Arc<dyn EventLog>,
        embedded: Option<EmbeddedLog>,
    },
    Feed {
        addr: String,
        token: String,
        idle: Duration,
    },
}

/// The ledger directory inside a data directory: `<DIR>/log` when it holds segments,
/// else `<DIR>` itself when it does. Never creates anything.
pub fn log_dir(data: &Path) -> Result<PathBuf> {
    if data.join("log").join("segments").is_dir() {
        return Ok(data.join("log"));
    }
    if data.join("segments").is_dir() {
        return Ok(data.to_path_buf());
    }
    Err(Failure::usage(format!(
        "no ledger at {}: expected {}/log/segments (a server data directory) or {}/segments",
        data.display(),
        data.display(),
        data.display()
    )))
}

/// The message for a store a running server holds.
pub fn in_use_message(dir: &Path) -> String {
    format!(
        "the store at {} is in use (is the server running?); stop it or use --server",
        dir.display()
    )
}

/// Whether an error from opening a sled database means another process holds it.
pub fn is_lock_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("lock") || m.contains("resource temporarily unavailable") || m.contains("wouldblock")
}

/// How long an open waits for a lock to be released before saying the store is in use.
/// sled releases its lock from background threads shortly after the last handle is
/// dropped, so a store closed a moment ago (by a previous run) can look held.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs `open` until it succeeds, fails otherwise than "in use", or `LOCK_WAIT` passes.
pub fn retry_while_locked<T>(data: &Path, mut open: impl FnMut() -> Result<T>) -> Result<T> {
    let in_use = in_use_message(data);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open() {
            Err(f) if f.message == in_use && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Opens the embedded ledger under `data`, refusing clearly when a server holds it.
pub fn open_embedded(data: &Path) -> Result<EmbeddedLog> {
    let dir = log_dir(data)?;
    retry_while_locked(data, || open_embedded_once(data, &dir))
}

fn open_embedded_once(data: &Path, dir: &Path) -> Result<EmbeddedLog> {
    EmbeddedLog::open(dir, EmbeddedOptions::default()).map_err(|e| match e {
        LedgerError::Index(ref m) if is_lock_error(m) => Failure::usage(in_use_message(data)),
        LedgerError::Io(ref io) if is_lock_error(&io.to_string()) => {
            Failure::usage(in_use_message(data))
        }
        LedgerError::Corrupt(m) => Failure::failed(format!(
            "the ledger at {} cannot be opened: it is corrupt: {m}; run `replay-tool verify --data {}` for details",
            dir.display(),
            data.display()
        )),
        other => Failure::usage(format!(
            "cannot open the ledger at {}: {other}",
            dir.display()
        )),
    })
}

impl Source {
    /// Opens the source. `--data` takes the store's lock for as long as the source lives.
    pub async fn open(origin: &Origin) -> Result<Source> {
        match origin {
            Origin::Data(dir) => {
                let dir = dir.clone();
                let log = tokio::task::spawn_blocking(move || open_embedded(&dir))
                    .await
                    .map_err(|e| Failure::usage(e.to_string()))??;
                Ok(Source::Log {
                    log: Arc::new(log.clone()),
                    embedded: Some(log),
                })
            }
            Origin::Server { addr, token, idle } => Ok(Source::Feed {
                addr: addr.clone(),
                token: token.clone(),
                idle: *idle,
            }),
            Origin::KurrentDb(url) => open_kurrentdb(url).await,
        }
    }

    /// The number of events in the log, when the source knows it up front (for the ETA).
    pub fn head_hint(&self) -> Option<u64> {
        match self {
            Source::Log {
                embedded: Some(log),
                ..
            } => Some(log.durable_position()),
            _ => None,
        }
    }

    /// Whether events carry their stored hashes and secrets (false for the event feed).
    pub fn is_complete(&self) -> bool {
        matches!(self, Source::Log { .. })
    }

    /// Releases the store (flushes and unlocks an embedded ledger).
    pub async fn close(self) -> Result<()> {
        if let Source::Log {
            embedded: Some(log),
            ..
        } = self
        {
            log.close()
                .await
                .map_err(|e| Failure::usage(format!("closing the ledger: {e}")))?;
        }
        Ok(())
    }

    /// Calls `f` with every event of the log in position order, a page at a time, until the
    /// log's end (for the feed: until it stays silent for its idle time). `f` returns false
    /// to stop early.
    pub async fn scan(&self, mut f: impl FnMut(&[RecordedEvent]) -> Result<bool>) -> Result<()> {
        match self {
            Source::Log { log, .. } => {
                let mut from = 0u64;
                loop {
                    let page = log
                        .read_all(from, PAGE_EVENTS)
                        .await
                        .map_err(|e| read_failure(&e))?;
                    let Some(last) = page.last() else {
                        return Ok(());
                    };
                    from = last.position + 1;
                    if !f(&page)? {
                        return Ok(());
                    }
                }
            }
            Source::Feed { addr, token, idle } => scan_feed(addr, token, *idle, None, f).await,
        }
    }

    /// Every event of one stream, oldest first.
    pub async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>> {
        match self {
            Source::Log { log, .. } => {
                let mut out: Vec<RecordedEvent> = Vec::new();
                loop {
                    let page = log
                        .read_stream(stream, out.len() as u64, PAGE_EVENTS)
                        .await
                        .map_err(|e| read_failure(&e))?;
                    if page.is_empty() {
                        return Ok(out);
                    }
                    out.extend(page);
                }
            }
            Source::Feed { addr, token, idle } => {
                let license = stream.strip_prefix("license-");
                let mut out = Vec::new();
                scan_feed(addr, token, *idle, license, |page| {
                    out.extend(page.iter().filter(|e| e.stream == stream).cloned());
                    Ok(true)
                })
                .await?;
                Ok(out)
            }
        }
    }

    /// Every event of the log, in position order (small logs and tests).
    pub async fn read_everything(&self) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        self.scan(|page| {
            out.extend_from_slice(page);
            Ok(true)
        })
        .await?;
        Ok(out)
    }
}

fn read_failure(e: &LedgerError) -> Failure {
    match e {
        LedgerError::Corrupt(_) => Failure::failed(format!(
            "the log could not be read: {e}; run `replay-tool verify`"
        )),
        _ => Failure::usage(format!("reading the log: {e}")),
    }
}

#[cfg(feature = "kurrentdb")]
async fn open_kurrentdb(url: &str) -> Result<Source> {
    let log = ledger::KurrentLog::connect(url)
        .await
        .map_err(|e| Failure::usage(format!("cannot connect to KurrentDB at {url}: {e}")))?;
    Ok(Source::Log {
        log: Arc::new(log),
        embedded: None,
    })
}

#[cfg(not(feature = "kurrentdb"))]
async fn open_kurrentdb(_url: &str) -> Result<Source> {
    Err(Failure::usage(
        "--kurrentdb is not available in this build; rebuild with `--features kurrentdb`",
    ))
}

/// Subscribes to the server's feed from the first event and reads until nothing arrives for
/// `idle`: the feed is catch-up-then-live, so silence after the catch-up means the tool has
/// read the log as it stood. Events written meanwhile may or may not be included.
async fn scan_feed(
    addr: &str,
    token: &str,
    idle: Duration,
    license: Option<&str>,
    mut f: impl FnMut(&[RecordedEvent]) -> Result<bool>,
) -> Result<()> {
    let endpoint = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let mut client = proto::event_feed_client::EventFeedClient::connect(endpoint.clone())
        .await
        .map_err(|e| Failure::usage(format!("cannot connect to the server at {endpoint}: {e}")))?
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut request = tonic::Request::new(proto::SubscribeRequest {
        from_position: 0,
        license: license.unwrap_or_default().to_owned(),
        event_types: Vec::new(),
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure::usage("the token contains characters a header cannot carry"))?;
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = client
        .subscribe(request)
        .await
        .map_err(|s| Failure::usage(format!("the server refused the feed: {}", s.message())))?
        .into_inner();
    let mut page = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.message()).await {
            Err(_) | Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                return Err(Failure::usage(format!(
                    "the event feed failed: {}",
                    status.message()
                )));
            }
            Ok(Ok(Some(event))) => {
                page.push(from_feed(event)?);
                if page.len() >= PAGE_EVENTS {
                    if !f(&page)? {
                        return Ok(());
                    }
                    page.clear();
                }
            }
        }
    }
    if !page.is_empty() {
        f(&page)?;
    }
    Ok(())
}

/// A feed event as a `RecordedEvent`. The feed carries no hashes (they are zero here) and
/// its payloads have their secrets replaced.
pub fn from_feed(e: proto::FeedEvent) -> Result<RecordedEvent> {
    let bad = |what: &str| {
        Failure::usage(format!(
            "the feed sent event {} with a bad {what}",
            e.position
        ))
    };
    let uuid = |s: &str, what: &str| Uuid::parse_str(s).map_err(|_| bad(what));
    Ok(RecordedEvent {
        event_id: uuid(&e.event_id, "event id")?,
        stream: e.stream.clone(),
        revision: e.revision,
        position: server::projector::ledger_position(e.position),
        event_type: e.r#type.clone(),
        schema_version: u16::try_from(e.schema_version).map_err(|_| bad("schema version"))?,
        recorded_at: DateTime::parse_from_rfc3339(&e.at)
            .map_err(|_| bad("time"))?
            .with_timezone(&Utc),
        actor: e.actor.clone(),
        command_id: uuid(&e.command_id, "command id")?,
        correlation_id: uuid(&e.correlation_id, "correlation id")?,
        payload: e.payload.clone(),
        predecessor_hash: [0; 32],
        hash: [0; 32],
    })
}

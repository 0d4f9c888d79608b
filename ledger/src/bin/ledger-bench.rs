//! Throughput of the embedded log on this machine: durable appends per second with 1, 8
//! and 64 concurrent writers, then `read_all` and `verify` events per second.
//!
//! Run: `cargo run --release -p ledger --bin ledger-bench [-- <seconds per writer count>]`
//! The log lives in a temporary directory under $TMPDIR (or /tmp), on that file system.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use ledger::storage::{FsStorage, Storage};
use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, IndexStore, NewEvent};
use uuid::Uuid;

/// Bytes of MessagePack payload per benchmark event, about a seat assignment's size.
const PAYLOAD_BYTES: usize = 200;

fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "SeatAssigned".to_owned(),
        schema_version: 1,
        recorded_at: Utc::now(),
        actor: "bench@north.edu".to_owned(),
        correlation_id: Uuid::new_v4(),
        payload: vec![0xa5; PAYLOAD_BYTES],
    }
}

/// The real file system, counting `fdatasync` calls to show how many appends share one.
struct CountingStorage {
    inner: FsStorage,
    syncs: AtomicU64,
}

impl Storage for CountingStorage {
    fn list_segments(&self) -> io::Result<Vec<u64>> {
        self.inner.list_segments()
    }
    fn create_segment(&self, id: u64) -> io::Result<()> {
        self.inner.create_segment(id)
    }
    fn segment_len(&self, id: u64) -> io::Result<u64> {
        self.inner.segment_len(id)
    }
    fn append(&self, id: u64, data: &[u8]) -> io::Result<()> {
        self.inner.append(id, data)
    }
    fn sync_segment(&self, id: u64) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_segment(id)
    }
    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(id, offset, buf)
    }
    fn truncate_segment(&self, id: u64, len: u64) -> io::Result<()> {
        self.inner.truncate_segment(id, len)
    }
}

/// Runs `writers` appenders for `seconds`; returns appends, elapsed seconds and syncs.
async fn appends(writers: usize, seconds: f64) -> (u64, f64, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Arc::new(CountingStorage {
        inner: FsStorage::open(dir.path().join("segments")).expect("segments"),
        syncs: AtomicU64::new(0),
    });
    let index = IndexStore::open_sled(dir.path().join("index")).expect("index");
    let log =
        EmbeddedLog::open_with(storage.clone(), index, EmbeddedOptions::default()).expect("open");
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("license-B{w}");
            while Instant::now() < deadline {
                log.append(
                    &stream,
                    ExpectedRevision::Any,
                    vec![event()],
                    Uuid::new_v4(),
                )
                .await
                .expect("append");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let elapsed = start.elapsed().as_secs_f64();
    log.close().await.expect("close");
    (
        done.load(Ordering::Relaxed),
        elapsed,
        storage.syncs.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or(5.0);
    println!(
        "ledger-bench: {PAYLOAD_BYTES}-byte payloads, one event per append, {seconds} s per run"
    );
    for writers in [1usize, 8, 64] {
        let (n, secs, syncs) = appends(writers, seconds).await;
        println!(
            "durable appends, {writers:>2} writers: {:>9.0} appends/s ({n} in {secs:.2} s, \
             {:.1} appends per fdatasync)",
            n as f64 / secs,
            n as f64 / syncs.max(1) as f64
        );
    }

    // A log of many events, written in large appends, to read and verify.
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).expect("open");
    let total: u64 = 500_000;
    let per_append = 10_000;
    for i in 0..total / per_append {
        let evs = (0..per_append).map(|_| event()).collect();
        log.append(
            &format!("license-R{}", i % 16),
            ExpectedRevision::Any,
            evs,
            Uuid::new_v4(),
        )
        .await
        .expect("append");
    }
    let start = Instant::now();
    let mut next = 0;
    loop {
        let batch = log.read_all(next, 10_000).await.expect("read_all");
        if batch.is_empty() {
            break;
        }
        next += batch.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(next, total);
    println!(
        "read_all: {:>9.0} events/s ({total} events in {secs:.2} s)",
        total as f64 / secs
    );
    let start = Instant::now();
    let report = log.verify().await.expect("verify");
    let secs = start.elapsed().as_secs_f64();
    assert!(report.first_break.is_none());
    println!(
        "verify:   {:>9.0} events/s ({} events in {secs:.2} s)",
        report.events_checked as f64 / secs,
        report.events_checked
    );
    log.close().await.expect("close");
}

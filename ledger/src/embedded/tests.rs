//! Tamper tests that need the record encoding, which is private to the crate.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::reader::read_record_at;
use super::*;
use crate::envelope::encode_record;
use crate::storage::SimDisk;

fn ev(i: u8) -> NewEvent {
    NewEvent {
        event_id: Uuid::from_u128(i as u128 + 1),
        event_type: "SeatAssigned".into(),
        schema_version: 1,
        recorded_at: Utc.timestamp_opt(1_750_000_000, 0).unwrap(),
        actor: "a".into(),
        correlation_id: Uuid::nil(),
        payload: vec![i; 8],
    }
}

async fn five_events(disk: &Arc<SimDisk>, index: &IndexStore) {
    let log =
        EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default()).unwrap();
    log.append(
        "a",
        ExpectedRevision::NoStream,
        vec![ev(0), ev(1), ev(2)],
        Uuid::from_u128(1),
    )
    .await
    .unwrap();
    log.append(
        "b",
        ExpectedRevision::NoStream,
        vec![ev(3), ev(4)],
        Uuid::from_u128(2),
    )
    .await
    .unwrap();
    log.close().await.unwrap();
}

/// Rewrites the record at `position` after `change`, with a valid checksum.
fn tamper(disk: &SimDisk, index: &IndexStore, position: u64, change: impl Fn(&mut RecordedEvent)) {
    let loc = super::reader_at(disk, index, u64::MAX, position)
        .unwrap()
        .location();
    let (mut e, flags) = read_record_at(disk, loc).unwrap();
    change(&mut e);
    let mut buf = Vec::new();
    encode_record(&mut buf, &e, flags, None);
    disk.overwrite(loc.segment, loc.offset as usize, &buf);
}

#[tokio::test]
async fn verify_names_an_event_whose_contents_were_changed() {
    let disk = Arc::new(SimDisk::new());
    let index = IndexStore::memory();
    five_events(&disk, &index).await;

    // Changed under a running log, the event is named by `verify` (AUD-3).
    let log =
        EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default()).unwrap();
    tamper(&disk, &index, 1, |e| e.payload[0] ^= 1);
    let b = log.verify().await.unwrap().first_break.unwrap();
    assert_eq!((b.position, b.stream.as_str(), b.revision), (1, "a", 1));
    assert!(b.reason.contains("own hash"), "{b:?}");
    log.close().await.unwrap();

    // The next start walks the whole chain and refuses, with the index and without it.
    for clear_index in [false, true] {
        if clear_index {
            index.clear().unwrap();
        }
        let err = EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default())
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("own hash"), "{msg}");
        assert!(msg.contains("ledger position 1,"), "{msg}");
        assert!(msg.contains("refuses to start"), "{msg}");
    }
}

#[tokio::test]
async fn verify_names_the_successor_of_a_rehashed_event() {
    let disk = Arc::new(SimDisk::new());
    let index = IndexStore::memory();
    five_events(&disk, &index).await;
    let log =
        EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default()).unwrap();
    // A tamperer who also recomputes the own hash breaks the link to the next event.
    tamper(&disk, &index, 1, |e| {
        e.payload[0] ^= 1;
        e.hash = crate::envelope::envelope_hash(e);
    });
    let b = log.verify().await.unwrap().first_break.unwrap();
    assert_eq!((b.position, b.stream.as_str(), b.revision), (2, "a", 2));
    assert!(b.reason.contains("predecessor"), "{b:?}");
    log.close().await.unwrap();
    let err = EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("ledger position 2,"), "{err}");
}

/// AUD-3: a stream's last event edited and re-hashed leaves every chain intact; the start
/// still refuses, because the stream's head no longer is the one the index recorded.
#[tokio::test]
async fn a_rehashed_last_event_of_a_stream_stops_the_start() {
    let disk = Arc::new(SimDisk::new());
    let index = IndexStore::memory();
    five_events(&disk, &index).await;
    tamper(&disk, &index, 2, |e| {
        e.payload[0] ^= 1;
        e.hash = crate::envelope::envelope_hash(e);
    });
    let err = EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("last event of stream \"a\""), "{msg}");
    assert!(msg.contains("refuses to start"), "{msg}");
}

#[tokio::test]
async fn an_io_failure_poisons_the_log() {
    let disk = Arc::new(SimDisk::new());
    let log = EmbeddedLog::open_with(
        disk.clone(),
        IndexStore::memory(),
        EmbeddedOptions::default(),
    )
    .unwrap();
    log.append("a", ExpectedRevision::Any, vec![ev(0)], Uuid::from_u128(1))
        .await
        .unwrap();
    disk.crash_after(0);
    let err = log
        .append("a", ExpectedRevision::Any, vec![ev(1)], Uuid::from_u128(2))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Disk(_)), "{err:?}");
    // Later appends fail too, without touching the disk: a failed fsync leaves nothing
    // that can be trusted.
    let err = log
        .append("b", ExpectedRevision::Any, vec![ev(2)], Uuid::from_u128(3))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Disk(_)), "{err:?}");
    assert_eq!(log.durable_position(), 1);
    // What was answered before the failure is still indexed and read.
    let events = log.read_all(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(log.indexed_position(), 1);
    log.close().await.unwrap();
}

type MemoryMap = Arc<std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>>;

/// An in-memory index and its map, for `HeldIndex`.
fn memory_index() -> (IndexStore, MemoryMap) {
    let map: MemoryMap = Arc::default();
    (IndexStore::Memory(map.clone()), map)
}

/// Holds the in-memory index's lock on a thread of its own until dropped, so that the
/// indexer cannot apply anything meanwhile.
struct HeldIndex {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeldIndex {
    fn hold(map: MemoryMap) -> HeldIndex {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _guard = map.lock().unwrap();
            locked_tx.send(()).unwrap();
            // Returns when the sender is dropped.
            let _ = release_rx.recv();
        });
        locked_rx.recv().unwrap();
        HeldIndex {
            release: Some(release_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for HeldIndex {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_is_answered_once_synced_and_a_read_waits_for_the_index() {
    // Durable means synced: the answer does not wait for the index. A read that starts
    // after the answer still sees the append, because it waits for the index to reach it.
    // (Unkeyed appends: a keyed one's writer looks its id up in the index, which the test
    // holds.)
    let disk = Arc::new(SimDisk::new());
    let (index, map) = memory_index();
    let log = EmbeddedLog::open_with(disk.clone(), index, EmbeddedOptions::default()).unwrap();
    let held = HeldIndex::hold(map);
    let bound = std::time::Duration::from_secs(20);
    let appended = tokio::time::timeout(
        bound,
        log.append_unkeyed(
            "a",
            ExpectedRevision::NoStream,
            vec![ev(7)],
            Uuid::from_u128(1),
        ),
    )
    .await
    .expect("the append is answered while the index is held")
    .unwrap();
    assert_eq!(appended.last_position, 0);
    assert_eq!(log.indexed_position(), 0, "the index does not have it yet");

    let waiting_before = log.inner.shared.committed_tx.receiver_count();
    let reader = {
        let log = log.clone();
        tokio::spawn(async move { log.read_stream("a", 0, 10).await })
    };
    // The read is waiting for the index once it watches the committed position.
    tokio::time::timeout(bound, async {
        while log.inner.shared.committed_tx.receiver_count() == waiting_before {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the read waits for the index");
    drop(held);
    let events = tokio::time::timeout(bound, reader)
        .await
        .expect("the read ends once the index has the append")
        .unwrap()
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, vec![7; 8]);
    assert_eq!(log.indexed_position(), 1);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_that_queue_behind_a_slow_index_update_are_indexed_together_and_in_order() {
    // While the index is held, appends to one stream are answered and queue up for the
    // indexer; once it is released they are applied together, the stream's head is the last
    // append's and every revision reads back in order, after a reopen too.
    let disk = Arc::new(SimDisk::new());
    let (index, map) = memory_index();
    let log =
        EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default()).unwrap();
    let held = HeldIndex::hold(map);
    for i in 0..5u8 {
        let expected = if i == 0 {
            ExpectedRevision::NoStream
        } else {
            ExpectedRevision::Exact(i as u64 - 1)
        };
        log.append_unkeyed("a", expected, vec![ev(i)], Uuid::from_u128(i as u128 + 1))
            .await
            .unwrap();
    }
    assert_eq!(log.indexed_position(), 0);
    drop(held);
    let events = log.read_stream("a", 0, 10).await.unwrap();
    let payloads: Vec<u8> = events.iter().map(|e| e.payload[0]).collect();
    assert_eq!(payloads, vec![0, 1, 2, 3, 4]);
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, vec![0, 1, 2, 3, 4]);
    log.append_unkeyed(
        "a",
        ExpectedRevision::Exact(4),
        vec![ev(5)],
        Uuid::from_u128(6),
    )
    .await
    .unwrap();
    log.close().await.unwrap();
    let reopened = EmbeddedLog::open_with(disk, index, EmbeddedOptions::default()).unwrap();
    assert_eq!(reopened.read_stream("a", 0, 10).await.unwrap().len(), 6);
    assert_eq!(reopened.indexed_position(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_id_answers_its_first_append_across_the_writers_prunes() {
    // AUD-4: an id appends once. Each id is sent twice at once and once more at the end,
    // over more ids than the writer keeps (it drops the indexed ones past
    // RECENT_COMMANDS_PRUNE_AT), so retries meet the first attempt in the writer's table
    // and in the index, with the index behind the answers (they go out once synced).
    let log = EmbeddedLog::open_with(
        Arc::new(SimDisk::new()),
        IndexStore::memory(),
        EmbeddedOptions::default(),
    )
    .unwrap();
    let tasks = 32u128;
    let per_task = (writer::RECENT_COMMANDS_PRUNE_AT as u128 * 3) / tasks;
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let log = log.clone();
        running.spawn(async move {
            let stream = format!("s{task}");
            let mut firsts = Vec::new();
            for n in 0..per_task {
                let id = Uuid::from_u128(task * 1_000_000 + n + 1);
                let send = || {
                    log.append(
                        &stream,
                        ExpectedRevision::Any,
                        vec![ev((n % 200) as u8)],
                        id,
                    )
                };
                let (first, second) = tokio::join!(send(), send());
                let (first, second) = (first.unwrap(), second.unwrap());
                assert_eq!(first, second, "id {id}");
                firsts.push((id, first));
            }
            firsts
        });
    }
    let mut firsts = Vec::new();
    while let Some(done) = running.join_next().await {
        firsts.extend(done.unwrap());
    }
    for (id, first) in &firsts {
        let stream = format!("s{}", id.as_u128() / 1_000_000);
        let n = (id.as_u128() % 1_000_000) - 1;
        let again = log
            .append(
                &stream,
                ExpectedRevision::Any,
                vec![ev((n % 200) as u8)],
                *id,
            )
            .await
            .unwrap();
        assert_eq!(&again, first, "id {id}");
    }
    assert_eq!(log.durable_position() as u128, tasks * per_task);
    log.close().await.unwrap();
}

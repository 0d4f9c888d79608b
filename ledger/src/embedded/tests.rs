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
    assert_eq!(log.committed_position(), 1);
    log.close().await.unwrap();
}

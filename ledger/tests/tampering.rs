//! AUD-3 at start-up (issue 8): opening a log whose stored events were edited (with the CRC
//! fixed, so that only the hash chain can tell), deleted or reordered is refused, and the
//! refusal names the first broken event. The same tampering as the replay tool's tests, on
//! the ledger's own open.

mod common;

use std::path::{Path, PathBuf};

use common::event;
use ledger::tamper::{delete_record, edit_payload, record_ranges as records, swap_records};
use ledger::walk::{Fault, walk_segments};
use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, LedgerError};
use uuid::Uuid;

/// Appends `n` events in appends of one to three events over three streams, closes the
/// log, and returns how many events it holds.
async fn build(dir: &Path) -> usize {
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap();
    let mut written = 0;
    let mut i = 0;
    while written < 14 {
        let n = 1 + i % 3;
        let events = (0..n)
            .map(|j| event((i * 10 + j) as u128 + 1, "SeatAssigned"))
            .collect();
        log.append(
            &format!("license-T{}", i % 3),
            ExpectedRevision::Any,
            events,
            Uuid::from_u128(i as u128 + 1),
        )
        .await
        .unwrap();
        written += n;
        i += 1;
    }
    log.close().await.unwrap();
    written
}

fn segment(dir: &Path) -> PathBuf {
    dir.join("segments").join(format!("{:012}.seg", 0))
}

/// Opens the log in `dir` and returns the refusal's message; fails the test if it opens.
fn refusal(dir: &Path) -> String {
    match EmbeddedLog::open(dir, EmbeddedOptions::default()) {
        Ok(_) => panic!("a tampered log opened"),
        Err(error) => {
            assert!(matches!(error, LedgerError::Corrupt(_)), "{error:?}");
            let message = error.to_string();
            assert!(message.contains("refuses to start"), "{message}");
            message
        }
    }
}

/// AUD-3: every event edited, every event deleted and every neighbouring pair swapped, each
/// in a copy of the data directory whose index is intact, is refused at open, naming the
/// first broken event (its position, its stream, and why).
#[tokio::test]
async fn every_edit_deletion_and_swap_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let original_dir = tmp.path().join("original");
    let n = build(&original_dir).await;
    let original = std::fs::read(segment(&original_dir)).unwrap();
    assert_eq!(records(&original).len(), n);
    let copy = tmp.path().join("copy");
    copy_dir(&original_dir, &copy);
    // Each event's stream, as the untampered log holds them.
    let streams: Vec<String> = {
        let log = EmbeddedLog::open(&copy, EmbeddedOptions::default()).unwrap();
        let events = log.read_all(0, n).await.unwrap();
        log.close().await.unwrap();
        events.into_iter().map(|e| e.stream).collect()
    };

    for (k, stream) in streams.iter().enumerate() {
        std::fs::write(segment(&copy), edit_payload(&original, k)).unwrap();
        let message = refusal(&copy);
        assert!(
            message.contains(&format!("ledger position {k},"))
                && message.contains(&format!("{stream:?}"))
                && message.contains("own hash"),
            "edit of event {k}: {message}"
        );

        std::fs::write(segment(&copy), delete_record(&original, k)).unwrap();
        let message = refusal(&copy);
        if k + 1 < n {
            assert!(
                message.contains(&format!("ledger position {k},")),
                "deletion of event {k}: {message}"
            );
        } else {
            // The chains end cleanly without the last event; the index's checkpoint tells.
            assert!(
                message.contains("deleted"),
                "deletion of the last event: {message}"
            );
        }

        if k + 1 < n {
            std::fs::write(segment(&copy), swap_records(&original, k)).unwrap();
            let message = refusal(&copy);
            assert!(
                message.contains(&format!("ledger position {k},"))
                    && message.contains("out of order"),
                "swap of events {k} and {}: {message}",
                k + 1
            );
        }
    }

    // The untampered copy still opens: the refusals came from the tampering.
    std::fs::write(segment(&copy), &original).unwrap();
    let log = EmbeddedLog::open(&copy, EmbeddedOptions::default()).unwrap();
    assert!(log.verify().await.unwrap().first_break.is_none());
    log.close().await.unwrap();
}

/// AUD-3: without an index (deleted, or lost), the rebuild reads every record and refuses
/// an edited one too.
#[tokio::test]
async fn an_edit_is_refused_when_the_index_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let n = build(&dir).await;
    let original = std::fs::read(segment(&dir)).unwrap();
    for k in [0, n / 2, n - 1] {
        std::fs::write(segment(&dir), edit_payload(&original, k)).unwrap();
        let _ = std::fs::remove_dir_all(dir.join("index"));
        let message = refusal(&dir);
        assert!(
            message.contains(&format!("ledger position {k},")) && message.contains("own hash"),
            "edit of event {k}: {message}"
        );
    }
}

/// The walk names the same first break whether one thread or several hash, on a log large
/// enough to be read in several pieces and hashed in parallel.
#[tokio::test]
async fn the_parallel_walk_names_the_same_break_as_a_single_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = EmbeddedLog::open(&dir, EmbeddedOptions::default()).unwrap();
    for i in 0..40u128 {
        let events = (0..250u128)
            .map(|j| event(i * 1000 + j + 1, "SeatAssigned"))
            .collect();
        log.append(
            &format!("license-P{}", i % 7),
            ExpectedRevision::Any,
            events,
            Uuid::from_u128(i + 1),
        )
        .await
        .unwrap();
    }
    log.close().await.unwrap();
    let original = std::fs::read(segment(&dir)).unwrap();
    let n = records(&original).len();
    assert_eq!(n, 10_000);
    assert!(
        original.len() > 2 * 1024 * 1024,
        "several reads of the walk"
    );
    for k in [0, 1, 4_321, 6_000, n - 1] {
        let tampered = edit_payload(&original, k);
        let read = |_: u64, offset: u64, buf: &mut [u8]| {
            let start = (offset as usize).min(tampered.len());
            let n = buf.len().min(tampered.len() - start);
            buf[..n].copy_from_slice(&tampered[start..start + n]);
            Ok(n)
        };
        let one = walk_segments(&[0], &read, u64::MAX, 1).unwrap();
        let many = walk_segments(&[0], &read, u64::MAX, 4).unwrap();
        let b = one.first_break.clone().expect("the edit is found");
        assert_eq!((b.position, &b.fault), (k as u64, &Fault::OwnHash));
        assert_eq!(one.first_break, many.first_break);
        assert_eq!(one.events_checked, k as u64);
        assert_eq!(many.events_checked, k as u64);
    }
    // And a walk limited to a prefix stops there without looking further.
    let read = |_: u64, offset: u64, buf: &mut [u8]| {
        let start = (offset as usize).min(original.len());
        let n = buf.len().min(original.len() - start);
        buf[..n].copy_from_slice(&original[start..start + n]);
        Ok(n)
    };
    let prefix = walk_segments(&[0], &read, 7_777, 2).unwrap();
    assert_eq!((prefix.events_checked, prefix.first_break), (7_777, None));
    let whole = walk_segments(&[0], &read, u64::MAX, 2).unwrap();
    assert_eq!(
        (whole.events_checked, whole.streams_checked()),
        (n as u64, 7)
    );
    assert_eq!(whole.end_offset, original.len() as u64);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

//! Behaviour particular to the embedded backend: restarts, index rebuilds, segments,
//! torn tails and damage.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use common::events;
use ledger::{
    EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, LedgerError, RecordedEvent,
};
use uuid::Uuid;

/// Closes the log and drops the handle, which releases sled's lock on the index.
async fn shut(log: EmbeddedLog) {
    log.close().await.unwrap();
}

fn small_segments() -> EmbeddedOptions {
    EmbeddedOptions {
        segment_size_bytes: 4 * 1024,
        ..EmbeddedOptions::default()
    }
}

async fn all_events(log: &EmbeddedLog) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    loop {
        let batch = log.read_all(out.len() as u64, 1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Appends `appends` commands over three streams; returns the command ids and results.
async fn fill(log: &EmbeddedLog, appends: usize) -> Vec<Applied> {
    let mut out = Vec::new();
    for i in 0..appends {
        let cmd = Uuid::new_v4();
        let stream = format!("license-L{}", i % 3);
        let evs = events(1 + i % 4, "SeatAssigned");
        let result = log
            .append(&stream, ExpectedRevision::Any, evs.clone(), cmd)
            .await
            .unwrap();
        out.push(Applied {
            cmd,
            stream,
            events: evs,
            result,
        });
    }
    out
}

/// An append that was acknowledged, with what it asked for.
struct Applied {
    cmd: Uuid,
    stream: String,
    events: Vec<ledger::NewEvent>,
    result: ledger::AppendResult,
}

#[tokio::test]
async fn restart_keeps_events_heads_and_command_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    let cmds = fill(&log, 60).await;
    let before = all_events(&log).await;
    shut(log).await;
    assert!(
        segment_files(dir.path()).len() > 3,
        "the test should span segments"
    );

    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all_events(&log).await, before);
    assert_eq!(log.committed_position(), before.len() as u64);
    // A command applied before the restart is answered from the first result.
    let a = &cmds[7];
    let again = log
        .append(&a.stream, ExpectedRevision::Any, a.events.clone(), a.cmd)
        .await
        .unwrap();
    assert_eq!(again, a.result);
    // Stream heads survived: the next append continues each chain.
    let head = log.read_stream("license-L1", 0, 10_000).await.unwrap();
    let last = head.last().unwrap();
    let r = log
        .append(
            "license-L1",
            ExpectedRevision::Exact(last.revision),
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(r.first_position, before.len() as u64);
    let next = log
        .read_stream("license-L1", last.revision + 1, 1)
        .await
        .unwrap();
    assert_eq!(next[0].predecessor_hash, last.hash);
    assert!(log.verify().await.unwrap().first_break.is_none());
    shut(log).await;
}

#[tokio::test]
async fn deleting_the_index_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    let cmds = fill(&log, 40).await;
    let before = all_events(&log).await;
    let stream_before = log.read_stream("license-L2", 0, 10_000).await.unwrap();
    shut(log).await;
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();

    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all_events(&log).await, before);
    assert_eq!(
        log.read_stream("license-L2", 0, 10_000).await.unwrap(),
        stream_before
    );
    for a in &cmds {
        let again = log
            .append(&a.stream, ExpectedRevision::Any, a.events.clone(), a.cmd)
            .await
            .unwrap();
        assert_eq!(again, a.result);
    }
    assert_eq!(all_events(&log).await.len(), before.len());
    let err = log
        .append(
            "license-L0",
            ExpectedRevision::NoStream,
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::WrongExpectedVersion { .. }),
        "{err:?}"
    );
    shut(log).await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_acknowledged_events_stay() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    fill(&log, 20).await;
    let before = all_events(&log).await;
    shut(log).await;
    let seg = segment_files(dir.path()).pop().unwrap();
    let clean_len = std::fs::metadata(&seg).unwrap().len();
    // Half a record's worth of garbage, as a crash in the middle of a write leaves.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0x5a; 37]).unwrap();
    drop(f);

    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), clean_len);
    assert_eq!(all_events(&log).await, before);
    log.append(
        "license-L0",
        ExpectedRevision::Any,
        events(2, "T"),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    assert!(log.verify().await.unwrap().first_break.is_none());
    shut(log).await;
}

#[tokio::test]
async fn damage_before_the_tail_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    fill(&log, 40).await;
    shut(log).await;
    let segs = segment_files(dir.path());
    assert!(segs.len() > 2);
    // Flip a byte in the middle of the first segment, which the index has already passed.
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&segs[0], &bytes).unwrap();

    // With the index intact the start refuses too: the whole chain is checked at every
    // open, not only the part after the index's checkpoint (AUD-3).
    let err = EmbeddedLog::open(dir.path(), small_segments())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, LedgerError::Corrupt(_)), "{msg}");
    assert!(
        msg.contains("segment 0") && msg.contains("refuses to start"),
        "{msg}"
    );

    // Without the index, recovery reads the damaged record and refuses to start.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let err = EmbeddedLog::open(dir.path(), small_segments())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, LedgerError::Corrupt(_)), "{msg}");
    assert!(
        msg.contains("segment 0") && msg.contains("refuses to start"),
        "{msg}"
    );
}

#[tokio::test]
async fn closed_log_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    log.close().await.unwrap();
    let err = log
        .append("s", ExpectedRevision::Any, events(1, "T"), Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Closed), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_group_commits_and_stay_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let mut tasks = Vec::new();
    for w in 0..32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                log.append(
                    &format!("license-W{w}"),
                    ExpectedRevision::Any,
                    events(2, "T"),
                    Uuid::new_v4(),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = all_events(&log).await;
    assert_eq!(all.len(), 32 * 20 * 2);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64);
    }
    for w in 0..32 {
        let s = log
            .read_stream(&format!("license-W{w}"), 0, 10_000)
            .await
            .unwrap();
        assert_eq!(s.len(), 40);
        // Each append's two events are adjacent in the log: appends are not interleaved.
        for pair in s.chunks(2) {
            assert_eq!(pair[0].position + 1, pair[1].position);
            assert_eq!(pair[0].command_id, pair[1].command_id);
        }
    }
    shut(log).await;
}

#[tokio::test]
async fn subscriptions_end_when_the_log_closes() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    log.append(
        "license-L0",
        ExpectedRevision::Any,
        events(3, "T"),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    let mut sub = log.subscribe_all(1).await.unwrap();
    // It starts at the requested position, not at the beginning.
    assert_eq!(sub.next().await.unwrap().unwrap().position, 1);
    assert_eq!(sub.next().await.unwrap().unwrap().position, 2);
    log.close().await.unwrap();
    assert!(sub.next().await.is_none());
}

#[tokio::test]
async fn the_largest_allowed_event_is_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    // Find the largest payload the limit admits: one byte more must be refused, and the
    // admitted event must decode, so the writer's and the reader's bounds agree.
    let mut e = common::event(1, "T");
    let mut size = ledger::EVENT_BYTES_MAX;
    let r = loop {
        e.payload = vec![7; size];
        match log
            .append(
                "license-big",
                ExpectedRevision::Any,
                vec![e.clone()],
                Uuid::new_v4(),
            )
            .await
        {
            Ok(r) => break r,
            Err(LedgerError::InvalidAppend(_)) => size -= 1,
            Err(other) => panic!("{other:?}"),
        }
    };
    assert!(size > ledger::EVENT_BYTES_MAX - 1024, "{size}");
    e.payload = vec![7; size + 1];
    let err = log
        .append(
            "license-big",
            ExpectedRevision::Any,
            vec![e],
            Uuid::new_v4(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAppend(_)), "{err:?}");
    shut(log).await;
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let read = log.read_all(r.first_position, 1).await.unwrap();
    assert_eq!(read[0].payload.len(), size);
    shut(log).await;
}

#[tokio::test]
async fn an_append_larger_than_one_index_batch_is_indexed_whole() {
    // The index writes a group of more than 4,096 keys in several sled batches (issue 7's
    // memory): every position and revision must still be found, live and after a restart.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let first = log
        .append(
            "license-L1",
            ExpectedRevision::Any,
            events(3, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    let big = log
        .append(
            "license-BIG",
            ExpectedRevision::Any,
            events(7_000, "UserAdded"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(big.first_position, first.last_position + 1);
    assert_eq!(big.last_position, big.first_position + 6_999);
    big_append_reads_whole(&log, &big).await;
    shut(log).await;
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    big_append_reads_whole(&log, &big).await;
    let next = log
        .append(
            "license-BIG",
            ExpectedRevision::Exact(6_999),
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(next.first_position, big.last_position + 1);
    assert!(log.verify().await.unwrap().first_break.is_none());
    shut(log).await;
}

/// Every event of the 7,000-event append is found by revision and by position.
async fn big_append_reads_whole(log: &EmbeddedLog, big: &ledger::AppendResult) {
    let stream = log.read_stream("license-BIG", 0, 10_000).await.unwrap();
    assert_eq!(stream.len(), 7_000);
    for (revision, event) in stream.iter().enumerate() {
        assert_eq!(event.revision, revision as u64);
        assert_eq!(event.position, big.first_position + revision as u64);
    }
    // Reading from a position in the middle of the append starts there.
    let middle = log.read_all(big.first_position + 5_000, 2).await.unwrap();
    assert_eq!(middle[0].position, big.first_position + 5_000);
    assert_eq!(middle[0].revision, 5_000);
    assert_eq!(log.committed_position(), big.last_position + 1);
}

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
    assert_eq!(log.durable_position(), before.len() as u64);
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
async fn reads_start_anywhere_in_large_and_small_appends() {
    // The index keeps a key only at each append's first event and at every 1,024th inside
    // one, and writes a group of more than 4,096 keys in several sled batches (issue 7):
    // every read by position and by revision must still find exactly the right events,
    // live, after a restart, and after the index was deleted and rebuilt from the log.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let appends: [(&str, usize); 8] = [
        ("license-L1", 3),
        ("license-BIG", 7_000),
        ("license-L1", 1),
        ("license-BIG", 1),
        ("license-BIG", 2_049),
        ("license-L2", 1_025),
        ("license-BIG", 1),
        ("license-L1", 2),
    ];
    for (stream, count) in appends {
        log.append(
            stream,
            ExpectedRevision::Any,
            events(count, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    }
    // 2,000 appends of one event: rebuilt from the log below, they are one catch-up batch
    // of over 6,000 keys, which the index writes in several sled batches.
    for _ in 0..SMALL_APPENDS {
        log.append(
            "license-L3",
            ExpectedRevision::Any,
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    }
    reads_match_the_whole_log(&log).await;
    shut(log).await;
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    reads_match_the_whole_log(&log).await;
    shut(log).await;
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    reads_match_the_whole_log(&log).await;
    // The next append continues the big stream's chain.
    let next = log
        .append(
            "license-BIG",
            ExpectedRevision::Exact(7_000 + 1 + 2_049),
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(next.first_position, LOG_EVENTS as u64);
    assert!(log.verify().await.unwrap().first_break.is_none());
    shut(log).await;
}

/// Appends of one event in the large-and-small log.
const SMALL_APPENDS: usize = 2_000;
/// Events in the large-and-small log.
const LOG_EVENTS: usize = 7_000 + 3 + 1 + 1 + 2_049 + 1_025 + 1 + 2 + SMALL_APPENDS;

/// Every read from a grid of starting points and sizes equals the matching slice of the
/// whole log read from the start.
async fn reads_match_the_whole_log(log: &EmbeddedLog) {
    let whole = all_events(log).await;
    assert_eq!(whole.len(), LOG_EVENTS);
    let sizes = [1, 2, 1_000, 10_000];
    for from in [
        0, 1, 2, 3, 4, 1_026, 1_027, 5_000, 7_002, 7_003, 7_004, 7_005, 9_000, 11_000,
    ] {
        for max in sizes {
            let read = log.read_all(from, max).await.unwrap();
            let start = (from as usize).min(whole.len());
            let end = (start + max).min(whole.len());
            assert_eq!(read, whole[start..end], "read_all({from}, {max})");
        }
    }
    for stream in [
        "license-BIG",
        "license-L1",
        "license-L2",
        "license-L3",
        "license-NONE",
    ] {
        let of_stream: Vec<&RecordedEvent> = whole.iter().filter(|e| e.stream == stream).collect();
        for (revision, event) in of_stream.iter().enumerate() {
            assert_eq!(event.revision, revision as u64);
        }
        for from in [
            0, 1, 2, 3, 1_023, 1_024, 1_025, 5_000, 6_999, 7_000, 7_001, 8_000, 9_050, 9_051,
        ] {
            for max in sizes {
                let read = log.read_stream(stream, from, max).await.unwrap();
                let start = (from as usize).min(of_stream.len());
                let end = (start + max).min(of_stream.len());
                let expected: Vec<RecordedEvent> =
                    of_stream[start..end].iter().map(|e| (*e).clone()).collect();
                assert_eq!(read, expected, "read_stream({stream}, {from}, {max})");
            }
        }
    }
}

#[tokio::test]
async fn reads_from_every_position_find_it_across_segments_between_position_keys() {
    // The index keeps a position key only at every 128th position (issue 7), so a read
    // from any other position steps over the records before it from the nearest key, into
    // the next segment files when they are small.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    let applied = fill(&log, 120).await;
    let whole = all_events(&log).await;
    let appended: u64 = applied.iter().map(|a| a.events.len() as u64).sum();
    assert_eq!(whole.len() as u64, appended);
    assert!(
        whole.len() > 256 && segment_files(dir.path()).len() > 10,
        "the log spans several position keys and segments"
    );
    for (from, expected) in whole.iter().enumerate() {
        assert_eq!(&log_read_one(&log, from as u64).await, expected);
    }
    shut(log).await;
    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    for (from, expected) in whole.iter().enumerate() {
        assert_eq!(&log_read_one(&log, from as u64).await, expected);
    }
    shut(log).await;
}

async fn log_read_one(log: &EmbeddedLog, from: u64) -> RecordedEvent {
    let mut read = log.read_all(from, 1).await.unwrap();
    assert_eq!(read.len(), 1, "read_all({from}, 1)");
    read.pop().unwrap()
}

#[tokio::test]
async fn an_index_in_the_previous_layout_is_converted_at_open() {
    // Index format 1 kept each answer under its own `A` key and a command's value, under
    // `C`, without the stream's length; format 2 keeps the answer inside the command's value
    // under `c`. An index without the format key is converted at open, before recovery
    // reads it, keeping its checkpoint and heads.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let command = Uuid::new_v4();
    let appended = events(2, "SeatAssigned");
    let result = log
        .append_answered(
            "license-L1",
            ExpectedRevision::NoStream,
            appended.clone(),
            command,
            Some(b"the answer".to_vec()),
        )
        .await
        .unwrap();
    let whole = all_events(&log).await;
    shut(log).await;

    // Rewrite the index as format 1 would have left it.
    let checkpoint = {
        let index = ledger::open_sled(&dir.path().join("index")).unwrap();
        assert!(
            index.remove(b"F").unwrap().is_some(),
            "format 2 marks its index"
        );
        let mut new_key = vec![b'c'];
        new_key.extend_from_slice(command.as_bytes());
        let value = index.remove(&new_key).unwrap().unwrap();
        // first, last, next revision, digest, then the bare stream name.
        let mut old_value = value[..56].to_vec();
        old_value.extend_from_slice(b"license-L1");
        let mut old_key = vec![b'C'];
        old_key.extend_from_slice(command.as_bytes());
        index.insert(&old_key, old_value).unwrap();
        let mut answer_key = vec![b'A'];
        answer_key.extend_from_slice(command.as_bytes());
        index.insert(&answer_key, &b"the answer"[..]).unwrap();
        index.flush().unwrap();
        index.get(b"K").unwrap().unwrap()
    };

    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let kept = log
        .command_answer("license-L1", command)
        .await
        .unwrap()
        .expect("the converted index keeps the command's answer");
    assert_eq!(kept.result, result);
    assert_eq!(kept.answer, b"the answer");
    assert_eq!(all_events(&log).await, whole);
    assert_eq!(log.read_stream("license-L1", 0, 10).await.unwrap(), whole);
    // A retry of the command is still recognised.
    let retry = log
        .append_answered(
            "license-L1",
            ExpectedRevision::NoStream,
            appended,
            command,
            None,
        )
        .await
        .unwrap();
    assert_eq!(retry, result);
    shut(log).await;
    let index = ledger::open_sled(&dir.path().join("index")).unwrap();
    assert!(
        index.scan_prefix(b"A").next().is_none() && index.scan_prefix(b"C").next().is_none(),
        "nothing of the old layout is left"
    );
    assert_eq!(
        index.get(b"K").unwrap().unwrap(),
        checkpoint,
        "the checkpoint is kept"
    );
    assert_eq!(
        index.get(b"F").unwrap().as_deref(),
        Some(&2u32.to_be_bytes()[..])
    );
}

#[tokio::test]
async fn an_unkeyed_append_records_its_id_but_the_log_does_not_remember_it() {
    // `append_unkeyed` is for ids nobody can send again (issue 7: one index key and one
    // lookup less per append). The id is in the events for auditors; an append with it again
    // appends again, live, after a restart and after the index was rebuilt from the log.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let (live_id, rebuilt_id) = (Uuid::new_v4(), Uuid::new_v4());
    let first = log
        .append_unkeyed(
            "license-L1",
            ExpectedRevision::NoStream,
            events(2, "T"),
            live_id,
        )
        .await
        .unwrap();
    let second = log
        .append_unkeyed(
            "license-L1",
            ExpectedRevision::Exact(1),
            events(1, "T"),
            live_id,
        )
        .await
        .unwrap();
    assert_eq!(second.first_position, first.last_position + 1);
    assert_eq!(
        log.command_answer("license-L1", live_id).await.unwrap(),
        None
    );
    log.append_unkeyed(
        "license-L2",
        ExpectedRevision::Any,
        events(1, "T"),
        rebuilt_id,
    )
    .await
    .unwrap();
    let recorded = all_events(&log).await;
    assert_eq!(
        recorded.iter().map(|e| e.command_id).collect::<Vec<_>>(),
        [live_id, live_id, live_id, rebuilt_id]
    );
    shut(log).await;

    for (id, rebuild_index) in [(live_id, false), (rebuilt_id, true)] {
        if rebuild_index {
            std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        }
        let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let before = all_events(&log).await.len() as u64;
        // A keyed append under the id is a new append: neither the live index nor the
        // recovery that rebuilt it indexed the unkeyed one.
        let keyed_events = events(1, "T");
        let keyed = log
            .append(
                "license-L1",
                ExpectedRevision::Any,
                keyed_events.clone(),
                id,
            )
            .await
            .unwrap();
        assert_eq!(
            keyed.first_position, before,
            "index rebuilt: {rebuild_index}"
        );
        // From now on the id is keyed: a retry answers the first result.
        let retry = log
            .append("license-L1", ExpectedRevision::Any, keyed_events, id)
            .await
            .unwrap();
        assert_eq!(retry, keyed);
        assert!(log.verify().await.unwrap().first_break.is_none());
        shut(log).await;
    }
}

#[tokio::test]
async fn a_subscription_at_the_live_tail_resumes_where_it_read_up_to_across_segments() {
    // A subscription reads on from where its last read ended instead of from the index's
    // nearest position key (issue 7): through small segments, from a position between keys,
    // while appends keep coming, it must deliver exactly the log.
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), small_segments()).unwrap();
    fill(&log, 10).await;
    let start = 13;
    let mut subscription = log.subscribe_all(start).await.unwrap();
    let mut received = Vec::new();
    for round in 0..60 {
        fill(&log, 1 + round % 3).await;
        let committed = all_events(&log).await.len() as u64;
        while start + (received.len() as u64) < committed {
            received.push(subscription.next().await.unwrap().unwrap());
        }
    }
    let whole = all_events(&log).await;
    assert!(
        segment_files(dir.path()).len() > 5,
        "the reads crossed segments"
    );
    assert_eq!(received, whole[start as usize..]);
    shut(log).await;
}

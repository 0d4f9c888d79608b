//! One conformance suite, generic over `EventLog`, run against the embedded backend and,
//! when `KURRENTDB_URL` is set and the `kurrentdb` feature is on, against KurrentDB.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{event, events};
use ledger::{
    ANSWER_BYTES_MAX, APPEND_EVENTS_MAX, CurrentRevision, EVENT_BYTES_MAX, EmbeddedLog,
    EmbeddedOptions, EventLog, ExpectedRevision, GENESIS_HASH, LedgerError, RecordedEvent,
};
use uuid::Uuid;

/// What a backend promises beyond the trait.
#[derive(Clone, Copy)]
struct Traits {
    /// Positions are 0, 1, 2, ... (embedded) rather than merely increasing (KurrentDB).
    contiguous_positions: bool,
}

/// Streams get a per-run prefix so that a shared KurrentDB server holds no stale ones.
fn stream(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

async fn read_ours(log: &dyn EventLog, from: u64, prefix: &str) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = log.read_all(next, 500).await.unwrap();
        let Some(last) = batch.last() else { break };
        next = last.position + 1;
        out.extend(batch.into_iter().filter(|e| e.stream.starts_with(prefix)));
    }
    out
}

async fn append_and_read_stream(log: &dyn EventLog, prefix: &str) {
    let s = stream(prefix, "license-L1");
    let evs = vec![
        event(1, "LicenseIssued"),
        event(2, "SeatAssigned"),
        event(3, "SeatAssigned"),
    ];
    let command_id = Uuid::new_v4();
    let r = log
        .append(&s, ExpectedRevision::NoStream, evs.clone(), command_id)
        .await
        .unwrap();
    assert_eq!(r.next_expected_revision, 2);
    assert!(r.first_position < r.last_position);
    let read = log.read_stream(&s, 0, 100).await.unwrap();
    assert_eq!(read.len(), 3);
    // AUD-1: each stored event carries its id, stream, revision, position, type, schema
    // version, time, actor, command id and correlation id, as appended.
    for (i, (got, sent)) in read.iter().zip(&evs).enumerate() {
        assert_eq!(got.revision, i as u64);
        assert_eq!(got.stream, s);
        assert_eq!(got.event_id, sent.event_id);
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.payload, sent.payload);
        assert_eq!(got.actor, sent.actor);
        assert_eq!(got.recorded_at, sent.recorded_at);
        assert_eq!(got.correlation_id, sent.correlation_id);
        assert_eq!(got.schema_version, sent.schema_version);
        assert_eq!(got.position, r.first_position + i as u64);
    }
    assert!(read.iter().all(|e| e.command_id == command_id));
    assert_eq!(read[0].position, r.first_position);
    assert_eq!(read[2].position, r.last_position);
    assert_eq!(read[0].predecessor_hash, GENESIS_HASH);
    assert_eq!(read[1].predecessor_hash, read[0].hash);
    assert_eq!(read[2].predecessor_hash, read[1].hash);
    // Paging by revision.
    let tail = log.read_stream(&s, 1, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0], read[1]);
    assert!(log.read_stream(&s, 3, 10).await.unwrap().is_empty());
    assert!(
        log.read_stream(&stream(prefix, "missing"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn expected_revisions_are_checked(log: &dyn EventLog, prefix: &str) {
    let s = stream(prefix, "domain-north.edu");
    let err = log
        .append(
            &s,
            ExpectedRevision::Exact(0),
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::WrongExpectedVersion {
                actual: CurrentRevision::NoStream,
                expected: ExpectedRevision::Exact(0),
                ..
            }
        ),
        "{err:?}"
    );
    log.append(
        &s,
        ExpectedRevision::NoStream,
        events(2, "T"),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    let err = log
        .append(
            &s,
            ExpectedRevision::NoStream,
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::WrongExpectedVersion {
                actual: CurrentRevision::Current(1),
                ..
            }
        ),
        "{err:?}"
    );
    let err = log
        .append(
            &s,
            ExpectedRevision::Exact(5),
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::WrongExpectedVersion {
                actual: CurrentRevision::Current(1),
                expected: ExpectedRevision::Exact(5),
                ..
            }
        ),
        "{err:?}"
    );
    let r = log
        .append(
            &s,
            ExpectedRevision::Exact(1),
            events(1, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(r.next_expected_revision, 2);
    let r = log
        .append(&s, ExpectedRevision::Any, events(2, "T"), Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(r.next_expected_revision, 4);
    // Nothing of the refused appends was written.
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 5);
}

async fn racing_appenders_one_wins(log: Arc<dyn EventLog>, prefix: &str) {
    let s = stream(prefix, "license-race");
    log.append(
        &s,
        ExpectedRevision::NoStream,
        events(1, "T"),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    let racers = 16;
    let mut tasks = Vec::new();
    for _ in 0..racers {
        let log = log.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            log.append(
                &s,
                ExpectedRevision::Exact(0),
                events(2, "T"),
                Uuid::new_v4(),
            )
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.next_expected_revision, 2);
            }
            Err(LedgerError::WrongExpectedVersion { actual, .. }) => {
                assert_eq!(actual, CurrentRevision::Current(2));
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 3);
}

async fn command_ids_are_idempotent(log: &dyn EventLog, prefix: &str) {
    let s = stream(prefix, "license-idem");
    let cmd = Uuid::new_v4();
    let evs = events(3, "SeatAssigned");
    let first = log
        .append(&s, ExpectedRevision::NoStream, evs.clone(), cmd)
        .await
        .unwrap();
    // A retry, even with fresh event ids and an expectation that no longer holds, gets
    // the first answer and writes nothing.
    let mut retry = evs.clone();
    for e in &mut retry {
        e.event_id = Uuid::new_v4();
    }
    let again = log
        .append(&s, ExpectedRevision::NoStream, retry, cmd)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 3);
    let err = log
        .append(&s, ExpectedRevision::Any, events(1, "Other"), cmd)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CommandIdReused { command_id, .. } if command_id == cmd),
        "{err:?}"
    );
    let err = log
        .append(
            &stream(prefix, "elsewhere"),
            ExpectedRevision::Any,
            evs,
            cmd,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::CommandIdReused { .. }),
        "{err:?}"
    );
    assert!(
        log.read_stream(&stream(prefix, "elsewhere"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 3);
}

// AUD-4: the answer handed in with an append is what a later lookup of its command id gets,
// the first one stays when the command is retried, and other streams or ids get nothing.
async fn command_answers_are_kept(log: &dyn EventLog, prefix: &str) {
    let s = stream(prefix, "license-answer");
    let cmd = Uuid::new_v4();
    let evs = events(2, "SeatAssigned");
    assert_eq!(log.command_answer(&s, cmd).await.unwrap(), None);
    let first = log
        .append_answered(
            &s,
            ExpectedRevision::NoStream,
            evs.clone(),
            cmd,
            Some(b"first answer".to_vec()),
        )
        .await
        .unwrap();
    let kept = log.command_answer(&s, cmd).await.unwrap().unwrap();
    assert_eq!(kept.result, first);
    assert_eq!(kept.answer, b"first answer");
    // The id's stream is found without naming it; an unknown id has none.
    assert_eq!(log.command_stream(cmd).await.unwrap(), Some(s.clone()));
    assert_eq!(log.command_stream(Uuid::new_v4()).await.unwrap(), None);
    let again = log
        .append_answered(
            &s,
            ExpectedRevision::NoStream,
            evs,
            cmd,
            Some(b"second answer".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(
        log.command_answer(&s, cmd).await.unwrap().unwrap().answer,
        b"first answer"
    );
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 2);
    // Asked about another stream, or about an append made without an answer: nothing.
    assert_eq!(
        log.command_answer(&stream(prefix, "elsewhere"), cmd)
            .await
            .unwrap(),
        None
    );
    let plain = Uuid::new_v4();
    log.append(&s, ExpectedRevision::Any, events(1, "T"), plain)
        .await
        .unwrap();
    assert_eq!(log.command_answer(&s, plain).await.unwrap(), None);
    // An answer over the limit is refused with the append.
    let err = log
        .append_answered(
            &s,
            ExpectedRevision::Any,
            events(1, "T"),
            Uuid::new_v4(),
            Some(vec![0; ANSWER_BYTES_MAX + 1]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAppend(_)), "{err:?}");
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 3);
}

async fn limits_are_enforced(log: &dyn EventLog, prefix: &str) {
    let s = stream(prefix, "license-limits");
    let too_many = vec![event(5, "T"); APPEND_EVENTS_MAX + 1];
    let err = log
        .append(&s, ExpectedRevision::Any, too_many, Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAppend(_)), "{err:?}");
    let mut big = event(6, "T");
    big.payload = vec![0; EVENT_BYTES_MAX];
    let err = log
        .append(&s, ExpectedRevision::Any, vec![big], Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAppend(_)), "{err:?}");
    let err = log
        .append(&s, ExpectedRevision::Any, Vec::new(), Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAppend(_)), "{err:?}");
    let err = log
        .append("", ExpectedRevision::Any, events(1, "T"), Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidAppend(_)), "{err:?}");
    assert!(log.read_stream(&s, 0, 10).await.unwrap().is_empty());
}

async fn read_all_pages_in_order(log: &dyn EventLog, prefix: &str, traits: Traits) {
    let a = stream(prefix, "license-A");
    let b = stream(prefix, "license-B");
    let start = log
        .append(&a, ExpectedRevision::Any, events(2, "T"), Uuid::new_v4())
        .await
        .unwrap()
        .first_position;
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        log.append(
            s,
            ExpectedRevision::Any,
            events(1 + i % 3, "T"),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    }
    let all = read_ours(log, start, prefix).await;
    let ours: Vec<_> = all
        .iter()
        .filter(|e| e.stream == a || e.stream == b)
        .collect();
    assert_eq!(ours.len(), 2 + (0..10).map(|i| 1 + i % 3).sum::<usize>());
    for w in all.windows(2) {
        assert!(w[0].position < w[1].position);
        if traits.contiguous_positions {
            assert_eq!(w[0].position + 1, w[1].position);
        }
    }
    // Small pages see the same sequence, without a duplicate or a gap.
    let mut paged = Vec::new();
    let mut next = start;
    loop {
        let batch = log.read_all(next, 3).await.unwrap();
        assert!(batch.len() <= 3);
        let Some(last) = batch.last() else { break };
        next = last.position + 1;
        paged.extend(batch.into_iter().filter(|e| e.stream.starts_with(prefix)));
    }
    assert_eq!(paged, all);
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), all.len());
}

async fn subscription_has_no_gap_or_duplicate(log: Arc<dyn EventLog>, prefix: &str) {
    let s = stream(prefix, "license-sub");
    let start = log
        .append(&s, ExpectedRevision::Any, events(5, "T"), Uuid::new_v4())
        .await
        .unwrap()
        .first_position;
    for _ in 0..20 {
        log.append(&s, ExpectedRevision::Any, events(3, "T"), Uuid::new_v4())
            .await
            .unwrap();
    }
    let mut sub = log.subscribe_all(start).await.unwrap();
    // Appends go on while the subscriber catches up and then goes live.
    let writer = {
        let log = log.clone();
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                log.append(&s, ExpectedRevision::Any, events(2, "T"), Uuid::new_v4())
                    .await
                    .unwrap();
            }
        })
    };
    let total = 5 + 20 * 3 + 100 * 2;
    let mut got = Vec::new();
    while got.len() < total {
        let e = sub.next().await.expect("subscription ended").unwrap();
        if e.stream == s {
            got.push(e);
        }
    }
    writer.await.unwrap();
    let expected = read_ours(log.as_ref(), start, &s).await;
    assert_eq!(expected.len(), total);
    assert_eq!(got, expected);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.revision, i as u64);
    }
}

async fn verify_finds_intact_chains(log: &dyn EventLog) {
    let report = log.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
    assert!(report.events_checked > 0);
    assert!(report.streams_checked > 0);
}

/// The whole suite against one backend.
async fn run_suite(log: Arc<dyn EventLog>, traits: Traits) {
    let prefix = format!("t{}-", Uuid::new_v4().simple());
    append_and_read_stream(log.as_ref(), &prefix).await;
    expected_revisions_are_checked(log.as_ref(), &prefix).await;
    racing_appenders_one_wins(log.clone(), &prefix).await;
    command_ids_are_idempotent(log.as_ref(), &prefix).await;
    command_answers_are_kept(log.as_ref(), &prefix).await;
    limits_are_enforced(log.as_ref(), &prefix).await;
    read_all_pages_in_order(log.as_ref(), &prefix, traits).await;
    subscription_has_no_gap_or_duplicate(log.clone(), &prefix).await;
    verify_finds_intact_chains(log.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments so that the suite also crosses segment boundaries.
    let options = EmbeddedOptions {
        segment_size_bytes: 16 * 1024,
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    run_suite(
        Arc::new(log.clone()),
        Traits {
            contiguous_positions: true,
        },
    )
    .await;
    log.close().await.unwrap();
}

#[cfg(feature = "kurrentdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kurrentdb_backend_conforms() {
    let Ok(url) = std::env::var("KURRENTDB_URL") else {
        println!("note: KURRENTDB_URL is not set; the KurrentDB conformance run is skipped");
        return;
    };
    let log = ledger::KurrentLog::connect(&url).await.unwrap();
    run_suite(
        Arc::new(log),
        Traits {
            contiguous_positions: false,
        },
    )
    .await;
}

//! Thousands of seeded crash points on the simulated disk: after every one, no
//! acknowledged append is lost, none is duplicated, and no append is visible in part.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ledger::storage::{SimDisk, SimRng, Storage};
use ledger::{
    AppendResult, EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, IndexStore, NewEvent,
    RecordedEvent,
};
use uuid::Uuid;

/// Seeded crash points per CI run; each one is a full open-write-crash-recover cycle.
const CRASH_SEEDS: u64 = 2000;

#[derive(Clone)]
struct Submitted {
    stream: String,
    events: Vec<NewEvent>,
    /// The answer kept with the append (AUD-4), for some of them.
    answer: Option<Vec<u8>>,
    acked: Option<AppendResult>,
}

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        // Tiny segments so that crashes also hit segment roll-overs.
        segment_size_bytes: 2 * 1024,
        ..EmbeddedOptions::default()
    }
}

async fn read_everything(log: &EmbeddedLog) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    loop {
        let batch = log.read_all(out.len() as u64, 1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Runs a few concurrent appenders until the disk dies or they are done.
async fn workload(
    log: &EmbeddedLog,
    rng: &mut SimRng,
    submitted: &Arc<Mutex<HashMap<Uuid, Submitted>>>,
) {
    let writers = 1 + rng.below(4);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let submitted = submitted.clone();
        let mut rng = SimRng::new(rng.next_u64());
        tasks.push(tokio::spawn(async move {
            for _ in 0..(1 + rng.below(8)) {
                let stream = format!("license-L{}", rng.below(3));
                let n = 1 + rng.below(4) as usize;
                let events: Vec<NewEvent> = (0..n)
                    .map(|_| common::event(rng.next_u64() as u128 | (w as u128) << 64, "T"))
                    .collect();
                let cmd = Uuid::from_u128(rng.next_u64() as u128);
                let answer = (rng.below(2) == 0).then(|| cmd.as_bytes().repeat(n));
                submitted.lock().unwrap().insert(
                    cmd,
                    Submitted {
                        stream: stream.clone(),
                        events: events.clone(),
                        answer: answer.clone(),
                        acked: None,
                    },
                );
                match log
                    .append_answered(&stream, ExpectedRevision::Any, events, cmd, answer)
                    .await
                {
                    Ok(r) => submitted.lock().unwrap().get_mut(&cmd).unwrap().acked = Some(r),
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn check(seed: u64, log_events: &[RecordedEvent], submitted: &HashMap<Uuid, Submitted>) {
    let mut by_command: HashMap<Uuid, Vec<&RecordedEvent>> = HashMap::new();
    for (i, e) in log_events.iter().enumerate() {
        assert_eq!(
            e.position, i as u64,
            "seed {seed}: positions not contiguous"
        );
        by_command.entry(e.command_id).or_default().push(e);
    }
    for (cmd, evs) in &by_command {
        let sub = submitted
            .get(cmd)
            .unwrap_or_else(|| panic!("seed {seed}: an event of unknown command {cmd}"));
        // All of the append or none of it, and exactly once.
        assert_eq!(
            evs.len(),
            sub.events.len(),
            "seed {seed}: append {cmd} is partial or doubled"
        );
        for (e, want) in evs.iter().zip(&sub.events) {
            assert_eq!(e.event_id, want.event_id, "seed {seed}");
            assert_eq!(e.payload, want.payload, "seed {seed}");
            assert_eq!(e.stream, sub.stream, "seed {seed}");
        }
        for w in evs.windows(2) {
            assert_eq!(
                w[0].position + 1,
                w[1].position,
                "seed {seed}: append interleaved"
            );
        }
        if let Some(r) = sub.acked {
            assert_eq!(evs[0].position, r.first_position, "seed {seed}");
            assert_eq!(evs[evs.len() - 1].position, r.last_position, "seed {seed}");
        }
    }
    for (cmd, sub) in submitted {
        if sub.acked.is_some() {
            assert!(
                by_command.contains_key(cmd),
                "seed {seed}: acknowledged append {cmd} lost"
            );
        }
    }
}

/// Copies into `older` a random half of the keys `newer` has and `older` lacks or holds
/// differently, except the heads (`H...`) and the checkpoint (`K`), which the index writes
/// last and atomically.
fn with_some_keys_of(older: &IndexStore, newer: &IndexStore, rng: &mut SimRng) {
    let (IndexStore::Memory(older), IndexStore::Memory(newer)) = (older, newer) else {
        panic!("the simulation keeps its index in memory");
    };
    let newer = newer.lock().unwrap().clone();
    let mut older = older.lock().unwrap();
    for (key, value) in newer {
        if key.first() == Some(&b'H') || key.first() == Some(&b'K') {
            continue;
        }
        if older.get(&key) != Some(&value) && rng.below(2) == 0 {
            older.insert(key, value);
        }
    }
}

async fn one_crash(seed: u64) {
    let mut rng = SimRng::new(seed);
    let disk = Arc::new(SimDisk::new());
    let index = IndexStore::memory();
    let submitted = Arc::new(Mutex::new(HashMap::new()));

    // A first life that ends cleanly, so that crashes also happen on a non-empty log.
    if rng.below(2) == 0 {
        let log = EmbeddedLog::open_with(disk.clone(), index.clone(), options()).unwrap();
        workload(&log, &mut rng, &submitted).await;
        log.close().await.unwrap();
    }
    // The index as it was before the second life: a stand-in for sled losing batches.
    let older_index = index.snapshot();
    // The second life dies after a random number of disk operations.
    disk.crash_after(rng.below(40));
    match EmbeddedLog::open_with(disk.clone(), index.clone(), options()) {
        Ok(log) => {
            workload(&log, &mut rng, &submitted).await;
            log.close().await.unwrap();
        }
        Err(_) => assert!(disk.is_dead(), "seed {seed}: open failed on a live disk"),
    }

    // Power comes back: unsynced writes are gone, the last one may be torn.
    let restarted: Arc<dyn Storage> = Arc::new(disk.restart(rng.next_u64()));
    // The index is only ever behind the log: it may survive whole, lose its latest
    // batches, or be lost entirely.
    let index = match rng.below(5) {
        0 => {
            index.clear().unwrap();
            index
        }
        1 => older_index,
        2 => {
            // A crash between a large group's batches: some of the newer position,
            // revision and command keys are there, the newer heads and checkpoint not.
            with_some_keys_of(&older_index, &index, &mut rng);
            older_index
        }
        _ => index,
    };
    let log = EmbeddedLog::open_with(restarted.clone(), index.clone(), options())
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    let after = read_everything(&log).await;
    let submitted = submitted.lock().unwrap().clone();
    check(seed, &after, &submitted);
    let report = log.verify().await.unwrap();
    assert!(report.first_break.is_none(), "seed {seed}: {report:?}");
    assert_eq!(report.events_checked, after.len() as u64);
    // AUD-4: every acknowledged append made with an answer still has it, with its result,
    // whether the index survived, fell behind or was rebuilt from the log.
    for (cmd, sub) in &submitted {
        let (Some(acked), Some(answer)) = (sub.acked, &sub.answer) else {
            continue;
        };
        let kept = log
            .command_answer(&sub.stream, *cmd)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("seed {seed}: the answer of {cmd} was lost"));
        assert_eq!(kept.result, acked, "seed {seed}");
        assert_eq!(&kept.answer, answer, "seed {seed}");
    }
    // Retrying an acknowledged command after the crash writes nothing new.
    if let Some((cmd, sub)) = submitted.iter().find(|(_, s)| s.acked.is_some()) {
        let r = log
            .append(&sub.stream, ExpectedRevision::Any, sub.events.clone(), *cmd)
            .await
            .unwrap();
        assert_eq!(Some(r), sub.acked, "seed {seed}");
        assert_eq!(log.durable_position(), after.len() as u64, "seed {seed}");
    }
    // The recovered log takes new appends after what survived, across another restart.
    let fresh = common::events(2, "T");
    let r = log
        .append(
            "license-L0",
            ExpectedRevision::Any,
            fresh.clone(),
            Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(r.first_position, after.len() as u64, "seed {seed}");
    log.close().await.unwrap();
    drop(log);
    let log = EmbeddedLog::open_with(restarted, index, options())
        .unwrap_or_else(|e| panic!("seed {seed}: second open failed: {e}"));
    let again = read_everything(&log).await;
    assert_eq!(again[..after.len()], after[..], "seed {seed}");
    let ids: Vec<Uuid> = again[after.len()..].iter().map(|e| e.event_id).collect();
    let want: Vec<Uuid> = fresh.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, want, "seed {seed}");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_crashes_never_lose_or_split_an_append() {
    for seed in 0..CRASH_SEEDS {
        one_crash(seed).await;
    }
}

//! A child process appends and reports each acknowledgement; the parent kills it with
//! SIGKILL and checks that every acknowledged append is there exactly once, chains intact.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use ledger::{EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision, NewEvent};
use uuid::Uuid;

const CHILD_DIR_VAR: &str = "LEDGER_SIGKILL_CHILD_DIR";
const TEST_NAME: &str = "acknowledged_appends_survive_sigkill";
/// Acknowledgements the parent waits for before it pulls the plug.
const ACKS_BEFORE_KILL: usize = 400;
const CHILD_WRITERS: u64 = 8;

/// The events of command `cmd`: rebuilt by the parent from the id alone.
fn events_of(cmd: Uuid) -> Vec<NewEvent> {
    let n = 1 + (cmd.as_u128() % 3) as usize;
    (0..n)
        .map(|i| common::event(cmd.as_u128().wrapping_add(i as u128), "SeatAssigned"))
        .collect()
}

fn stream_of(cmd: Uuid) -> String {
    format!("license-L{}", cmd.as_u128() % 5)
}

async fn child(dir: &str) -> ! {
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default()).expect("child opens the log");
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CHILD_WRITERS {
        let log = log.clone();
        let out = out.clone();
        tasks.spawn(async move {
            loop {
                let cmd = Uuid::new_v4();
                let r = log
                    .append(&stream_of(cmd), ExpectedRevision::Any, events_of(cmd), cmd)
                    .await
                    .expect("child append");
                let mut o = out.lock().unwrap();
                writeln!(o, "ACK {cmd} {} {}", r.first_position, r.last_position).unwrap();
                o.flush().unwrap();
            }
        });
    }
    // The writers loop until the process is killed; a writer that stops has panicked.
    let ended = tasks.join_next().await;
    panic!("a child writer stopped: {ended:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR_VAR) {
        child(&dir).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashMap<Uuid, (u64, u64)> = HashMap::new();
    // Two lives, so that the second child also starts from a log a kill interrupted.
    for _life in 0..2 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut this_life = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            // The test harness may print its own "test ... " text on the same line.
            let Some(at) = line.find("ACK ") else {
                continue;
            };
            let rest = &line[at + 4..];
            let parts: Vec<&str> = rest.split(' ').collect();
            let cmd = Uuid::parse_str(parts[0]).unwrap();
            acked.insert(cmd, (parts[1].parse().unwrap(), parts[2].parse().unwrap()));
            this_life += 1;
            if this_life == ACKS_BEFORE_KILL {
                // `Child::kill` sends SIGKILL on Unix: no destructor, no flush runs.
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(
            this_life, ACKS_BEFORE_KILL,
            "the child died before it was killed"
        );
    }

    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let mut all = Vec::new();
    loop {
        let batch = log.read_all(all.len() as u64, 5000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    let ids: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), all.len(), "an event appears twice");
    let mut by_command: HashMap<Uuid, Vec<u64>> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64);
        by_command.entry(e.command_id).or_default().push(e.position);
    }
    for (cmd, (first, last)) in &acked {
        let positions = by_command
            .get(cmd)
            .unwrap_or_else(|| panic!("acknowledged command {cmd} was lost"));
        assert_eq!(positions.len(), events_of(*cmd).len());
        assert_eq!(positions.first(), Some(first));
        assert_eq!(positions.last(), Some(last));
    }
    for (cmd, positions) in &by_command {
        assert_eq!(
            positions.len(),
            events_of(*cmd).len(),
            "append {cmd} is partial"
        );
    }
    let report = log.verify().await.unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
    // Retrying an acknowledged command returns its first result and writes nothing.
    let (cmd, (first, last)) = acked.iter().next().unwrap();
    let r = log
        .append(
            &stream_of(*cmd),
            ExpectedRevision::Any,
            events_of(*cmd),
            *cmd,
        )
        .await
        .unwrap();
    assert_eq!((r.first_position, r.last_position), (*first, *last));
    assert_eq!(log.durable_position(), all.len() as u64);
    log.close().await.unwrap();
}

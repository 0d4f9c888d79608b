//! A full or read-only disk (issue 8): an append that cannot be written or synced gets a
//! typed error, nothing unsynced is acknowledged, the log takes no appends after a failed
//! write or fdatasync until it is reopened, and everything acknowledged before is there
//! after the reopen. On the simulated disk (deterministic errors) and on a real tmpfs that
//! fills up (the tests mount one, which needs root, as CI runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{event, events};
use ledger::storage::SimDisk;
use ledger::{
    AppendResult, DiskProblem, EmbeddedLog, EmbeddedOptions, EventLog, ExpectedRevision,
    IndexStore, LedgerError, RecordedEvent,
};
use uuid::Uuid;

const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const EIO: i32 = 5;

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

fn disk_problem(error: &LedgerError) -> DiskProblem {
    match error {
        LedgerError::Disk(failure) => failure.problem,
        other => panic!("expected a disk failure, got {other:?}"),
    }
}

async fn append_one(
    log: &EmbeddedLog,
    seed: u128,
    command: Uuid,
) -> Result<AppendResult, LedgerError> {
    log.append(
        "license-D",
        ExpectedRevision::Any,
        vec![event(seed, "SeatAssigned")],
        command,
    )
    .await
}

/// The simulated disk fails appends or syncs with `errno`; the append is refused with the
/// expected problem, the next ones are refused without touching the disk, and after a
/// restart (the fault gone, as once space is freed) the acknowledged events are there.
async fn refused_then_recovered(fail: impl Fn(&SimDisk), expected: DiskProblem, words: &str) {
    for seed in 0..8u64 {
        let disk = Arc::new(SimDisk::new());
        let index = IndexStore::memory();
        let log = EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default())
            .unwrap();
        let mut acknowledged = Vec::new();
        for i in 0..5u128 {
            acknowledged.push(append_one(&log, i, Uuid::from_u128(i + 1)).await.unwrap());
        }
        fail(&disk);
        let failed_command = Uuid::from_u128(100);
        let error = append_one(&log, 100, failed_command).await.unwrap_err();
        assert_eq!(disk_problem(&error), expected, "{error}");
        let message = error.to_string();
        assert!(message.contains(words), "{message}");
        assert!(message.contains("restart the server"), "{message}");
        assert_eq!(
            log.durable_position(),
            5,
            "nothing unsynced is acknowledged"
        );

        // Poisoned: later appends fail at once, and the disk is not touched again.
        let before = disk.attempts();
        let again = append_one(&log, 101, Uuid::from_u128(101))
            .await
            .unwrap_err();
        assert_eq!(disk_problem(&again), expected, "{again}");
        assert_eq!(disk.attempts(), before, "no write or sync after a failure");
        assert_eq!(
            all_events(&log).await.len(),
            5,
            "readers see the acknowledged events"
        );
        log.close().await.unwrap();

        // The restart: what is on the disk after a power loss, with the fault gone.
        let disk = Arc::new(disk.restart(seed));
        let log = EmbeddedLog::open_with(disk.clone(), index.clone(), EmbeddedOptions::default())
            .unwrap();
        let stored = all_events(&log).await;
        assert!(
            stored.len() == 5 || stored.len() == 6,
            "{} events",
            stored.len()
        );
        for (result, event) in acknowledged.iter().zip(&stored) {
            assert_eq!(result.first_position, event.position);
        }
        // The refused append was never acknowledged; a retry with its command id gets the
        // one definite answer, whether or not its bytes made it.
        let retried = append_one(&log, 100, failed_command).await.unwrap();
        let retried_again = append_one(&log, 100, failed_command).await.unwrap();
        assert_eq!(retried, retried_again);
        assert_eq!(
            all_events(&log).await.len(),
            6,
            "the retry is there exactly once"
        );
        assert!(log.verify().await.unwrap().first_break.is_none());
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_the_append_and_keeps_what_was_acknowledged() {
    // A short write, then ENOSPC, as ext4 and tmpfs answer when the last blocks run out.
    refused_then_recovered(
        |d| d.fail_appends(Some((ENOSPC, 100))),
        DiskProblem::Full,
        "the disk is full",
    )
    .await;
}

#[tokio::test]
async fn a_failed_fdatasync_poisons_the_log_until_it_is_reopened() {
    // fsyncgate: after a failed fdatasync nothing may be acknowledged again before a restart.
    refused_then_recovered(
        |d| d.fail_syncs(Some(EIO)),
        DiskProblem::Failed,
        "fdatasync",
    )
    .await;
    refused_then_recovered(
        |d| d.fail_syncs(Some(ENOSPC)),
        DiskProblem::Full,
        "the disk is full",
    )
    .await;
}

#[tokio::test]
async fn a_read_only_file_system_refuses_the_append() {
    refused_then_recovered(
        |d| d.fail_appends(Some((EROFS, 0))),
        DiskProblem::ReadOnly,
        "read-only",
    )
    .await;
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it). `None` when not running as
    /// root, where mounting is not possible: such a run prints why and checks nothing on a
    /// real file system (CI runs as root). As root, a failed mount fails the test.
    fn mount(size: &str) -> Option<Tmpfs> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !root {
            eprintln!("not root: the real tmpfs part of this test needs root to mount one");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "remount {options}: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Fills the file system at `dir` with a file until a write fails; returns the file.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // A few bytes may still fit; take them too.
    while let Ok(n) = file.write(&block[..1]) {
        if n == 0 {
            break;
        }
    }
    path
}

/// A real tmpfs that fills up while the log runs: the append that meets the full disk is
/// refused as `Full`, the ones after it too, and once space is freed a reopen has every
/// acknowledged append, in order, and takes new ones.
#[tokio::test]
async fn a_real_tmpfs_filling_up_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = fs.path().join("log");
    let log = EmbeddedLog::open(&dir, EmbeddedOptions::default()).unwrap();
    let mut acknowledged: Vec<(Uuid, AppendResult)> = Vec::new();
    for i in 0..4 {
        let command = Uuid::new_v4();
        let result = log
            .append(
                "license-R",
                ExpectedRevision::Any,
                events(3, "SeatAssigned"),
                command,
            )
            .await
            .unwrap();
        acknowledged.push((command, result));
        assert_eq!(result.last_position, 3 * i + 2);
    }
    let filler = fill_up(fs.path());
    // Appends of about 64 KiB until the disk refuses one.
    let failure = loop {
        let mut big = events(1, "CsvImported");
        big[0].payload = vec![7; 64 * 1024];
        let command = Uuid::new_v4();
        match log
            .append("license-R", ExpectedRevision::Any, big, command)
            .await
        {
            Ok(result) => acknowledged.push((command, result)),
            Err(error) => break error,
        }
        assert!(acknowledged.len() < 1000, "the disk never filled up");
    };
    eprintln!("the refusal: {failure}");
    assert_eq!(disk_problem(&failure), DiskProblem::Full, "{failure}");
    assert!(
        failure.to_string().contains("the disk is full"),
        "{failure}"
    );
    let again = log
        .append(
            "license-S",
            ExpectedRevision::Any,
            events(1, "SeatAssigned"),
            Uuid::new_v4(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        disk_problem(&again),
        DiskProblem::Full,
        "refused until restarted"
    );
    let _ = log.close().await;
    drop(log);

    std::fs::remove_file(filler).unwrap();
    let log = EmbeddedLog::open(&dir, EmbeddedOptions::default()).unwrap();
    let stored = all_events(&log).await;
    for (command, result) in &acknowledged {
        let first = &stored[result.first_position as usize];
        assert_eq!(
            first.command_id, *command,
            "acknowledged append lost or moved"
        );
        assert_eq!(stored[result.last_position as usize].command_id, *command);
    }
    assert!(log.verify().await.unwrap().first_break.is_none());
    log.append(
        "license-S",
        ExpectedRevision::Any,
        events(1, "SeatAssigned"),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    log.close().await.unwrap();
}

/// A log on a file system that is read-only at start refuses to open, saying so.
#[tokio::test]
async fn a_read_only_file_system_refuses_the_start() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = fs.path().join("log");
    let log = EmbeddedLog::open(&dir, EmbeddedOptions::default()).unwrap();
    log.append(
        "license-R",
        ExpectedRevision::Any,
        events(2, "SeatAssigned"),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    log.close().await.unwrap();
    drop(log);
    fs.remount("ro");
    let error = match EmbeddedLog::open(&dir, EmbeddedOptions::default()) {
        Ok(_) => panic!("a read-only log opened for writing"),
        Err(error) => error,
    };
    eprintln!("the refusal: {error}");
    assert_eq!(disk_problem(&error), DiskProblem::ReadOnly, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("read-only") && message.contains("refuses to start"),
        "{message}"
    );
    assert!(message.contains(&dir.display().to_string()), "{message}");
    // Made writable again, it opens with the events it had.
    fs.remount("rw");
    let log = EmbeddedLog::open(&dir, EmbeddedOptions::default()).unwrap();
    assert_eq!(all_events(&log).await.len(), 2);
    log.close().await.unwrap();
}

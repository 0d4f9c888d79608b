//! Throughput of the embedded log on this machine: durable appends per second with 1, 8
//! and 64 concurrent writers (64 also with unkeyed command ids), then `read_all` and
//! `verify` events per second.
//!
//! Run: `cargo run --release -p ledger --bin ledger-bench [-- --seconds S --events N]`
//! (`-- --skip-appends --events 10000000` measures issue 7's verify target alone).
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

/// Runs `writers` appenders for `seconds`, each append with a fresh command id that the log
/// remembers (`append`) or only records (`append_unkeyed`); returns appends, elapsed
/// seconds and syncs.
async fn appends(writers: usize, seconds: f64, keyed: bool) -> (u64, f64, u64) {
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
                let (events, command_id) = (vec![event()], Uuid::new_v4());
                if keyed {
                    log.append(&stream, ExpectedRevision::Any, events, command_id)
                        .await
                } else {
                    log.append_unkeyed(&stream, ExpectedRevision::Any, events, command_id)
                        .await
                }
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

/// The rate issue 7 asks of `verify` over a 10,000,000-event log, in events per second.
const VERIFY_TARGET_EVENTS_PER_SECOND: f64 = 2_000_000.0;

/// Events per append while the read log is generated: large appends make generation fast.
const GENERATE_APPEND_EVENTS: usize = 50_000;

/// Streams the generated events are spread over.
const GENERATE_STREAMS: usize = 64;

struct Args {
    seconds: f64,
    events: u64,
    skip_appends: bool,
    walk_only: bool,
    keep: Option<std::path::PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: ledger-bench [--seconds S] [--events N] [--skip-appends] [--keep DIR]\n\
         --seconds S     seconds per writer count of the append runs (default 5)\n\
         --events N      events in the log that read_all and verify walk (default 500000)\n\
         --skip-appends  only generate, read and verify the log\n\
         --walk-only     only the read-only verify walks over the log (with --keep, reruns\n\
                         without opening the log, whose sled index takes long to open)\n\
         --keep DIR      use and keep the log in DIR/log, generating only the events it lacks\n\
                         (for `replay-tool verify --data DIR` and reruns without regenerating)\n\
         A bare number is taken as --seconds, as before."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 5.0,
        events: 500_000,
        skip_appends: false,
        walk_only: false,
        keep: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                usage()
            })
        };
        match a.as_str() {
            "--seconds" => args.seconds = value("--seconds").parse().unwrap_or_else(|_| usage()),
            "--events" => {
                args.events = value("--events")
                    .replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| usage())
            }
            "--skip-appends" => args.skip_appends = true,
            "--walk-only" => {
                args.skip_appends = true;
                args.walk_only = true;
            }
            "--keep" => args.keep = Some(value("--keep").into()),
            other => match other.parse() {
                Ok(seconds) => args.seconds = seconds,
                Err(_) => usage(),
            },
        }
    }
    args
}

/// A phase's wall-clock and process CPU time, started by `Timer::start`.
struct Timer {
    wall: Instant,
    cpu: f64,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// One line: the rate, its ratio to the target, and the CPU seconds the phase used.
    /// On a shared machine the CPU time says more than the wall clock: it shows what the
    /// phase costs, not how long it waited for a core.
    fn line(&self, what: &str, events: u64) -> String {
        let secs = self.wall.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - self.cpu;
        let rate = events as f64 / secs;
        format!(
            "{what:<36} {rate:>10.0} events/s = {:.2} x the 2,000,000/s target \
             ({events} events in {secs:.2} s wall, {cpu:.2} s CPU)",
            rate / VERIFY_TARGET_EVENTS_PER_SECOND
        )
    }
}

/// CPU time (user and system, all threads) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // Linux reports them in USER_HZ, which is 100 on every platform Rust targets.
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let seconds = args.seconds;
    if !args.skip_appends {
        println!(
            "ledger-bench: {PAYLOAD_BYTES}-byte payloads, one event per append, {seconds} s per run"
        );
        for (writers, keyed) in [(1usize, true), (8, true), (64, true), (64, false)] {
            let (n, secs, syncs) = appends(writers, seconds, keyed).await;
            let ids = if keyed { "keyed" } else { "unkeyed" };
            println!(
                "durable appends, {writers:>2} writers, {ids:>7} ids: {:>9.0} appends/s ({n} in \
                 {secs:.2} s, {:.1} appends per fdatasync)",
                n as f64 / secs,
                n as f64 / syncs.max(1) as f64
            );
        }
    }

    // A log of many events, written in large appends, to read and verify.
    let temp = tempfile::tempdir().expect("temp dir");
    let data = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let log_dir = data.join("log");
    let total = args.events;
    if !(args.walk_only && log_dir.exists()) {
        generate(&log_dir, total).await;
    }
    if !args.walk_only {
        open_read_and_verify(&log_dir, total).await;
    }

    // The replay tool's verify reads the segment files read-only through the same walk.
    let timer = Timer::start();
    let walked = read_only_walk(&log_dir.join("segments"), ledger::walk::available_threads());
    assert!(walked.first_break.is_none());
    assert_eq!(walked.events_checked, total);
    println!("{}", timer.line("verify (read-only files):", total));
    let timer = Timer::start();
    let walked = read_only_walk(&log_dir.join("segments"), 1);
    assert_eq!(walked.events_checked, total);
    println!(
        "{}",
        timer.line("verify (read-only files, 1 thread):", total)
    );
    if args.keep.is_some() {
        println!("kept {}: delete it when done", data.display());
    }
}
/// Opens the log (timing the index alone, then the whole open with its chain check), reads
/// it all and verifies it through the API.
async fn open_read_and_verify(log_dir: &std::path::Path, total: u64) {
    let timer = Timer::start();
    let index = IndexStore::open_sled(log_dir.join("index")).expect("index");
    println!("{}", timer.line("open the sled index alone:", total));
    drop(index);

    // Opening checks the whole hash chain (AUD-3), so its time is the start-up cost.
    let timer = Timer::start();
    let log = EmbeddedLog::open(log_dir, EmbeddedOptions::default()).expect("open");
    println!("{}", timer.line("open (checks the whole chain):", total));

    let timer = Timer::start();
    let mut next = 0;
    loop {
        let batch = log.read_all(next, 10_000).await.expect("read_all");
        if batch.is_empty() {
            break;
        }
        next += batch.len() as u64;
    }
    assert_eq!(next, total);
    println!("{}", timer.line("read_all (pages of 10,000):", total));

    let timer = Timer::start();
    let report = log.verify().await.expect("verify");
    assert!(report.first_break.is_none(), "{report:?}");
    assert_eq!(report.events_checked, total);
    println!("{}", timer.line("verify (EventLog::verify):", total));
    log.close().await.expect("close");
}

/// Appends events to the log in `log_dir`, in large appends, until it holds `total`.
async fn generate(log_dir: &std::path::Path, total: u64) {
    let start = Instant::now();
    let log = EmbeddedLog::open(log_dir, EmbeddedOptions::default()).expect("open");
    let before = log.durable_position();
    assert!(
        before <= total,
        "{} holds {before} events, more than --events {total}",
        log_dir.display()
    );
    let mut written = before;
    let mut append_index = 0usize;
    let template = event();
    while written < total {
        let n = (total - written).min(GENERATE_APPEND_EVENTS as u64) as usize;
        let evs = (0..n)
            .map(|_| NewEvent {
                event_id: Uuid::new_v4(),
                ..template.clone()
            })
            .collect();
        log.append(
            &format!("license-R{}", append_index % GENERATE_STREAMS),
            ExpectedRevision::Any,
            evs,
            Uuid::new_v4(),
        )
        .await
        .expect("append");
        written += n as u64;
        append_index += 1;
    }
    log.close().await.expect("close");
    // The index is locked until the last handle is gone.
    drop(log);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "generated {} events in {secs:.1} s ({:.0} events/s; {total} events, {} MiB of segments, in {})",
        total - before,
        (total - before) as f64 / secs,
        dir_bytes(&log_dir.join("segments")) / (1024 * 1024),
        log_dir.display()
    );
}

/// The walk as `replay-tool verify` runs it: segment files opened read-only.
fn read_only_walk(segments: &std::path::Path, threads: usize) -> ledger::walk::WalkOutcome {
    use std::os::unix::fs::FileExt;
    let storage = FsStorage::open(segments).expect("segments");
    let ids = storage.list_segments().expect("list");
    let files: std::collections::HashMap<u64, std::fs::File> = ids
        .iter()
        .map(|&id| {
            let path = segments.join(format!("{id:012}.seg"));
            (id, std::fs::File::open(path).expect("segment"))
        })
        .collect();
    let read = |segment: u64, offset: u64, buf: &mut [u8]| files[&segment].read_at(buf, offset);
    ledger::walk::walk_segments(&ids, &read, u64::MAX, threads).expect("walk")
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

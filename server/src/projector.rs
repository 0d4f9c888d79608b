//! Feeds the projections from the log: catch up from their checkpoint, then follow the log
//! live through its subscription (issue 4). Each batch is applied atomically with the
//! checkpoint (AUD-6), so a crash resumes exactly where it stopped.
//!
//! Positions: the ledger numbers events from 0; the projections, like the API, count from 1
//! so that 0 can mean "nothing yet". `api_position` is the one place that converts.

use std::sync::Arc;

use ledger::{EventLog, RecordedEvent};
use projections::{ProjectedEvent, Projections};

use crate::core::{ActorLabels, CoreError, decode_with};

/// The most events the projector hands to the projections at once. While one hand-over is
/// applied, the next events gather, up to this many: a projector that is far behind (an
/// import of a million rows) hands over many at once, and the projections write them in
/// dense batches with packs (`projections::LiveBudget`); one that keeps up hands over a
/// few. How they are split into atomic batches is the projections' decision: a batch of
/// many licenses still ends at `projections::LIVE_BATCH_EVENTS_MAX` (256) events, since
/// larger plain batches cost more per event (`projections-bench --only spread`: about
/// 19,000 events/s in batches of 200, 12,000 in batches of 1,000).
pub const PROJECTOR_HANDOVER_EVENTS_MAX: usize = projections::LIVE_APPLY_EVENTS_MAX;

/// The position clients see for a ledger position.
pub fn api_position(ledger_position: u64) -> u64 {
    ledger_position + 1
}

/// The ledger position of the first event at or after an API position.
pub fn ledger_position(api_position: u64) -> u64 {
    api_position.saturating_sub(1)
}

/// Stored events as the projections take them, decoded in log order (`ActorLabels`).
pub fn projected_events(recorded: &[RecordedEvent]) -> Result<Vec<ProjectedEvent>, CoreError> {
    let mut labels = ActorLabels::default();
    recorded
        .iter()
        .map(|recorded| projected(recorded, &mut labels))
        .collect()
}

fn projected(
    recorded: &RecordedEvent,
    labels: &mut ActorLabels,
) -> Result<ProjectedEvent, CoreError> {
    let decoded = decode_with(recorded, labels)?;
    Ok(ProjectedEvent {
        position: api_position(recorded.position),
        stream: recorded.stream.clone(),
        revision: recorded.revision,
        recorded_at: recorded.recorded_at,
        actor: decoded.meta.actor,
        event: decoded.event,
    })
}

/// Runs until the server closes or the log's subscription ends, then returns, so that the
/// caller can await it and know the projections are no longer in use. An error stops the
/// projector (and is logged): queries then wait for a position that never comes and answer
/// UNAVAILABLE, which is what an operator should see rather than a wrong answer.
pub async fn run(
    log: Arc<dyn EventLog>,
    projections: Arc<Projections>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let applier = match ApplyThread::start(projections.clone()) {
        Ok(applier) => applier,
        Err(error) => {
            tracing::error!(%error, "the projector could not start its apply thread");
            return;
        }
    };
    tokio::select! {
        _ = closing.wait_for(|closing| *closing) => {}
        result = follow(log, projections, &applier) => {
            if let Err(error) = result {
                tracing::error!(%error, "the projector stopped");
            }
        }
    }
    // Lets a batch being applied finish, so the projections are no longer in use after.
    applier.stop().await;
}

/// The CPU priority (nice value, 19 the lowest) of the thread that applies the live
/// batches. The command path (gRPC, decisions, the log's writer and indexer) keeps the
/// default 0. Under load the projector is behind and would otherwise take a whole core's
/// fair share whatever its cost per event; at 19 it takes what the commands leave.
/// Workload 1 (issue 7, session 9, three interleaved runs each): p99 9.9-12.8 ms against
/// 12.4-13.6 ms at 0, and 14-29% more commands/s. The price is a projection that lags
/// further behind during a burst of writes; queries wait for it (`x-min-position`), and
/// the metrics show the lag.
pub const PROJECTOR_APPLY_NICE: i32 = 19;

type ApplyJob = (
    Vec<RecordedEvent>,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// The answer to a batch handed over to the apply thread.
type Answer = tokio::sync::oneshot::Receiver<Result<(), String>>;

fn apply_thread_stopped() -> String {
    "the projector's apply thread stopped".to_owned()
}

/// The thread that applies the live batches, one at a time, at `PROJECTOR_APPLY_NICE`. A
/// thread of its own rather than tokio's blocking pool, because a lowered priority cannot
/// be raised again without privileges and the pool's threads also serve reads.
struct ApplyThread {
    jobs: Option<std::sync::mpsc::SyncSender<ApplyJob>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ApplyThread {
    fn start(projections: Arc<Projections>) -> std::io::Result<ApplyThread> {
        // One batch at a time: `apply` waits for each answer before it sends the next.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<ApplyJob>(1);
        let handle = std::thread::Builder::new()
            .name("projector-apply".into())
            .spawn(move || {
                lower_priority(PROJECTOR_APPLY_NICE);
                for (batch, answer) in queue {
                    // Decoded here, at the thread's low priority: while workload 1's commands
                    // keep the projector behind, the events it gathers wait undecoded instead
                    // of taking CPU from the commands (workload 1 ran about 5% slower, its
                    // p99 1.5 ms higher, when the gathering decoded them).
                    let result = projected_events(&batch)
                        .map_err(|e| e.to_string())
                        .and_then(|batch| {
                            projections
                                .apply_batch(&batch)
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        });
                    // The projector may have stopped waiting; the batch stands regardless.
                    let _ = answer.send(result);
                }
            })?;
        Ok(ApplyThread {
            jobs: Some(jobs),
            handle: Some(handle),
        })
    }

    /// Hands a batch over; the receiver answers once it is applied. The caller waits for
    /// that answer before it hands over the next one.
    fn submit(&self, batch: Vec<RecordedEvent>) -> Result<Answer, String> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(apply_thread_stopped)?
            .send((batch, answer))
            .map_err(|_| apply_thread_stopped())?;
        Ok(answered)
    }

    async fn stop(mut self) {
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            // A panic in the thread was already reported to the waiting `apply`.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// Lowers the calling thread's CPU priority to `nice`; Linux keeps a nice value per thread.
/// Best effort: where it fails the projector runs at the default priority, as before.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    // SAFETY: `gettid` has no preconditions, and `setpriority` only reads its arguments.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not lower the projector's CPU priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

/// Events read per page while rebuilding a projection generation.
pub const REBUILD_PAGE_EVENTS: usize = 10_000;

/// Issue 4: projections stored by another schema version are rebuilt into a fresh
/// generation from the whole log while the stored one keeps answering, then swapped in.
async fn rebuild_if_needed(
    log: &Arc<dyn EventLog>,
    projections: &Arc<Projections>,
) -> Result<(), String> {
    if !projections.needs_rebuild().map_err(|e| e.to_string())? {
        return Ok(());
    }
    tracing::warn!("projection schema changed: rebuilding from the log");
    let rebuild = Arc::new(projections.begin_rebuild().map_err(|e| e.to_string())?);
    loop {
        let next = ledger_position(rebuild.checkpoint().map_err(|e| e.to_string())? + 1);
        let page = log
            .read_all(next, REBUILD_PAGE_EVENTS)
            .await
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            break;
        }
        let batch = projected_events(&page).map_err(|e| e.to_string())?;
        let writer = rebuild.clone();
        tokio::task::spawn_blocking(move || {
            batch
                .chunks(projections::APPLY_BATCH_EVENTS_MAX)
                .try_for_each(|chunk| writer.apply_batch(chunk).map(|_| ()))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    }
    let rebuild = Arc::try_unwrap(rebuild).map_err(|_| "the rebuild is still in use".to_owned())?;
    projections
        .finish_rebuild(rebuild)
        .map_err(|e| e.to_string())?;
    tracing::info!("projection rebuild swapped in");
    Ok(())
}

async fn follow(
    log: Arc<dyn EventLog>,
    projections: Arc<Projections>,
    applier: &ApplyThread,
) -> Result<(), String> {
    rebuild_if_needed(&log, &projections).await?;
    let checkpoint = projections.checkpoint().map_err(|e| e.to_string())?;
    // The checkpoint is the last applied API position, which is the next ledger position.
    let mut subscription = log
        .subscribe_all(checkpoint)
        .await
        .map_err(|e| e.to_string())?;
    // One batch is applied while the next gathers: a projector that keeps up hands each
    // event over as it comes, one that is behind hands over all that came meanwhile.
    let mut gathering: Vec<RecordedEvent> = Vec::new();
    let mut applying: Option<Answer> = None;
    let mut log_closed = false;
    loop {
        if applying.is_none() && !gathering.is_empty() {
            applying = Some(applier.submit(std::mem::take(&mut gathering))?);
        }
        if log_closed && applying.is_none() {
            return Ok(());
        }
        tokio::select! {
            biased;
            answer = async { applying.as_mut().expect("guarded by the condition").await },
                if applying.is_some() =>
            {
                applying = None;
                answer.map_err(|_| apply_thread_stopped())??;
            }
            next = subscription.next(),
                if !log_closed && gathering.len() < PROJECTOR_HANDOVER_EVENTS_MAX =>
            {
                match next {
                    Some(event) => gathering.push(event.map_err(|e| e.to_string())?),
                    None => log_closed = true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::core::CommandIds;
    use chrono::{DateTime, Utc};
    use domain::{Actor, AdminChannel, Email, LicenseCommand, LicenseId, LicenseType, Secret};
    use projections::Projections;

    use super::*;
    use crate::clock::ManualClock;
    use crate::core::Core;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn projections_of_another_schema_version_are_rebuilt_and_swapped_in() {
        // AUD-5, issue 4: a schema change rebuilds a fresh generation from the log.
        let dir = tempfile::tempdir().unwrap();
        let (embedded, log) = crate::core::tests::embedded_log(dir.path());
        let core = Core::open(
            log.clone(),
            Arc::new(ManualClock::new(at("2026-09-01T00:00:00Z"))),
        )
        .await
        .unwrap();
        let issue = LicenseCommand::Issue {
            license: LicenseId::parse("L1").unwrap(),
            license_type: LicenseType::School,
            seats: 5,
            valid_from: at("2026-08-01T00:00:00Z"),
            valid_until: at("2027-07-31T23:59:59Z"),
            admins: vec![Email::parse("admin@north.edu").unwrap()],
            key: Secret::new("k".repeat(24)).unwrap(),
            link: Secret::new("l".repeat(24)).unwrap(),
        };
        core.execute_license("L1", &Actor::Staff, &issue, CommandIds::fresh())
            .await
            .unwrap();
        let add = LicenseCommand::AddUsers {
            emails: vec![
                Email::parse("a@north.edu").unwrap(),
                Email::parse("b@north.edu").unwrap(),
            ],
            channel: AdminChannel::EmailList,
        };
        core.execute_license("L1", &Actor::Staff, &add, CommandIds::fresh())
            .await
            .unwrap();
        let events = projected_events(&log.read_all(0, 100).await.unwrap()).unwrap();
        let projections_dir = dir.path().join("projections");
        {
            let older = Projections::open_with_schema_version(&projections_dir, 0).unwrap();
            // The older generation only saw the license being issued.
            older.apply_batch(&events[..1]).unwrap();
        }
        let projections = Arc::new(Projections::open(&projections_dir).unwrap());
        assert!(projections.needs_rebuild().unwrap());
        rebuild_if_needed(&log, &projections).await.unwrap();
        assert!(!projections.needs_rebuild().unwrap());
        let view = projections
            .get_license(&LicenseId::parse("L1").unwrap(), at("2026-09-02T00:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(
            view.users_count, 2,
            "the rebuilt generation saw the whole log"
        );
        let fresh = Projections::open_temporary().unwrap();
        fresh.apply_batch(&events).unwrap();
        assert_eq!(projections.digest().unwrap(), fresh.digest().unwrap());
        drop(core);
        embedded.close().await.unwrap();
    }

    /// The nice values of this process's threads called `name`.
    #[cfg(target_os = "linux")]
    fn nice_of_threads(name: &str) -> Vec<i32> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
                continue;
            };
            if comm.trim_end() != name {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // After "pid (comm) " come the fields from the third on; nice is the 19th.
            let fields: Vec<&str> = stat[stat.rfind(") ").unwrap() + 2..]
                .split_whitespace()
                .collect();
            nice.push(fields[19 - 3].parse().unwrap());
        }
        nice
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_batches_are_applied_on_a_thread_of_lower_cpu_priority() {
        // Issue 7: the projector's applies yield to the command path.
        let dir = tempfile::tempdir().unwrap();
        let projections = Arc::new(Projections::open(dir.path().join("projections")).unwrap());
        let applier = ApplyThread::start(projections.clone()).unwrap();
        // The thread lowers its priority before it takes its first batch.
        applier.submit(Vec::new()).unwrap().await.unwrap().unwrap();
        let nice = nice_of_threads("projector-apply");
        assert!(!nice.is_empty(), "the apply thread runs");
        assert!(
            nice.iter().all(|&n| n == PROJECTOR_APPLY_NICE),
            "nice values {nice:?}"
        );
        assert_eq!(projections.checkpoint().unwrap(), 0);
        applier.stop().await;
    }
}

//! `rebuild` and `digest` (AUD-5): replay the log from position 0 into a fresh projection
//! generation, compare its digests with the live ones, and swap it in.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ledger::RecordedEvent;
use projections::{ProjectedEvent, ProjectionError, Projections, ReadModelDigest};
use serde::Serialize;

use crate::error::{Failure, Result};
use crate::source::{Source, in_use_message, is_lock_error};

/// One read model's digest, as printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Digest {
    pub read_model: String,
    pub sha256: String,
}

pub fn digests(list: &[ReadModelDigest]) -> Vec<Digest> {
    list.iter()
        .map(|d| Digest {
            read_model: d.read_model.to_owned(),
            sha256: d.to_hex(),
        })
        .collect()
}

pub fn render_digests(checkpoint: u64, list: &[Digest]) -> String {
    let mut out = format!("checkpoint {checkpoint}\n");
    for d in list {
        out.push_str(&format!("{:<24} {}\n", d.read_model, d.sha256));
    }
    out
}

/// The projections of a server data directory, if it has any. Refuses when locked.
pub fn open_live(data: &Path) -> Result<Option<Projections>> {
    let dir = data.join("projections");
    if !dir.is_dir() {
        return Ok(None);
    }
    crate::source::retry_while_locked(data, || {
        Projections::open(&dir).map(Some).map_err(|e| {
            let m = e.to_string();
            if is_lock_error(&m) {
                Failure::usage(in_use_message(data))
            } else {
                Failure::usage(format!(
                    "cannot open the projections at {}: {m}",
                    dir.display()
                ))
            }
        })
    })
}

fn projection_failure(e: ProjectionError) -> Failure {
    Failure::usage(format!("projection error: {e}"))
}

/// Stored events as the projector feeds them (API position = ledger position + 1).
pub fn projected(events: &[RecordedEvent]) -> Result<Vec<ProjectedEvent>> {
    server::projector::projected_events(events).map_err(|err| Failure::failed(err.to_string()))
}

/// A carriage-return progress line on stderr: events done, events/s, ETA.
pub struct Progress {
    started: Instant,
    last: Instant,
    total: Option<u64>,
    done: u64,
    enabled: bool,
}

impl Progress {
    pub fn new(total: Option<u64>, enabled: bool) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now - Duration::from_secs(1),
            total,
            done: 0,
            enabled,
        }
    }

    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        self.done as f64 / secs
    }

    pub fn line(&self) -> String {
        let rate = self.rate();
        match self.total {
            Some(total) if total > 0 => {
                let pct = self.done as f64 * 100.0 / total as f64;
                let left = total.saturating_sub(self.done) as f64;
                let eta = if rate > 0.0 { left / rate } else { 0.0 };
                let width = 30usize;
                let filled = ((pct / 100.0) * width as f64).round() as usize;
                format!(
                    "[{}{}] {}/{} events  {:.0} events/s  ETA {:.0}s",
                    "#".repeat(filled.min(width)),
                    "-".repeat(width - filled.min(width)),
                    self.done,
                    total,
                    rate,
                    eta
                )
            }
            _ => format!("{} events  {:.0} events/s", self.done, rate),
        }
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            eprint!("\r{}   ", self.line());
            let _ = std::io::stderr().flush();
        }
    }

    pub fn finish(&self) {
        if self.enabled {
            eprintln!("\r{}   ", self.line());
        }
    }
}

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RebuildOutcome {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// The live projections' checkpoint when the rebuild started, if there were live ones.
    pub live_checkpoint: Option<u64>,
    /// The rebuilt digests at the live checkpoint (where the comparison is made).
    pub rebuilt_at_live: Vec<Digest>,
    pub live: Option<Vec<Digest>>,
    /// Read models whose digests differ (AUD-5 says: none).
    pub differing: Vec<String>,
    /// The live projections were built by another projection schema version: another
    /// layout, whose digests say nothing about the log, so they were not compared.
    pub live_schema_outdated: bool,
    /// The rebuilt digests at the end of the log.
    pub rebuilt: Vec<Digest>,
    /// Whether the rebuilt generation now answers queries.
    pub swapped: bool,
}

impl RebuildOutcome {
    pub fn render(&self) -> String {
        let mut out = format!(
            "rebuilt {} events in {:.2}s ({:.0} events/s)\n",
            self.events, self.seconds, self.events_per_second
        );
        match (&self.live, self.live_checkpoint) {
            _ if self.live_schema_outdated => {
                out.push_str(
                    "the live projections were built by another projection schema version \
                     (an older or newer binary); their layout differs, so they are not \
                     compared, and a rebuild replaces them; rebuilt digests:\n",
                );
                out.push_str(&render_digests(self.events, &self.rebuilt));
            }
            (Some(live), Some(cp)) => {
                out.push_str(&format!(
                    "compared with the live projections at checkpoint {cp}:\n"
                ));
                for (r, l) in self.rebuilt_at_live.iter().zip(live) {
                    let mark = if r.sha256 == l.sha256 {
                        "equal"
                    } else {
                        "DIFFERENT"
                    };
                    out.push_str(&format!(
                        "  {:<24} {:<9} rebuilt {} live {}\n",
                        r.read_model, mark, r.sha256, l.sha256
                    ));
                }
                if self.differing.is_empty() {
                    out.push_str("all digests equal (AUD-5)\n");
                } else {
                    out.push_str(&format!(
                        "digests differ for: {} (the live projections disagree with the log)\n",
                        self.differing.join(", ")
                    ));
                }
            }
            _ => {
                out.push_str("no live projections to compare with; rebuilt digests:\n");
                out.push_str(&render_digests(self.events, &self.rebuilt));
            }
        }
        if self.swapped {
            out.push_str("the rebuilt projections now answer queries\n");
        }
        out
    }
}

/// How many decoded pages of the log the reader of a rebuild may be ahead of its fold.
const DECODED_PAGES_AHEAD_MAX: usize = 4;

/// What the fold stage of a rebuild hands back.
struct Applied {
    rebuild: projections::Rebuild,
    /// The digests at the live checkpoint, once the fold passed it.
    rebuilt_at_live: Option<Vec<Digest>>,
    events: u64,
    progress: Progress,
}

/// The digests of what a rebuild has applied so far.
fn rebuilt_digests(rebuild: &projections::Rebuild) -> Result<Vec<Digest>> {
    rebuild
        .digest()
        .map(|d| digests(&d))
        .map_err(projection_failure)
}

/// The fold stage of `rebuild`: applies the decoded pages in order, and takes the digests
/// when it reaches the live checkpoint (AUD-5 compares there).
fn apply_pages(
    rebuild: projections::Rebuild,
    pages: &std::sync::mpsc::Receiver<Vec<ProjectedEvent>>,
    live_checkpoint: Option<u64>,
    mut progress: Progress,
) -> Result<Applied> {
    let apply = |rebuild: &projections::Rebuild, batch: &[ProjectedEvent]| -> Result<()> {
        // A log page may hold more events than one projection batch takes.
        for chunk in batch.chunks(projections::APPLY_BATCH_EVENTS_MAX) {
            rebuild.apply_batch(chunk).map_err(projection_failure)?;
        }
        Ok(())
    };
    let mut rebuilt_at_live = if live_checkpoint == Some(0) {
        Some(rebuilt_digests(&rebuild)?)
    } else {
        None
    };
    let mut events = 0u64;
    for page in pages {
        let at_live = live_checkpoint
            .filter(|_| rebuilt_at_live.is_none())
            .and_then(|checkpoint| page.iter().position(|e| e.position == checkpoint));
        match at_live {
            Some(index) => {
                apply(&rebuild, &page[..=index])?;
                rebuilt_at_live = Some(rebuilt_digests(&rebuild)?);
                apply(&rebuild, &page[index + 1..])?;
            }
            None => apply(&rebuild, &page)?,
        }
        events += page.len() as u64;
        progress.advance(page.len() as u64);
    }
    Ok(Applied {
        rebuild,
        rebuilt_at_live,
        events,
        progress,
    })
}

/// Options of `rebuild`.
#[derive(Clone, Debug, Default)]
pub struct RebuildOptions {
    /// Compare only: leave the live projections as they are.
    pub compare_only: bool,
    pub progress: bool,
}

/// Rebuilds every projection from position 0. With `live`, the rebuild is a new generation
/// of it: compared at the live checkpoint, then fed to the end of the log and swapped in
/// (unless `compare_only`). Without, it rebuilds into a temporary store and reports digests.
pub async fn rebuild(
    source: &Source,
    live: Option<&Projections>,
    options: &RebuildOptions,
) -> Result<RebuildOutcome> {
    let started = Instant::now();
    let progress = Progress::new(source.head_hint(), options.progress);
    // Without live projections the rebuild goes into a temporary store; either way it is a
    // rebuild generation, which folds whole chunks of the log in memory (docs/projections.md).
    let temporary;
    let rebuild = match live {
        Some(p) => p.begin_rebuild(),
        None => {
            temporary = Projections::open_temporary().map_err(projection_failure)?;
            temporary.begin_rebuild()
        }
    }
    .map_err(projection_failure)?;
    // Projections of another schema version have another layout: they are rebuilt and
    // swapped, but comparing their digests would report every read model as different.
    let live_schema_outdated = match live {
        Some(p) => p.needs_rebuild().map_err(projection_failure)?,
        None => false,
    };
    let compared = live.filter(|_| !live_schema_outdated);
    let live_checkpoint = match compared {
        Some(p) => Some(p.checkpoint().map_err(projection_failure)?),
        None => None,
    };
    let live_digests = match compared {
        Some(p) => Some(digests(&p.digest().map_err(projection_failure)?)),
        None => None,
    };
    // Two stages: this task reads and decodes the log's pages, a blocking thread folds
    // them, at most `DECODED_PAGES_AHEAD_MAX` pages apart. Reading and decoding are about
    // a third of a rebuild's work; in line with the fold they would add to its time.
    let (pages, decoded) = std::sync::mpsc::sync_channel(DECODED_PAGES_AHEAD_MAX);
    let applier = tokio::task::spawn_blocking(move || {
        apply_pages(rebuild, &decoded, live_checkpoint, progress)
    });
    let mut events = 0u64;
    let scanned = source
        .scan(|page| {
            let batch = projected(page)?;
            events += page.len() as u64;
            // A closed channel means the applier stopped at an error, reported below.
            Ok(pages.send(batch).is_ok())
        })
        .await;
    drop(pages);
    let applied = match applier.await {
        Ok(applied) => applied,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => {
            return Err(Failure::failed(format!(
                "the rebuild's applier stopped: {error}"
            )));
        }
    };
    let Applied {
        rebuild,
        rebuilt_at_live,
        events: applied_events,
        progress,
    } = applied?;
    scanned?;
    assert_eq!(
        applied_events, events,
        "the applier folds every event the scan decoded"
    );
    progress.finish();
    let rebuilt = rebuilt_digests(&rebuild)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut differing = Vec::new();
    if let (Some(l), Some(cp)) = (&live_digests, live_checkpoint) {
        let Some(at_live) = &rebuilt_at_live else {
            return Err(Failure::failed(format!(
                "the live projections are at position {cp}, beyond the log's end ({events} events): they were built from another log"
            )));
        };
        for (r, l) in at_live.iter().zip(l) {
            if r.sha256 != l.sha256 {
                differing.push(r.read_model.clone());
            }
        }
    }
    let mut swapped = false;
    if let Some(p) = live
        && !options.compare_only
    {
        p.finish_rebuild(rebuild).map_err(projection_failure)?;
        swapped = true;
    }
    Ok(RebuildOutcome {
        events,
        seconds,
        events_per_second: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
        live_checkpoint,
        rebuilt_at_live: rebuilt_at_live.unwrap_or_default(),
        live: live_digests,
        differing,
        live_schema_outdated,
        rebuilt,
        swapped,
    })
}

/// The digests of the projections `p` and their checkpoint.
pub fn live_digests(p: &Projections) -> Result<(u64, Vec<Digest>)> {
    Ok((
        p.checkpoint().map_err(projection_failure)?,
        digests(&p.digest().map_err(projection_failure)?),
    ))
}

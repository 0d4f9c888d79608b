//! The command line (clap derive) and the dispatch to the subcommands. `run` writes the
//! answer to `out` and returns the exit code, so tests call it directly.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::chart;
use crate::error::{EXIT_FAILED, EXIT_OK, Failure, Result};
use crate::rebuild::{self, RebuildOptions};
use crate::replay::{self, Moment, Subject};
use crate::source::{Origin, Source};
use crate::verify;

#[derive(Debug, Parser)]
#[command(
    name = "replay-tool",
    version,
    about = "Replay the license ledger: verify its hash chains, see a license as it stood, read \
             histories, export, rebuild projections, print digests, chart seat use.",
    after_help = "Sources (choose one): --data DIR (the server's data directory, server stopped), \
                  --server ADDR --token T (the running server's event feed), --kurrentdb URL.\n\
                  Positions are the ones the API shows (the first event is 1).\n\
                  Exit codes: 0 ok, 1 verification failed or digests differ, 2 usage or I/O error."
)]
pub struct Cli {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// The server's data directory (holding log/ and projections/); the server must be stopped.
    #[arg(long, global = true, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// A running server's gRPC address, read through its event feed (needs --token).
    #[arg(long, global = true, value_name = "ADDR")]
    pub server: Option<String>,
    /// A staff or system token for --server.
    #[arg(long, global = true, env = "REPLAY_TOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A KurrentDB connection string (builds with `--features kurrentdb` only).
    #[arg(long, global = true, value_name = "URL")]
    pub kurrentdb: Option<String>,
    /// With --server: the feed is taken as fully read after this long without an event.
    #[arg(long, global = true, value_name = "MS", default_value_t = 1500)]
    pub idle_ms: u64,
}

impl SourceArgs {
    pub fn origin(&self) -> Result<Origin> {
        let chosen = [
            self.data.is_some(),
            self.server.is_some(),
            self.kurrentdb.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen != 1 {
            return Err(Failure::usage(
                "choose exactly one source: --data DIR, --server ADDR --token T, or --kurrentdb URL",
            ));
        }
        if let Some(dir) = &self.data {
            return Ok(Origin::Data(dir.clone()));
        }
        if let Some(addr) = &self.server {
            let token = self.token.clone().ok_or_else(|| {
                Failure::usage(
                    "--server needs --token T (a staff or system token), or REPLAY_TOOL_TOKEN",
                )
            })?;
            return Ok(Origin::Server {
                addr: addr.clone(),
                token,
                idle: Duration::from_millis(self.idle_ms.max(1)),
            });
        }
        Ok(Origin::KurrentDb(self.kurrentdb.clone().expect("chosen")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("moment").args(["at", "position"])))]
pub struct MomentArgs {
    /// A time: RFC 3339, or a date meaning 00:00 UTC (events at that time are included).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// An API position (the event at it is included).
    #[arg(long, value_name = "N")]
    pub position: Option<u64>,
}

impl MomentArgs {
    fn moment(&self) -> Result<Moment> {
        match (&self.at, self.position) {
            (Some(t), None) => Ok(Moment::At(replay::parse_time(t)?)),
            (None, Some(p)) => Ok(Moment::Position(p)),
            _ => Ok(Moment::Now),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Walk every hash chain and every stream's revisions (AUD-3); exit 1 naming the first
    /// broken event.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// The license as it stood at a time or position: seat counts and members.
    AsOf {
        #[arg(long, value_name = "L")]
        license: String,
        #[command(flatten)]
        moment: MomentArgs,
        #[arg(long)]
        json: bool,
    },
    /// The events of a license or a user, oldest first, with time, actor and change.
    #[command(group(ArgGroup::new("subject").required(true).args(["license", "user"])))]
    History {
        #[arg(long, value_name = "L")]
        license: Option<String>,
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// JSON Lines instead of a table.
        #[arg(long)]
        jsonl: bool,
    },
    /// Export the log (events in [--from, --to)), or with --license the members at a moment.
    Export {
        #[arg(long, value_enum)]
        format: Format,
        /// Inclusive start: an API position or a time.
        #[arg(long, value_name = "POS|TIME", conflicts_with = "license")]
        from: Option<String>,
        /// Exclusive end: an API position or a time.
        #[arg(long, value_name = "POS|TIME", conflicts_with = "license")]
        to: Option<String>,
        /// Export this license's members (at --at/--position, default: now) instead of the log.
        #[arg(long, value_name = "L")]
        license: Option<String>,
        #[command(flatten)]
        moment: MomentArgs,
    },
    /// Rebuild every projection from position 0 and compare digests with the live ones (AUD-5).
    Rebuild {
        /// Compare only: do not swap the rebuilt projections in.
        #[arg(long)]
        compare_only: bool,
        /// No progress line on stderr.
        #[arg(long)]
        no_progress: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the projections' digests, to compare two deployments.
    Digest {
        /// Compute them by replaying the log into a temporary store instead of reading the
        /// live projections.
        #[arg(long)]
        replay: bool,
        #[arg(long)]
        json: bool,
    },
    /// Draw seat use over time (accepted, invited, waitlisted against the seat line) as SVG.
    Chart {
        #[arg(long, value_name = "L")]
        license: String,
        /// Start (default: the license's first event).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// End (default: now, or the last event if later).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
    },
}

fn json<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    s
}

/// Runs a parsed command line, writing its answer to `out`. Returns the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<u8> {
    let origin = cli.source.origin()?;
    let text = match cli.command {
        Command::Verify { json: as_json } => {
            let outcome = match &origin {
                Origin::Data(dir) => {
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || verify::verify_data_dir(&dir))
                        .await
                        .map_err(|e| Failure::usage(e.to_string()))??
                }
                Origin::Server { .. } => {
                    return Err(Failure::usage(
                        "verify needs the stored hashes, which the event feed does not carry; \
                         run it with --data DIR on a stopped server (or a copy of its data \
                         directory), or with --kurrentdb URL",
                    ));
                }
                Origin::KurrentDb(_) => {
                    let source = Source::open(&origin).await?;
                    let Source::Log { log, .. } = &source else {
                        unreachable!("kurrentdb is a log")
                    };
                    let outcome = verify::verify_log(log.as_ref()).await?;
                    source.close().await?;
                    outcome
                }
            };
            let text = if as_json {
                json(&outcome)
            } else {
                match &outcome.first_break {
                    None => format!(
                        "intact: {} events in {} streams checked (AUD-3)\n",
                        outcome.events_checked, outcome.streams_checked
                    ),
                    Some(b) => format!(
                        "BROKEN: {b}\n({} events before it were intact)\n",
                        outcome.events_checked
                    ),
                }
            };
            out.write_all(text.as_bytes())?;
            return Ok(if outcome.is_intact() {
                EXIT_OK
            } else {
                EXIT_FAILED
            });
        }
        Command::AsOf {
            license,
            moment,
            json: as_json,
        } => {
            let moment = moment.moment()?;
            let source = Source::open(&origin).await?;
            let result = replay::as_of(&source, &license, moment).await;
            source.close().await?;
            let a = result?;
            if as_json {
                json(&a)
            } else {
                replay::render_as_of(&a)
            }
        }
        Command::History {
            license,
            user,
            jsonl,
        } => {
            let subject = match (license, user) {
                (Some(l), _) => Subject::License(l),
                (None, Some(u)) => Subject::User(u),
                (None, None) => return Err(Failure::usage("give --license L or --user EMAIL")),
            };
            let source = Source::open(&origin).await?;
            let result = replay::history(&source, &subject).await;
            source.close().await?;
            let rows = result?;
            if jsonl {
                replay::jsonl(&rows)
            } else {
                replay::render_history(&rows)
            }
        }
        Command::Export {
            format,
            from,
            to,
            license,
            moment,
        } => {
            let from = from.as_deref().map(replay::parse_bound).transpose()?;
            let to = to.as_deref().map(replay::parse_bound).transpose()?;
            let moment = moment.moment()?;
            let source = Source::open(&origin).await?;
            let text = match &license {
                Some(l) => replay::as_of(&source, l, moment)
                    .await
                    .map(|a| match format {
                        Format::Jsonl => replay::jsonl(&a.members),
                        Format::Csv => replay::members_csv(&a.members),
                    }),
                None if moment != Moment::Now => Err(Failure::usage(
                    "--at and --position go with --license; for the log use --from and --to",
                )),
                None => replay::export_log(&source, from, to)
                    .await
                    .map(|rows| match format {
                        Format::Jsonl => replay::jsonl(&rows),
                        Format::Csv => replay::export_rows_csv(&rows),
                    }),
            };
            source.close().await?;
            text?
        }
        Command::Rebuild {
            compare_only,
            no_progress,
            json: as_json,
        } => {
            let source = Source::open(&origin).await?;
            let live = match &origin {
                Origin::Data(dir) => match rebuild::open_live(dir) {
                    Ok(l) => l,
                    Err(e) => {
                        source.close().await?;
                        return Err(e);
                    }
                },
                _ => None,
            };
            if !source.is_complete() {
                eprintln!(
                    "note: the event feed hides license keys and join links, so the key and link \
                     read models cannot match a live deployment's"
                );
            }
            let options = RebuildOptions {
                compare_only,
                progress: !no_progress,
            };
            let result = rebuild::rebuild(&source, live.as_ref(), &options).await;
            drop(live);
            source.close().await?;
            let outcome = result?;
            let text = if as_json {
                json(&outcome)
            } else {
                outcome.render()
            };
            out.write_all(text.as_bytes())?;
            return Ok(if outcome.differing.is_empty() {
                EXIT_OK
            } else {
                EXIT_FAILED
            });
        }
        Command::Digest {
            replay: by_replay,
            json: as_json,
        } => {
            let (checkpoint, digests) = if by_replay {
                let source = Source::open(&origin).await?;
                if !source.is_complete() {
                    eprintln!(
                        "note: the event feed hides license keys and join links, so the key and \
                         link digests differ from the deployment's own"
                    );
                }
                let options = RebuildOptions {
                    compare_only: true,
                    progress: false,
                };
                let result = rebuild::rebuild(&source, None, &options).await;
                source.close().await?;
                let o = result?;
                (o.events, o.rebuilt)
            } else {
                let Origin::Data(dir) = &origin else {
                    return Err(Failure::usage(
                        "the live digests are read from --data DIR; through --server or \
                         --kurrentdb use `digest --replay`",
                    ));
                };
                let live = rebuild::open_live(dir)?.ok_or_else(|| {
                    Failure::usage(format!(
                        "no projections at {}/projections; use `digest --replay` to compute them from the log",
                        dir.display()
                    ))
                })?;
                rebuild::live_digests(&live)?
            };
            if as_json {
                json(&serde_json::json!({ "checkpoint": checkpoint, "digests": digests }))
            } else {
                rebuild::render_digests(checkpoint, &digests)
            }
        }
        Command::Chart {
            license,
            from,
            to,
            out: path,
        } => {
            let from = from.as_deref().map(replay::parse_time).transpose()?;
            let to = to.as_deref().map(replay::parse_time).transpose()?;
            let source = Source::open(&origin).await?;
            let result = source.read_stream(&replay::license_stream(&license)).await;
            source.close().await?;
            let events = result?;
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                return Err(Failure::usage(format!("no license '{license}' in the log")));
            };
            let from = from.unwrap_or(first.recorded_at);
            let to = to.unwrap_or_else(|| chrono::Utc::now().max(last.recorded_at));
            if to <= from {
                return Err(Failure::usage("--to must be after --from"));
            }
            let samples = chart::seat_samples(&events, from, to)?;
            chart::draw(&license, &samples, &path)?;
            format!(
                "wrote {} ({} points from {} to {})\n",
                path.display(),
                samples.len(),
                from.to_rfc3339(),
                to.to_rfc3339()
            )
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(EXIT_OK)
}

/// Parses `args` and runs them; what `main` does, for tests. Returns the exit code and
/// prints failures to stderr.
pub async fn run_args<I, T>(args: I, out: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => match run(cli, out).await {
            Ok(code) => code,
            Err(f) => {
                eprintln!("replay-tool: {f}");
                f.code
            }
        },
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                crate::error::EXIT_USAGE
            } else {
                EXIT_OK
            }
        }
    }
}

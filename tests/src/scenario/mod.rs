//! The scenario runner: plays FORMAT.md's JSON files end to end. Every file gets a fresh
//! ledger (temporary data directory, in-process server on a loopback port, manual clock)
//! and real gRPC clients; the first step whose answer does not match fails the file.
//!
//! The API: [`run_file`] plays one file and answers an [`Outcome`] (printed as `PASS name`
//! or `FAIL name` with the failing step); [`run_paths`] plays the files and folders the
//! binary is given and answers the [`Summary`]; [`run_scenario`] plays an already parsed
//! [`Scenario`]. The pieces are public for their tests: [`matching`] (FORMAT.md's rules),
//! [`placeholders`], [`calls`] (JSON to requests) and [`answers`] (replies to JSON).

pub mod answers;
pub mod calls;
pub mod file;
pub mod ledger;
pub mod matching;
pub mod placeholders;
pub mod session;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

pub use file::{FileError, Scenario, code_name};
pub use matching::{Mismatch, matches};

use file::{CallStep, Step};
use ledger::Ledger;
use session::{Session, Trouble};

/// The longest one step may take, placeholder reads and every ListUsers page included.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a server that a call found gone to report why it stopped.
const STOPPING_WAIT: Duration = Duration::from_secs(2);

/// Why a file failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The file cannot be read or does not follow FORMAT.md.
    Invalid(FileError),
    /// A step's answer did not match what it expects.
    Step(StepFailure),
    /// The server did not start, stopped by itself, or did not shut down cleanly.
    Server { step: Option<usize>, reason: String },
}

/// The first failing step: its index (from 0, as in the file's `steps`), the request as
/// sent, what was expected, what came back, and where they differ.
#[derive(Clone, Debug, PartialEq)]
pub struct StepFailure {
    pub index: usize,
    pub request: Value,
    pub expected: Value,
    pub actual: String,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(error) => write!(f, "  invalid file: {error}"),
            Self::Step(step) => write!(
                f,
                "  step {}: {}\n  expected: {}\n  actual: {}\n  why: {}",
                step.index, step.request, step.expected, step.actual, step.reason
            ),
            Self::Server {
                step: Some(index),
                reason,
            } => write!(f, "  step {index}: {reason}"),
            Self::Server { step: None, reason } => write!(f, "  {reason}"),
        }
    }
}

/// One file's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub path: PathBuf,
    /// The file's `name`, or its path when it has none that can be read.
    pub name: String,
    pub failure: Option<Failure>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// `PASS name`, or `FAIL name` and the failure's lines (the file's path first).
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(f, "PASS {}", self.name),
            Some(failure) => write!(
                f,
                "FAIL {}\n  file: {}\n{failure}",
                self.name,
                self.path.display()
            ),
        }
    }
}

/// The counts of the last line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

impl Summary {
    /// FORMAT.md's exit rule: success only when nothing failed and something passed.
    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// The files the runner's arguments name: each a `.json` file or a folder whose `.json`
/// files are taken in name order. A path that is neither becomes a failing entry.
pub fn scenario_files(paths: &[PathBuf]) -> Vec<Result<PathBuf, Outcome>> {
    let mut files = Vec::new();
    for path in paths {
        let unreadable = |reason: String| Outcome {
            path: path.clone(),
            name: path.display().to_string(),
            failure: Some(Failure::Invalid(FileError { step: None, reason })),
        };
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Err(error) => {
                    files.push(Err(unreadable(format!("cannot read the folder: {error}"))))
                }
                Ok(entries) => {
                    let mut found = Vec::new();
                    for entry in entries {
                        match entry {
                            Ok(entry) if is_json(&entry.path()) => found.push(entry.path()),
                            Ok(_) => {}
                            Err(error) => {
                                files.push(Err(unreadable(format!(
                                    "cannot list the folder: {error}"
                                ))));
                            }
                        }
                    }
                    found.sort();
                    files.extend(found.into_iter().map(Ok));
                }
            }
        } else if !path.exists() {
            files.push(Err(unreadable("no such file or folder".into())));
        } else if is_json(path) {
            files.push(Ok(path.clone()));
        } else {
            files.push(Err(unreadable("not a .json file or a folder".into())));
        }
    }
    files
}

fn is_json(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|extension| extension == "json")
}

/// Plays every file the paths name, one after another, handing each outcome to `report`
/// as soon as it is known.
pub async fn run_paths(paths: &[PathBuf], mut report: impl FnMut(&Outcome)) -> Summary {
    let mut summary = Summary::default();
    for file in scenario_files(paths) {
        let outcome = match file {
            Ok(path) => run_file(&path).await,
            Err(outcome) => outcome,
        };
        if outcome.passed() {
            summary.passed += 1;
        } else {
            summary.failed += 1;
        }
        report(&outcome);
    }
    summary
}

/// Reads and plays one file against a fresh ledger.
pub async fn run_file(path: &Path) -> Outcome {
    let fallback_name = path.display().to_string();
    let outcome = |name: String, failure: Option<Failure>| Outcome {
        path: path.to_owned(),
        name,
        failure,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let reason = format!("cannot read the file: {error}");
            return outcome(
                fallback_name,
                Some(Failure::Invalid(FileError { step: None, reason })),
            );
        }
    };
    match Scenario::parse(&text) {
        Err(error) => {
            // A file that breaks the format may still say its name; use it when it does.
            let name = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|file| file.get("name")?.as_str().map(str::to_owned))
                .unwrap_or(fallback_name);
            outcome(name, Some(Failure::Invalid(error)))
        }
        Ok(scenario) => {
            let failure = run_scenario(&scenario).await.err();
            outcome(scenario.name, failure)
        }
    }
}

/// Plays a parsed scenario against a fresh ledger, stops the server, and removes its data.
/// The first failing step ends the file; a server that then fails to shut down cleanly is
/// reported only when every step passed.
pub async fn run_scenario(scenario: &Scenario) -> Result<(), Failure> {
    let mut ledger = Ledger::start(scenario.start)
        .await
        .map_err(|reason| Failure::Server { step: None, reason })?;
    let mut session = Session::new(&ledger);
    let played = play_steps(scenario, &mut ledger, &mut session).await;
    // The clients go first, so that no open connection holds up the graceful shutdown.
    drop(session);
    let stopped = ledger.stop().await;
    played?;
    stopped.map_err(|reason| Failure::Server { step: None, reason })
}

async fn play_steps(
    scenario: &Scenario,
    ledger: &mut Ledger,
    session: &mut Session,
) -> Result<(), Failure> {
    for (index, step) in scenario.steps.iter().enumerate() {
        let played = tokio::select! {
            // A server that has stopped explains every later failure, so it is checked first.
            biased;
            reason = ledger.stopped() => return Err(Failure::Server { step: Some(index), reason }),
            played = tokio::time::timeout(STEP_TIMEOUT, play_step(index, step, session)) => played,
        };
        let failure = match played {
            Ok(Ok(())) => continue,
            Ok(Err(failure)) => failure,
            Err(_) => Failure::Step(StepFailure {
                index,
                request: describe_step(step),
                expected: describe_expectation(step),
                actual: format!("no answer within {} s", STEP_TIMEOUT.as_secs()),
                reason: "the step timed out".into(),
            }),
        };
        // A call that found the port closed usually means the server is going down: say
        // why, rather than only "unavailable".
        if (ledger.has_stopped() || is_unavailable(&failure))
            && let Some(reason) = ledger.stopped_within(STOPPING_WAIT).await
        {
            return Err(Failure::Server {
                step: Some(index),
                reason,
            });
        }
        return Err(failure);
    }
    Ok(())
}

fn is_unavailable(failure: &Failure) -> bool {
    matches!(failure, Failure::Step(step) if step.actual.starts_with(code_name(tonic::Code::Unavailable)))
}

fn describe_step(step: &Step) -> Value {
    match step {
        Step::Let { bindings, .. } => {
            let bindings: serde_json::Map<String, Value> = bindings
                .iter()
                .map(|(name, value)| (name.clone(), json!(value)))
                .collect();
            json!({ "let": bindings })
        }
        Step::Call(call) => session::describe_request(call, &call.with),
    }
}

fn describe_expectation(step: &Step) -> Value {
    match step {
        Step::Let { .. } => json!("the bindings' placeholders resolve"),
        Step::Call(call) => expectation_json(call),
    }
}

fn expectation_json(step: &CallStep) -> Value {
    let mut expected = json!({"code": code_name(step.expect.code)});
    if let Some(result) = &step.expect.result {
        expected["result"] = result.clone();
    }
    expected
}

async fn play_step(index: usize, step: &Step, session: &mut Session) -> Result<(), Failure> {
    let fail = |request: Value, actual: String, reason: String| {
        Failure::Step(StepFailure {
            index,
            request,
            expected: describe_expectation(step),
            actual,
            reason,
        })
    };
    let call = match step {
        Step::Let { bindings, at } => {
            if let Some(at) = at {
                session.move_clock_to(*at);
            }
            return session.bind(bindings).await.map_err(|trouble| {
                let (actual, reason) = trouble_text(trouble);
                fail(describe_step(step), actual, reason)
            });
        }
        Step::Call(call) => call,
    };
    session.move_clock(call);
    let with = match session.arguments(call).await {
        Ok(with) => with,
        Err(trouble) => {
            let (actual, reason) = trouble_text(trouble);
            return Err(fail(describe_step(step), actual, reason));
        }
    };
    let request = session::describe_request(call, &with);
    let sent = match session.call(call, &with).await {
        Ok(sent) => sent,
        Err(trouble) => {
            let (actual, reason) = trouble_text(trouble);
            return Err(fail(request, actual, reason));
        }
    };
    judge(&call.expect, &sent).map_err(|(actual, reason)| fail(request, actual, reason))
}

fn trouble_text(trouble: Trouble) -> (String, String) {
    match trouble {
        Trouble::Runner(reason) => ("no call made".into(), reason),
        Trouble::Protocol(reason) => ("an answer that breaks the API contract".into(), reason),
    }
}

/// Compares what came back with the step's expectation; on a mismatch answers what came
/// back and why it does not match.
pub fn judge(expect: &file::Expectation, sent: &session::Sent) -> Result<(), (String, String)> {
    match sent {
        Ok((answer, _)) => {
            let actual = format!("OK {answer}");
            if expect.code != tonic::Code::Ok {
                return Err((
                    actual,
                    format!("expected {}, got OK", code_name(expect.code)),
                ));
            }
            match &expect.result {
                None => Ok(()),
                Some(pattern) => matches(pattern, answer, "result")
                    .map_err(|mismatch| (actual, mismatch.to_string())),
            }
        }
        Err(status) => {
            let actual = format!("{}: {}", code_name(status.code()), status.message());
            if status.code() == expect.code {
                Ok(())
            } else {
                let reason = format!(
                    "expected {}, got {}",
                    code_name(expect.code),
                    code_name(status.code())
                );
                Err((actual, reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use file::Expectation;

    fn expect(code: tonic::Code, result: Option<Value>) -> Expectation {
        Expectation { code, result }
    }

    #[test]
    fn judging_codes_and_results() {
        let answer: session::Sent = Ok((json!({"seats": 5, "expired": false}), Some(3)));
        assert!(judge(&expect(tonic::Code::Ok, None), &answer).is_ok());
        assert!(judge(&expect(tonic::Code::Ok, Some(json!({"seats": 5}))), &answer).is_ok());
        let (actual, reason) =
            judge(&expect(tonic::Code::Ok, Some(json!({"seats": 6}))), &answer).unwrap_err();
        assert!(actual.starts_with("OK "), "{actual}");
        assert!(
            reason.contains("result.seats") && reason.contains("expected 6"),
            "{reason}"
        );
        let (_, reason) = judge(&expect(tonic::Code::NotFound, None), &answer).unwrap_err();
        assert_eq!(reason, "expected NOT_FOUND, got OK");

        let refused: session::Sent = Err(tonic::Status::permission_denied("not yours"));
        assert!(judge(&expect(tonic::Code::PermissionDenied, None), &refused).is_ok());
        let (actual, reason) = judge(&expect(tonic::Code::Ok, None), &refused).unwrap_err();
        assert_eq!(actual, "PERMISSION_DENIED: not yours");
        assert_eq!(reason, "expected OK, got PERMISSION_DENIED");
    }

    #[test]
    fn arguments_name_files_and_folders() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("b.json"), "{}").unwrap();
        std::fs::write(folder.path().join("a.json"), "{}").unwrap();
        std::fs::write(folder.path().join("notes.txt"), "").unwrap();
        let files = scenario_files(&[
            folder.path().to_owned(),
            folder.path().join("notes.txt"),
            folder.path().join("missing.json"),
        ]);
        assert_eq!(files.len(), 4);
        assert_eq!(files[0].as_ref().unwrap(), &folder.path().join("a.json"));
        assert_eq!(files[1].as_ref().unwrap(), &folder.path().join("b.json"));
        assert!(files[2].is_err());
        assert!(files[3].is_err());
    }

    #[test]
    fn the_summary_succeeds_only_with_passes_and_no_failures() {
        assert!(!Summary::default().succeeded());
        assert!(
            Summary {
                passed: 2,
                failed: 0
            }
            .succeeded()
        );
        assert!(
            !Summary {
                passed: 2,
                failed: 1
            }
            .succeeded()
        );
        assert_eq!(
            Summary {
                passed: 2,
                failed: 1
            }
            .to_string(),
            "2 passed, 1 failed"
        );
    }
}

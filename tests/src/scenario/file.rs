//! A scenario file read strictly: every key of the file, of a step and of `expect` must be
//! one FORMAT.md defines, and every call must name a known command or query with known
//! fields. The whole file is checked before its server starts, so a typo late in a file
//! fails at once instead of after every earlier step has run.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::calls::{Call, CallKind};

/// FORMAT.md's default start of the manual clock.
pub const DEFAULT_START: &str = "2026-09-01T00:00:00Z";

const FILE_KEYS: &[&str] = &["name", "rules", "start", "steps"];
const CALL_STEP_KEYS: &[&str] = &[
    "as",
    "do",
    "query",
    "with",
    "command_id",
    "at",
    "expect",
    "note",
];
const LET_STEP_KEYS: &[&str] = &["let", "at", "note"];
const EXPECT_KEYS: &[&str] = &["code", "result"];

/// A file that cannot be played: why, and which step is at fault when one is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", .step.map(|index| format!("step {index}: ")).unwrap_or_default())]
pub struct FileError {
    pub step: Option<usize>,
    pub reason: String,
}

impl FileError {
    fn file(reason: impl Into<String>) -> Self {
        Self {
            step: None,
            reason: reason.into(),
        }
    }
}

/// One scenario file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub start: DateTime<Utc>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Binds variables for later steps; values may hold placeholders.
    Let {
        bindings: Vec<(String, String)>,
        /// FORMAT.md moves the clock before any step that names `at`, a `let` step too.
        at: Option<DateTime<Utc>>,
    },
    Call(CallStep),
}

/// Who makes a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    Staff,
    System,
    /// No credentials at all.
    Anonymous,
    /// A user-scoped credential acting for this person.
    User(String),
}

/// A command or query made by someone, with what must come back.
#[derive(Clone, Debug, PartialEq)]
pub struct CallStep {
    pub actor: Actor,
    pub kind: CallKind,
    pub name: String,
    /// The arguments as written: placeholders are replaced when the step runs.
    pub with: Map<String, Value>,
    pub command_id: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub expect: Expectation,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    pub code: tonic::Code,
    /// A pattern the answer must match; only for `OK`.
    pub result: Option<Value>,
}

impl Scenario {
    /// Reads a scenario from its JSON text.
    pub fn parse(text: &str) -> Result<Self, FileError> {
        let file: Value = serde_json::from_str(text)
            .map_err(|error| FileError::file(format!("not valid JSON: {error}")))?;
        let Value::Object(file) = file else {
            return Err(FileError::file("a scenario file holds one JSON object"));
        };
        if let Some(unknown) = file.keys().find(|key| !FILE_KEYS.contains(&key.as_str())) {
            return Err(FileError::file(format!(
                "unknown field '{unknown}' (a file has {})",
                FILE_KEYS.join(", ")
            )));
        }
        let name = match file.get("name") {
            Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
            _ => return Err(FileError::file("'name' must be a non-empty text")),
        };
        match file.get("rules") {
            None => {}
            Some(Value::Array(rules)) if rules.iter().all(Value::is_string) => {}
            Some(_) => return Err(FileError::file("'rules' must be a list of text")),
        }
        let start = match file.get("start") {
            None => parse_time(DEFAULT_START),
            Some(Value::String(start)) => parse_time(start),
            Some(other) => Err(format!("must be an RFC 3339 text, not {other}")),
        }
        .map_err(|reason| FileError::file(format!("'start' {reason}")))?;
        let Some(Value::Array(raw_steps)) = file.get("steps") else {
            return Err(FileError::file("'steps' must be a list"));
        };
        let steps = raw_steps
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                Step::parse(raw).map_err(|reason| FileError {
                    step: Some(index),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { name, start, steps })
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| format!("'{text}' is not an RFC 3339 time: {error}"))
}

fn reject_unknown_keys(map: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(format!(
            "unknown field '{unknown}' in {what} (known: {})",
            known.join(", ")
        )),
    }
}

fn optional_text<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!("'{key}' must be text, not {other}")),
    }
}

impl Step {
    fn parse(raw: &Value) -> Result<Self, String> {
        let Value::Object(step) = raw else {
            return Err(format!("a step is an object, not {raw}"));
        };
        if let Some(bindings) = step.get("let") {
            reject_unknown_keys(step, LET_STEP_KEYS, "a 'let' step")?;
            let Value::Object(bindings) = bindings else {
                return Err("'let' takes an object of texts".into());
            };
            let bindings = bindings
                .iter()
                .map(|(name, value)| match value {
                    Value::String(text) if !name.is_empty() => Ok((name.clone(), text.clone())),
                    _ => Err(format!(
                        "'let' binds names to texts, not '{name}' to {value}"
                    )),
                })
                .collect::<Result<_, String>>()?;
            let at = optional_text(step, "at")?
                .map(|at| parse_time(at).map_err(|reason| format!("'at' {reason}")))
                .transpose()?;
            return Ok(Self::Let { bindings, at });
        }
        reject_unknown_keys(step, CALL_STEP_KEYS, "a step")?;
        let actor = match optional_text(step, "as")? {
            None => return Err("a call needs 'as'".into()),
            Some("staff") => Actor::Staff,
            Some("system") => Actor::System,
            Some("anonymous") => Actor::Anonymous,
            Some(email) => {
                // The person travels in the `x-actor` header, which holds visible ASCII only.
                if email.is_empty() || !email.bytes().all(|byte| byte.is_ascii_graphic()) {
                    return Err(format!(
                        "'as' must be staff, system, anonymous or an email, not '{email}'"
                    ));
                }
                Actor::User(email.to_owned())
            }
        };
        let (kind, name) = match (optional_text(step, "do")?, optional_text(step, "query")?) {
            (Some(name), None) => (CallKind::Command, name),
            (None, Some(name)) => (CallKind::Query, name),
            _ => return Err("a call needs exactly one of 'do' and 'query'".into()),
        };
        let with = match step.get("with") {
            None => Map::new(),
            Some(Value::Object(with)) => with.clone(),
            Some(other) => return Err(format!("'with' must be an object, not {other}")),
        };
        // Built once here only to check names, fields and types; placeholders are still
        // text, so they pass, and the step is built again with their values when it runs.
        Call::build(kind, name, &with)?;
        let command_id = optional_text(step, "command_id")?.map(str::to_owned);
        // A `command_id` on a query is allowed and has no effect: queries change nothing,
        // so there is nothing to make idempotent.
        if let Some(id) = &command_id
            && (id.is_empty() || !id.bytes().all(|byte| byte.is_ascii_graphic()))
        {
            return Err(format!(
                "'command_id' must be visible ASCII text, not '{id}'"
            ));
        }
        let at = optional_text(step, "at")?
            .map(|at| parse_time(at).map_err(|reason| format!("'at' {reason}")))
            .transpose()?;
        optional_text(step, "note")?;
        let expect = Expectation::parse(step.get("expect"))?;
        Ok(Self::Call(CallStep {
            actor,
            kind,
            name: name.to_owned(),
            with,
            command_id,
            at,
            expect,
        }))
    }
}

impl Expectation {
    fn parse(raw: Option<&Value>) -> Result<Self, String> {
        let expect = match raw {
            None => {
                return Ok(Self {
                    code: tonic::Code::Ok,
                    result: None,
                });
            }
            Some(Value::Object(expect)) => expect,
            Some(other) => return Err(format!("'expect' must be an object, not {other}")),
        };
        reject_unknown_keys(expect, EXPECT_KEYS, "'expect'")?;
        let code = match optional_text(expect, "code")? {
            None => tonic::Code::Ok,
            Some(name) => code_from_name(name).ok_or_else(|| {
                format!("'{name}' is not a gRPC code name (OK, INVALID_ARGUMENT, NOT_FOUND, ...)")
            })?,
        };
        let result = expect.get("result").cloned();
        // A refusal has no answer, so a result beside another code is not checked; it is
        // allowed, since FORMAT.md does not forbid it.
        Ok(Self { code, result })
    }
}

const CODES: &[(tonic::Code, &str)] = &[
    (tonic::Code::Ok, "OK"),
    (tonic::Code::Cancelled, "CANCELLED"),
    (tonic::Code::Unknown, "UNKNOWN"),
    (tonic::Code::InvalidArgument, "INVALID_ARGUMENT"),
    (tonic::Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (tonic::Code::NotFound, "NOT_FOUND"),
    (tonic::Code::AlreadyExists, "ALREADY_EXISTS"),
    (tonic::Code::PermissionDenied, "PERMISSION_DENIED"),
    (tonic::Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (tonic::Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (tonic::Code::Aborted, "ABORTED"),
    (tonic::Code::OutOfRange, "OUT_OF_RANGE"),
    (tonic::Code::Unimplemented, "UNIMPLEMENTED"),
    (tonic::Code::Internal, "INTERNAL"),
    (tonic::Code::Unavailable, "UNAVAILABLE"),
    (tonic::Code::DataLoss, "DATA_LOSS"),
    (tonic::Code::Unauthenticated, "UNAUTHENTICATED"),
];

/// The gRPC name of a code, as scenario files write it.
pub fn code_name(code: tonic::Code) -> &'static str {
    CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map_or("UNKNOWN", |(_, name)| name)
}

/// The code a scenario file names.
pub fn code_from_name(name: &str) -> Option<tonic::Code> {
    CODES
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(code, _)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(file: Value) -> Result<Scenario, FileError> {
        Scenario::parse(&file.to_string())
    }

    fn with_steps(steps: Value) -> Value {
        json!({"name": "n", "steps": steps})
    }

    #[test]
    fn every_public_scenario_parses() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path
                .extension()
                .is_some_and(|extension| extension == "json")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                let scenario = Scenario::parse(&text)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                assert!(!scenario.steps.is_empty());
                count += 1;
            }
        }
        assert!(count >= 14, "the public scenarios are in tests/scenarios");
    }

    #[test]
    fn a_step_reads_every_key() {
        let scenario = parse(json!({"name": "n", "rules": ["AUD-4"], "start": "2026-10-01T00:00:00Z", "steps": [
            {"let": {"old": "${key:T1}"}, "note": "remember"},
            {"as": "a@north.edu", "do": "AddUsersByEmail", "with": {"license": "L1", "emails": "b@north.edu"},
             "command_id": "c-1", "at": "2026-10-02T00:00:00Z", "expect": {"result": {"added": 1}}, "note": "x"},
            {"as": "anonymous", "query": "GetLicense", "with": {"license": "L1"}, "expect": {"code": "UNAUTHENTICATED"}},
        ]}))
        .unwrap();
        assert_eq!(scenario.start, parse_time("2026-10-01T00:00:00Z").unwrap());
        assert_eq!(
            scenario.steps[0],
            Step::Let {
                bindings: vec![("old".into(), "${key:T1}".into())],
                at: None,
            }
        );
        let Step::Call(call) = &scenario.steps[1] else {
            panic!("a call")
        };
        assert_eq!(call.actor, Actor::User("a@north.edu".into()));
        assert_eq!(call.kind, CallKind::Command);
        assert_eq!(call.command_id.as_deref(), Some("c-1"));
        assert_eq!(call.at, Some(parse_time("2026-10-02T00:00:00Z").unwrap()));
        assert_eq!(
            call.expect,
            Expectation {
                code: tonic::Code::Ok,
                result: Some(json!({"added": 1}))
            }
        );
        let Step::Call(query) = &scenario.steps[2] else {
            panic!("a call")
        };
        assert_eq!(query.actor, Actor::Anonymous);
        assert_eq!(query.expect.code, tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_start_defaults_to_the_format_s() {
        let scenario = parse(with_steps(json!([]))).unwrap();
        assert_eq!(scenario.start, parse_time(DEFAULT_START).unwrap());
    }

    #[test]
    fn unknown_keys_commands_and_codes_fail_with_their_step() {
        let cases = [
            (
                json!({"as": "staff", "do": "Nope"}),
                "unknown command 'Nope'",
            ),
            (
                json!({"as": "staff", "query": "GetLicense", "with": {"licence": "L1"}}),
                "unknown field 'licence'",
            ),
            (
                json!({"as": "staff", "query": "GetLicense", "wiht": {}}),
                "unknown field 'wiht'",
            ),
            (
                json!({"as": "staff", "query": "GetLicense", "expect": {"status": "OK"}}),
                "unknown field 'status'",
            ),
            (
                json!({"as": "staff", "query": "GetLicense", "expect": {"code": "NotFound"}}),
                "not a gRPC code",
            ),
            (
                json!({"as": "staff", "do": "IssueLicense", "query": "GetLicense"}),
                "exactly one",
            ),
            (json!({"do": "IssueLicense"}), "needs 'as'"),
            (
                json!({"as": "staff", "query": "GetLicense", "at": "tomorrow"}),
                "RFC 3339",
            ),
            (
                json!({"let": {"a": "b"}, "as": "staff"}),
                "unknown field 'as'",
            ),
            (json!({"let": {"a": 1}}), "binds names to texts"),
            (
                json!({"as": "wörk@x.org", "query": "GetLicense"}),
                "'as' must be",
            ),
        ];
        for (step, reason) in cases {
            let error = parse(with_steps(json!([{"let": {"a": "b"}}, step]))).unwrap_err();
            assert_eq!(error.step, Some(1), "{error}");
            assert!(error.reason.contains(reason), "{error} lacks {reason}");
        }
    }

    #[test]
    fn file_level_errors() {
        assert!(
            Scenario::parse("{")
                .unwrap_err()
                .reason
                .contains("not valid JSON")
        );
        assert!(parse(json!([])).is_err());
        assert!(
            parse(json!({"steps": []}))
                .unwrap_err()
                .reason
                .contains("'name'")
        );
        assert!(
            parse(json!({"name": "n"}))
                .unwrap_err()
                .reason
                .contains("'steps'")
        );
        assert!(
            parse(json!({"name": "n", "steps": [], "extra": 1}))
                .unwrap_err()
                .reason
                .contains("'extra'")
        );
        assert!(parse(json!({"name": "n", "steps": [], "start": "soon"})).is_err());
        let error = parse(json!({"name": "n", "steps": [], "rules": "LIC-1"})).unwrap_err();
        assert_eq!(error.step, None);
    }

    #[test]
    fn code_names_round_trip() {
        for (code, name) in CODES {
            assert_eq!(code_from_name(name), Some(*code));
            assert_eq!(code_name(*code), *name);
        }
        assert_eq!(code_from_name("ok"), None);
    }
}

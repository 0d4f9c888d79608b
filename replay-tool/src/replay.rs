//! Folding the log: the license as it stood at a moment (`as-of`, AUD-5), its history
//! and exports. Positions shown and accepted here are API positions (ledger position
//! + 1), the numbers the server's clients see.

use chrono::{DateTime, NaiveDate, Utc};
use domain::events::{Event, EventMeta};
use domain::{License, LicenseState};
use ledger::RecordedEvent;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Failure, Result};
use crate::source::Source;

/// A moment in the log: after the event at an API position, or at a time (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    Position(u64),
    At(DateTime<Utc>),
    /// The whole log.
    Now,
}

impl Moment {
    /// Whether `e` had happened at this moment.
    pub fn includes(&self, e: &RecordedEvent) -> bool {
        match self {
            Moment::Position(p) => server::projector::api_position(e.position) <= *p,
            Moment::At(t) => e.recorded_at <= *t,
            Moment::Now => true,
        }
    }
}

/// A time as RFC 3339 (`2026-03-01T00:00:00Z`) or a date (`2026-03-01`, meaning 00:00 UTC).
pub fn parse_time(raw: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(Failure::usage(format!(
        "'{raw}' is not a time: use RFC 3339 (2026-03-01T08:00:00Z) or a date (2026-03-01, meaning 00:00 UTC)"
    )))
}

/// A bound of `--from`/`--to`: a whole number is an API position, anything else a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Position(u64),
    At(DateTime<Utc>),
}

pub fn parse_bound(raw: &str) -> Result<Bound> {
    match raw.parse::<u64>() {
        Ok(p) => Ok(Bound::Position(p)),
        Err(_) => parse_time(raw).map(Bound::At),
    }
}

/// Whether `e` lies in `[from, to)`.
pub fn in_range(e: &RecordedEvent, from: Option<Bound>, to: Option<Bound>) -> bool {
    let pos = server::projector::api_position(e.position);
    let after_from = match from {
        None => true,
        Some(Bound::Position(p)) => pos >= p,
        Some(Bound::At(t)) => e.recorded_at >= t,
    };
    let before_to = match to {
        None => true,
        Some(Bound::Position(p)) => pos < p,
        Some(Bound::At(t)) => e.recorded_at < t,
    };
    after_from && before_to
}

/// Decodes a stored event for the domain; an undecodable event is a hard error.
pub fn decode(e: &RecordedEvent) -> Result<(EventMeta, Event)> {
    let d = server::core::decode(e).map_err(|err| Failure::failed(err.to_string()))?;
    Ok((d.meta, d.event))
}

pub fn license_stream(license: &str) -> String {
    server::core::license_stream(license)
}

/// Folds a license stream's events up to `moment`. Returns the aggregate and the API
/// position of the last event folded.
pub fn fold_license(events: &[RecordedEvent], moment: Moment) -> Result<(License, Option<u64>)> {
    let mut license = License::default();
    let mut last = None;
    for e in events.iter().filter(|e| moment.includes(e)) {
        let (meta, event) = decode(e)?;
        license.apply(&meta, &event);
        last = Some(server::projector::api_position(e.position));
    }
    Ok((license, last))
}

/// One member as the license stood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    pub email: String,
    pub status: String,
    pub source: String,
    pub role: String,
    pub added_at: String,
    pub added_by: String,
    /// Accepted and invited members hold a seat (SEAT-1).
    pub holds_seat: bool,
}

/// The license as it stood at a moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AsOf {
    pub license: String,
    /// The API position of the last event of the license at that moment.
    pub position: Option<u64>,
    pub license_type: String,
    pub seats: u32,
    pub valid_from: String,
    pub valid_until: String,
    pub accepted: u64,
    pub invited: u64,
    pub rejected: u64,
    pub waitlisted: u64,
    /// accepted + invited: who held a seat.
    pub users_count: u64,
    pub members: Vec<MemberRow>,
}

pub fn members_of(state: &LicenseState) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = state
        .members()
        .map(|(email, m)| MemberRow {
            email: email.as_str().to_owned(),
            status: m.status.as_str().to_owned(),
            source: m.source.as_str().to_owned(),
            role: m.role.as_str().to_owned(),
            added_at: m.added_at.to_rfc3339(),
            added_by: m.added_by.to_string(),
            holds_seat: m.status.holds_seat(),
        })
        .collect();
    rows.sort_by(|a, b| a.email.cmp(&b.email));
    rows
}

/// `as-of`: the license `license` as it stood at `moment`.
pub async fn as_of(source: &Source, license: &str, moment: Moment) -> Result<AsOf> {
    let events = source.read_stream(&license_stream(license)).await?;
    if events.is_empty() {
        return Err(Failure::usage(format!("no license '{license}' in the log")));
    }
    let (aggregate, position) = fold_license(&events, moment)?;
    let Some(state) = aggregate.state() else {
        return Err(Failure::usage(format!(
            "license '{license}' had not been issued yet at that moment (it was issued at {})",
            events[0].recorded_at.to_rfc3339()
        )));
    };
    let counts = state.counts();
    Ok(AsOf {
        license: license.to_owned(),
        position,
        license_type: state.license_type().as_str().to_owned(),
        seats: state.seats(),
        valid_from: state.valid_from().to_rfc3339(),
        valid_until: state.valid_until().to_rfc3339(),
        accepted: counts.accepted,
        invited: counts.invited,
        rejected: counts.rejected,
        waitlisted: counts.waitlisted,
        users_count: counts.users_count(),
        members: members_of(state),
    })
}

pub fn render_as_of(a: &AsOf) -> String {
    let mut out = format!(
        "license {} ({}) as of position {}\nseats {}   held {} (accepted {} + invited {})   waitlisted {}   rejected {}\nvalid {} .. {}\n\n",
        a.license,
        a.license_type,
        a.position.map_or("-".into(), |p| p.to_string()),
        a.seats,
        a.users_count,
        a.accepted,
        a.invited,
        a.waitlisted,
        a.rejected,
        a.valid_from,
        a.valid_until
    );
    let rows: Vec<Vec<String>> = a
        .members
        .iter()
        .map(|m| {
            vec![
                m.email.clone(),
                m.status.clone(),
                m.source.clone(),
                m.role.clone(),
                m.added_at.clone(),
                m.added_by.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["EMAIL", "STATUS", "SOURCE", "ROLE", "ADDED AT", "ADDED BY"],
        &rows,
    ));
    out
}

/// One line of a history. Secrets never appear: `change` is the server's summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryRow {
    pub position: u64,
    pub time: String,
    pub actor: String,
    pub stream: String,
    pub revision: u64,
    pub event: String,
    pub change: Value,
}

pub fn history_row(e: &RecordedEvent, event: &Event) -> HistoryRow {
    let summary = server::history::change_summary(event);
    HistoryRow {
        position: server::projector::api_position(e.position),
        time: e.recorded_at.to_rfc3339(),
        actor: e.actor.clone(),
        stream: e.stream.clone(),
        revision: e.revision,
        event: e.event_type.clone(),
        change: serde_json::from_str(&summary).unwrap_or(Value::String(summary)),
    }
}

/// Whose history to show.
#[derive(Clone, Debug)]
pub enum Subject {
    License(String),
    User(String),
}

/// `history`: the events that touched a license or a user, oldest first.
pub async fn history(source: &Source, subject: &Subject) -> Result<Vec<HistoryRow>> {
    let mut rows = Vec::new();
    match subject {
        Subject::License(license) => {
            let events = source.read_stream(&license_stream(license)).await?;
            if events.is_empty() {
                return Err(Failure::usage(format!("no license '{license}' in the log")));
            }
            for e in &events {
                let (_, event) = decode(e)?;
                rows.push(history_row(e, &event));
            }
        }
        Subject::User(raw) => {
            let email = domain::Email::parse(raw)
                .map_err(|e| Failure::usage(format!("'{raw}' is not an email: {e:?}")))?;
            source
                .scan(|page| {
                    for e in page {
                        let (_, event) = decode(e)?;
                        if event.member_email() == Some(&email) {
                            rows.push(history_row(e, &event));
                        }
                    }
                    Ok(true)
                })
                .await?;
        }
    }
    Ok(rows)
}

pub fn render_history(rows: &[HistoryRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.position.to_string(),
                r.time.clone(),
                r.actor.clone(),
                r.stream.clone(),
                r.event.clone(),
                r.change.to_string(),
            ]
        })
        .collect();
    table(
        &["POS", "TIME", "ACTOR", "STREAM", "EVENT", "CHANGE"],
        &cells,
    )
}

/// One exported event: the envelope without hashes and the change summary, never the raw
/// payload (it may hold a license key).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExportRow {
    pub position: u64,
    pub time: String,
    pub stream: String,
    pub revision: u64,
    pub event: String,
    pub schema_version: u16,
    pub actor: String,
    pub event_id: String,
    pub command_id: String,
    pub correlation_id: String,
    pub change: Value,
}

/// `export` of the log, events in `[from, to)`.
pub async fn export_log(
    source: &Source,
    from: Option<Bound>,
    to: Option<Bound>,
) -> Result<Vec<ExportRow>> {
    let mut rows = Vec::new();
    source
        .scan(|page| {
            for e in page.iter().filter(|e| in_range(e, from, to)) {
                let (_, event) = decode(e)?;
                let h = history_row(e, &event);
                rows.push(ExportRow {
                    position: h.position,
                    time: h.time,
                    stream: h.stream,
                    revision: h.revision,
                    event: h.event,
                    schema_version: e.schema_version,
                    actor: h.actor,
                    event_id: e.event_id.to_string(),
                    command_id: e.command_id.to_string(),
                    correlation_id: e.correlation_id.to_string(),
                    change: h.change,
                });
            }
            Ok(true)
        })
        .await?;
    Ok(rows)
}

/// Rows as JSON Lines.
pub fn jsonl<T: Serialize>(rows: &[T]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str(&serde_json::to_string(r).expect("serializable"));
        out.push('\n');
    }
    out
}

/// A CSV field, quoted when it needs to be (RFC 4180). A leading `=`, `+`, `-` or `@`
/// is prefixed with `'` so a spreadsheet does not run it as a formula.
pub fn csv_field(raw: &str) -> String {
    let guarded = if raw.starts_with(['=', '+', '-', '@']) {
        format!("'{raw}")
    } else {
        raw.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.join(",");
    out.push('\n');
    for r in rows {
        let fields: Vec<String> = r.iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

pub fn export_rows_csv(rows: &[ExportRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.position.to_string(),
                r.time.clone(),
                r.stream.clone(),
                r.revision.to_string(),
                r.event.clone(),
                r.schema_version.to_string(),
                r.actor.clone(),
                r.event_id.clone(),
                r.command_id.clone(),
                r.correlation_id.clone(),
                r.change.to_string(),
            ]
        })
        .collect();
    csv(
        &[
            "position",
            "time",
            "stream",
            "revision",
            "event",
            "schema_version",
            "actor",
            "event_id",
            "command_id",
            "correlation_id",
            "change",
        ],
        &cells,
    )
}

pub fn members_csv(rows: &[MemberRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            vec![
                m.email.clone(),
                m.status.clone(),
                m.source.clone(),
                m.role.clone(),
                m.added_at.clone(),
                m.added_by.clone(),
                m.holds_seat.to_string(),
            ]
        })
        .collect();
    csv(
        &[
            "email",
            "status",
            "source",
            "role",
            "added_at",
            "added_by",
            "holds_seat",
        ],
        &cells,
    )
}

/// A plain text table with aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

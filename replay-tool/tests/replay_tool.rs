//! Every subcommand on a ledger the test builds itself (support::build), plus a tampered
//! copy that `verify` must catch (AUD-3), rebuild digests (AUD-5), the locked store and
//! the server's event feed.

mod support;

use std::path::Path;

use clap::Parser;
use replay_tool::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use serde_json::Value;
use support::*;

/// A built ledger in a temp dir: `<tmp>/data/log`.
async fn built() -> (tempfile::TempDir, std::path::PathBuf, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let n = build(&data).await;
    (tmp, data, n)
}

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ---------------------------------------------------------------- verify (AUD-3)

#[tokio::test]
async fn verify_passes_on_an_intact_ledger() {
    let (_tmp, data, n) = built().await;
    assert_eq!(n, 18);
    if let Some(keep) = std::env::var_os("REPLAY_TOOL_KEEP_DATA") {
        // A ledger to try the binary on: REPLAY_TOOL_KEEP_DATA=/tmp/demo cargo test ... intact
        copy_dir(&data, Path::new(&keep));
    }
    let (code, out) = cli(&["verify", "--data", d(&data)]).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("intact: 18 events in 2 streams"), "{out}");
}

/// AUD-3: an edited event (its CRC fixed so only the hash chain can tell), a deleted event
/// and two swapped events are each caught, wherever in the log they are, and the first
/// broken event is named.
#[tokio::test]
async fn verify_catches_every_edit_deletion_and_swap() {
    let (tmp, data, n) = built().await;
    let original = std::fs::read(segment_path(&data)).unwrap();
    let n = n as usize;
    let copy = tmp.path().join("tampered");
    copy_dir(&data, &copy);
    let segments = copy.join("log").join("segments");
    for k in 0..n {
        let mut edited = original.clone();
        edit_payload(&mut edited, k);
        std::fs::write(segment_path(&copy), &edited).unwrap();
        let o = replay_tool::verify::walk_segments(&segments).unwrap();
        let b = o.first_break.expect("an edited payload is caught");
        assert_eq!(b.position, k as u64 + 1, "edit of event {k}: {b}");
        assert!(b.reason.contains("own hash"), "edit of event {k}: {b}");

        std::fs::write(segment_path(&copy), delete_record(&original, k)).unwrap();
        let o = replay_tool::verify::walk_segments(&segments).unwrap();
        if k + 1 < n {
            let b = o.first_break.expect("a deleted event is caught");
            assert_eq!(b.position, k as u64 + 1, "deletion of event {k}: {b}");
        } else {
            // The chains end cleanly without the last event; the index's checkpoint tells.
            assert!(o.first_break.is_none());
            assert_eq!(o.events_checked, k as u64);
        }

        if k + 1 < n {
            std::fs::write(segment_path(&copy), swap_records(&original, k)).unwrap();
            let o = replay_tool::verify::walk_segments(&segments).unwrap();
            let b = o.first_break.expect("swapped events are caught");
            assert_eq!(
                b.position,
                k as u64 + 1,
                "swap of events {k}, {}: {b}",
                k + 1
            );
        }
    }

    // Through the CLI, with the index's checkpoint: exit 1 and the event named.
    let mut edited = original.clone();
    edit_payload(&mut edited, 7);
    std::fs::write(segment_path(&copy), &edited).unwrap();
    let (code, out) = cli(&["verify", "--data", d(&copy)]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains("BROKEN: first broken event at position 8 (stream license-north, revision 5"),
        "{out}"
    );
    assert!(out.contains("edited"), "{out}");

    std::fs::write(segment_path(&copy), delete_record(&original, 3)).unwrap();
    let (code, out) = cli(&["verify", "--data", d(&copy)]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("first broken event at position 4"), "{out}");
    assert!(out.contains("missing or out of order"), "{out}");

    std::fs::write(segment_path(&copy), delete_record(&original, n - 1)).unwrap();
    let (code, out) = cli(&["verify", "--data", d(&copy), "--json"]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["committed"], 18);
    assert!(
        v["first_break"]["reason"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{out}"
    );

    std::fs::write(segment_path(&copy), swap_records(&original, 10)).unwrap();
    let (code, out) = cli(&["verify", "--data", d(&copy)]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("first broken event at position 11"), "{out}");

    // A flipped byte without the CRC fixed is named too.
    let mut rotten = original.clone();
    rotten[records(&original)[4].start + 20] ^= 0x40;
    std::fs::write(segment_path(&copy), &rotten).unwrap();
    let (code, out) = cli(&["verify", "--data", d(&copy)]).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains("first broken event at position 5") && out.contains("CRC"),
        "{out}"
    );
}

#[tokio::test]
async fn a_store_held_by_another_process_is_refused_clearly() {
    let (_tmp, data, _) = built().await;
    let held =
        ledger::EmbeddedLog::open(data.join("log"), ledger::EmbeddedOptions::default()).unwrap();
    for args in [
        vec!["verify", "--data", d(&data)],
        vec!["as-of", "--data", d(&data), "--license", "north"],
    ] {
        let f = replay_tool::cli::run(
            <replay_tool::cli::Cli as clap::Parser>::try_parse_from(
                std::iter::once("replay-tool").chain(args.iter().copied()),
            )
            .unwrap(),
            &mut Vec::new(),
        )
        .await
        .expect_err("a locked store is refused");
        assert_eq!(f.code, EXIT_USAGE);
        assert!(
            f.message
                .contains("is in use (is the server running?); stop it or use --server"),
            "{}",
            f.message
        );
    }
    held.close().await.unwrap();
    drop(held);
    let (code, _) = cli(&["verify", "--data", d(&data)]).await;
    assert_eq!(code, EXIT_OK);
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let (code, _) = cli(&["verify"]).await;
    assert_eq!(code, EXIT_USAGE, "no source");
    let (code, _) = cli(&["verify", "--data", "/nonexistent/replay-tool-test"]).await;
    assert_eq!(code, EXIT_USAGE, "no ledger there");
    let (code, _) = cli(&["history", "--data", "/tmp"]).await;
    assert_eq!(code, EXIT_USAGE, "history needs --license or --user");
    let (code, _) = cli(&["verify", "--server", "127.0.0.1:1"]).await;
    assert_eq!(code, EXIT_USAGE, "--server needs a token");
    #[cfg(not(feature = "kurrentdb"))]
    {
        let f = replay_tool::cli::run(
            <replay_tool::cli::Cli as clap::Parser>::try_parse_from([
                "replay-tool",
                "verify",
                "--kurrentdb",
                "kurrentdb://127.0.0.1:2113?tls=false",
            ])
            .unwrap(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(f.code, EXIT_USAGE);
        assert!(f.message.contains("--features kurrentdb"), "{}", f.message);
    }
}

// ---------------------------------------------------------------- as-of (AUD-5)

#[tokio::test]
async fn as_of_shows_who_held_a_seat_then() {
    let (_tmp, data, _) = built().await;
    // 1 March: 3 seats, ann and bob invited, cid accepted: they hold the seats.
    let (code, out) = cli(&[
        "as-of",
        "--data",
        d(&data),
        "--license",
        "north",
        "--at",
        "2026-03-01",
        "--json",
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["seats"], 3);
    assert_eq!(v["users_count"], 3);
    assert_eq!(v["waitlisted"], 3);
    let members: Vec<(String, String, String)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["email"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |e: &str, s: &str, src: &str| (e.to_owned(), s.to_owned(), src.to_owned());
    assert_eq!(
        members,
        vec![
            expect("ann@x.edu", "invited", "email"),
            expect("bob@x.edu", "invited", "email"),
            expect("cid@x.edu", "accepted", "roster"),
            expect("dan@x.edu", "waitlisted", "roster"),
            expect("eve@x.edu", "waitlisted", "roster"),
            expect("fay@x.edu", "waitlisted", "roster"),
        ]
    );

    // By position: after the seat change (position 12) dan and eve were promoted.
    let (code, out) = cli(&[
        "as-of",
        "--data",
        d(&data),
        "--license",
        "north",
        "--position",
        "12",
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(
        out.contains("seats 5   held 5 (accepted 3 + invited 2)   waitlisted 1"),
        "{out}"
    );
    assert!(out.contains("as of position 12"), "{out}");

    // Today: ann removed, bob accepted, fay promoted.
    let (code, out) = cli(&["as-of", "--data", d(&data), "--license", "north", "--json"]).await;
    let _ = code;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["accepted"], 5);
    assert_eq!(v["invited"], 0);
    assert_eq!(v["position"], 18);

    // Before the license existed, and an unknown license.
    let (code, _) = cli(&[
        "as-of",
        "--data",
        d(&data),
        "--license",
        "north",
        "--at",
        "2026-01-15",
    ])
    .await;
    assert_eq!(code, EXIT_USAGE);
    let (code, _) = cli(&["as-of", "--data", d(&data), "--license", "nope"]).await;
    assert_eq!(code, EXIT_USAGE);
}

// ---------------------------------------------------------------- history

#[tokio::test]
async fn history_by_license_and_by_user_oldest_first_without_secrets() {
    let (_tmp, data, _) = built().await;
    let (code, out) = cli(&[
        "history",
        "--data",
        d(&data),
        "--license",
        "north",
        "--jsonl",
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(
        !out.contains(SECRET_KEY_TEXT) && !out.contains("north-key"),
        "no secret prints"
    );
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 14);
    assert_eq!(rows[0]["event"], "LicenseIssued");
    assert_eq!(rows[0]["actor"], "staff");
    assert_eq!(rows[0]["time"], "2026-02-01T09:00:00+00:00");
    let positions: Vec<u64> = rows
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {positions:?}"
    );
    assert_eq!(rows.last().unwrap()["event"], "LicenseKeyRotated");
    assert_eq!(
        rows.last().unwrap()["change"],
        serde_json::json!({"key": "rotated"})
    );

    let (code, table) = cli(&["history", "--data", d(&data), "--license", "north"]).await;
    assert_eq!(code, EXIT_OK);
    assert!(table.starts_with("POS"), "{table}");
    assert_eq!(table.lines().count(), 15);
    assert!(
        table.contains("admin@north.edu") && table.contains("SeatsChanged"),
        "{table}"
    );

    // cid is on both licenses.
    let (code, out) = cli(&[
        "history",
        "--data",
        d(&data),
        "--user",
        "cid@x.edu",
        "--jsonl",
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    let rows = jsonl(&out);
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["stream"].as_str().unwrap(), r["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("license-north", "UserAdded"),
            ("license-south", "UserAdded")
        ]
    );
}

// ---------------------------------------------------------------- export

#[tokio::test]
async fn export_the_log_and_the_members_at_a_moment() {
    let (_tmp, data, _) = built().await;
    let (code, out) = cli(&["export", "--data", d(&data), "--format", "jsonl"]).await;
    assert_eq!(code, EXIT_OK, "{out}");
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 18);
    assert_eq!(rows[0]["position"], 1);
    assert!(
        !out.contains(SECRET_KEY_TEXT) && !out.contains("south-key"),
        "no secret exported"
    );

    let (code, out) = cli(&[
        "export",
        "--data",
        d(&data),
        "--format",
        "csv",
        "--from",
        "3",
        "--to",
        "6",
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "position,time,stream,revision,event,schema_version,actor,event_id,command_id,correlation_id,change"
    );
    assert_eq!(lines.len(), 4, "positions 3, 4, 5: {out}");
    assert!(
        lines[1].starts_with("3,2026-02-10T09:00:00+00:00,license-north,1,InviteSent,"),
        "{out}"
    );
    assert!(lines[1].ends_with("\"{\"\"email\"\":\"\"ann@x.edu\"\",\"\"role\"\":\"\"other\"\",\"\"source\"\":\"\"email\"\",\"\"status\"\":\"\"invited\"\"}\""), "{out}");

    let (code, out) = cli(&[
        "export",
        "--data",
        d(&data),
        "--format",
        "jsonl",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-11",
    ])
    .await;
    assert_eq!(code, EXIT_OK);
    assert_eq!(jsonl(&out).len(), 7, "positions 10..16: {out}");

    let (code, out) = cli(&[
        "export",
        "--data",
        d(&data),
        "--format",
        "csv",
        "--license",
        "south",
        "--at",
        "2026-03-07",
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert_eq!(
        out,
        "email,status,source,role,added_at,added_by,holds_seat\n\
         cid@x.edu,accepted,roster,student,2026-03-06T09:00:00+00:00,system,true\n\
         yul@y.edu,waitlisted,roster,student,2026-03-06T09:00:00+00:00,system,false\n\
         zed@y.edu,invited,email,other,2026-02-11T09:00:00+00:00,admin@north.edu,true\n"
    );
}

#[test]
fn csv_fields_are_quoted_and_formulas_defused() {
    assert_eq!(replay_tool::replay::csv_field("plain"), "plain");
    assert_eq!(replay_tool::replay::csv_field("a,b"), "\"a,b\"");
    assert_eq!(
        replay_tool::replay::csv_field("say \"hi\""),
        "\"say \"\"hi\"\"\""
    );
    assert_eq!(replay_tool::replay::csv_field("=cmd()"), "'=cmd()");
}

// ---------------------------------------------------------------- rebuild and digest (AUD-5)

/// Live projections as the server's projector would have built them, from the log's events
/// up to API position `upto`, leaving out the positions in `skip`.
async fn live_projections(data: &Path, upto: u64, skip: &[u64]) {
    live_projections_of_schema(data, upto, skip, projections::PROJECTION_SCHEMA_VERSION).await;
}

/// `live_projections` as a binary with another projection schema version would build them.
async fn live_projections_of_schema(data: &Path, upto: u64, skip: &[u64], schema_version: u32) {
    let source =
        replay_tool::source::Source::open(&replay_tool::source::Origin::Data(data.to_path_buf()))
            .await
            .unwrap();
    let events = source.read_everything().await.unwrap();
    source.close().await.unwrap();
    let p = projections::Projections::open_with_schema_version(
        data.join("projections"),
        schema_version,
    )
    .unwrap();
    let batch: Vec<_> = replay_tool::rebuild::projected(&events)
        .unwrap()
        .into_iter()
        .filter(|e| e.position <= upto && !skip.contains(&e.position))
        .collect();
    for chunk in batch.chunks(5) {
        p.apply_batch(chunk).unwrap();
    }
}

/// AUD-5: a rebuild from position 0 equals the live projections; it compares at the live
/// checkpoint when the live ones are behind, and then swaps in the whole log.
#[tokio::test]
async fn rebuild_matches_the_live_projections_and_digest_prints_them() {
    let (_tmp, data, _) = built().await;
    live_projections(&data, 15, &[]).await;
    let (code, out) = cli(&["rebuild", "--data", d(&data), "--no-progress"]).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("rebuilt 18 events"), "{out}");
    assert!(out.contains("at checkpoint 15"), "{out}");
    assert!(out.contains("all digests equal (AUD-5)"), "{out}");
    assert!(!out.contains("DIFFERENT"), "{out}");
    assert!(out.contains("now answer queries"), "{out}");

    let (code, live) = cli(&["digest", "--data", d(&data), "--json"]).await;
    assert_eq!(code, EXIT_OK, "{live}");
    let (code, replayed) = cli(&["digest", "--data", d(&data), "--replay", "--json"]).await;
    assert_eq!(code, EXIT_OK, "{replayed}");
    let live: Value = serde_json::from_str(&live).unwrap();
    let replayed: Value = serde_json::from_str(&replayed).unwrap();
    assert_eq!(
        live["checkpoint"], 18,
        "the rebuilt generation was swapped in"
    );
    assert_eq!(live, replayed);
    assert!(live["digests"].as_array().unwrap().len() > 3);
}

/// AUD-3 and AUD-5: `rebuild` and `digest --replay` refuse a tampered log, naming the
/// edited event (not merely failing to decode it), and leave the live projections as they
/// were.
#[tokio::test]
async fn rebuild_refuses_a_tampered_log_and_swaps_nothing_in() {
    let (_tmp, data, _) = built().await;
    live_projections(&data, 15, &[]).await;
    let (code, live_before) = cli(&["digest", "--data", d(&data), "--json"]).await;
    assert_eq!(code, EXIT_OK, "{live_before}");
    let mut edited = std::fs::read(segment_path(&data)).unwrap();
    edit_payload(&mut edited, 7);
    std::fs::write(segment_path(&data), &edited).unwrap();

    for args in [
        vec!["rebuild", "--data", d(&data), "--no-progress"],
        vec![
            "rebuild",
            "--data",
            d(&data),
            "--no-progress",
            "--compare-only",
        ],
        vec!["digest", "--data", d(&data), "--replay"],
    ] {
        let parsed = replay_tool::cli::Cli::try_parse_from(
            std::iter::once("replay-tool").chain(args.iter().copied()),
        )
        .unwrap();
        let mut out = Vec::new();
        let failure = replay_tool::cli::run(parsed, &mut out)
            .await
            .expect_err("a tampered log fails");
        assert_eq!(failure.code, EXIT_FAILED, "{args:?}: {failure:?}");
        // The walk's account of the edit, not the replay's failure to decode the payload.
        let message = &failure.message;
        assert!(
            message.contains("is corrupt")
                && message.contains("ledger position 7,")
                && message.contains("the event was edited")
                && message.contains("replay-tool verify"),
            "{args:?}: {message}"
        );
        assert!(out.is_empty(), "{args:?}: nothing reported");
    }
    let (code, live_after) = cli(&["digest", "--data", d(&data), "--json"]).await;
    assert_eq!(code, EXIT_OK, "{live_after}");
    assert_eq!(live_after, live_before, "nothing was swapped in");
}

/// `rebuild --compare-only` on a data directory: its exit code and output.
async fn rebuild_compare_only(data: &Path) -> (u8, String) {
    cli(&[
        "rebuild",
        "--data",
        d(data),
        "--no-progress",
        "--compare-only",
    ])
    .await
}

/// AUD-5 after an upgrade: projections built by an older binary have another layout, so the
/// rebuild replaces them without reporting their digests as different.
#[tokio::test]
async fn rebuild_replaces_projections_of_another_schema_version_without_comparing() {
    let (_tmp, data, _) = built().await;
    live_projections_of_schema(&data, 18, &[], projections::PROJECTION_SCHEMA_VERSION - 1).await;
    let (code, out) = cli(&["rebuild", "--data", d(&data), "--no-progress"]).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("another projection schema version"), "{out}");
    assert!(!out.contains("DIFFERENT"), "{out}");
    assert!(out.contains("now answer queries"), "{out}");
    // The swapped-in generation is of this version and agrees with the log.
    let (code, out) = rebuild_compare_only(&data).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("all digests equal (AUD-5)"), "{out}");
}

/// AUD-5 can fail: live projections that missed an event differ from the rebuild.
#[tokio::test]
async fn rebuild_reports_live_projections_that_differ() {
    let (_tmp, data, _) = built().await;
    live_projections(&data, 18, &[5]).await;
    let (code, out) = rebuild_compare_only(&data).await;
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains("DIFFERENT") && out.contains("digests differ for:"),
        "{out}"
    );
    assert!(
        !out.contains("now answer queries"),
        "compare-only leaves them: {out}"
    );
    let (_, json) = cli(&["rebuild", "--data", d(&data), "--no-progress", "--json"]).await;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert!(!v["differing"].as_array().unwrap().is_empty());
    assert_eq!(v["swapped"], true);
    // After the swap the live projections are the log's.
    let (code, out) = rebuild_compare_only(&data).await;
    assert_eq!(code, EXIT_OK, "{out}");
}

#[tokio::test]
async fn rebuild_without_live_projections_reports_its_digests() {
    let (_tmp, data, _) = built().await;
    let (code, out) = cli(&["rebuild", "--data", d(&data), "--no-progress"]).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("no live projections to compare with"), "{out}");
    let (code, _) = cli(&["digest", "--data", d(&data)]).await;
    assert_eq!(code, EXIT_USAGE, "no live projections to read");
}

#[test]
fn progress_line_shows_events_rate_and_eta() {
    let mut p = replay_tool::rebuild::Progress::new(Some(1000), false);
    p.advance(250);
    let line = p.line();
    assert!(
        line.contains("250/1000 events") && line.contains("events/s") && line.contains("ETA"),
        "{line}"
    );
}

// ---------------------------------------------------------------- chart

#[tokio::test]
async fn chart_draws_seat_use_over_time() {
    let (tmp, data, _) = built().await;
    let svg = tmp.path().join("north.svg");
    let (code, out) = cli(&[
        "chart",
        "--data",
        d(&data),
        "--license",
        "north",
        "--from",
        "2026-02-01",
        "--to",
        "2026-03-31",
        "--out",
        d(&svg),
    ])
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    if let Some(keep) = std::env::var_os("REPLAY_TOOL_KEEP_CHART") {
        // To look at the picture: REPLAY_TOOL_KEEP_CHART=/tmp/north.svg cargo test ... chart
        std::fs::copy(&svg, keep).unwrap();
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") || text.contains("<svg"), "an SVG");
    for label in [
        "accepted",
        "invited",
        "waitlisted",
        "seats",
        "Seat use of license north",
    ] {
        assert!(text.contains(label), "legend {label}");
    }

    let source =
        replay_tool::source::Source::open(&replay_tool::source::Origin::Data(data.clone()))
            .await
            .unwrap();
    let events = source.read_stream("license-north").await.unwrap();
    source.close().await.unwrap();
    let samples = replay_tool::chart::seat_samples(
        &events,
        time("2026-02-15T00:00:00Z"),
        time("2026-03-31T00:00:00Z"),
    )
    .unwrap();
    let tuples: Vec<(u64, u64, u64, u64)> = samples
        .iter()
        .map(|s| (s.seats, s.accepted, s.invited, s.waitlisted))
        .collect();
    assert_eq!(
        tuples,
        vec![
            (3, 0, 2, 0), // 15 Feb: ann and bob invited
            (3, 1, 2, 3), // 20 Feb: roster
            (5, 3, 2, 1), // 5 Mar: seats up, two promoted
            (5, 4, 1, 0), // 10 Mar: ann removed, fay promoted (one append, one time)
            (5, 5, 0, 0), // 12 Mar: bob accepts
            (5, 5, 0, 0), // 31 Mar: the end of the range
        ]
    );
}

// ---------------------------------------------------------------- the server's event feed

/// `--server`: the running server's feed gives the same history and as-of as the store,
/// while `--data` on its directory is refused as in use.
#[tokio::test]
async fn the_server_feed_is_a_source() {
    let (_tmp, data, _) = built().await;
    let (_, expected_history) = cli(&[
        "history",
        "--data",
        d(&data),
        "--license",
        "north",
        "--jsonl",
    ])
    .await;
    let (_, expected_as_of) = cli(&[
        "as-of",
        "--data",
        d(&data),
        "--license",
        "south",
        "--at",
        "2026-03-07",
        "--json",
    ])
    .await;
    let (_, expected_user) = cli(&[
        "history",
        "--data",
        d(&data),
        "--user",
        "cid@x.edu",
        "--jsonl",
    ])
    .await;

    let token = "replay-tool-test-token-0123456789";
    let mut tokens = server::Tokens::new();
    tokens.insert(token, server::Scope::Staff);
    let config =
        server::ServerConfig::embedded(&data, tokens, std::sync::Arc::new(server::SystemClock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let args = |extra: &[&str]| {
        let mut v = vec![
            "--server",
            addr.as_str(),
            "--token",
            token,
            "--idle-ms",
            "400",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let call = |a: Vec<String>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(&refs).await
    };
    let (code, out) = call(args(&["history", "--license", "north", "--jsonl"])).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert_eq!(out, expected_history);
    let (code, out) = cli(&["verify", "--data", d(&data)]).await;
    assert_eq!(
        code, EXIT_USAGE,
        "the running server holds the store: {out}"
    );
    let (code, out) = call(args(&[
        "as-of",
        "--license",
        "south",
        "--at",
        "2026-03-07",
        "--json",
    ]))
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert_eq!(out, expected_as_of);
    let (code, out) = call(args(&["history", "--user", "cid@x.edu", "--jsonl"])).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert_eq!(out, expected_user);
    let (code, _) = call(args(&["verify"])).await;
    assert_eq!(code, EXIT_USAGE, "the feed carries no hashes");
    let (code, _) = cli(&[
        "history",
        "--server",
        &addr,
        "--token",
        "wrong-token-wrong-token",
        "--license",
        "north",
    ])
    .await;
    assert_eq!(code, EXIT_USAGE, "a bad token is refused");

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

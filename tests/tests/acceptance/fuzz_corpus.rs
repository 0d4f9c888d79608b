//! The fuzz targets of `fuzz/` (README.md, "Fuzzing") need nightly, which CI does not have.
//! These tests run the targets' checks, the very functions the targets call, on every
//! committed seed and regression input, so that CI keeps the properties and every bug the
//! fuzzers found fixed.
//!
//! The seeds are made here, by hand-written examples: `fuzz/corpus/<target>/seed-*` must be
//! exactly what `seeds()` gives. After changing `seeds()`, rewrite them with
//! `UPDATE_FUZZ_SEEDS=1 cargo test -p tests --test acceptance fuzz_corpus::committed_seeds`
//! (that test alone: the replay test would read the folder while it is rewritten).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use domain::events::Event;
use ledger::RecordedEvent;
use prost::Message;
use proto::*;

/// The function a fuzz target runs on each input; it panics when a property fails.
type Check = fn(&[u8]);

/// Each fuzz target and its check.
const TARGETS: [(&str, Check); 4] = [
    ("csv_import", domain::fuzz_checks::csv_import),
    ("email", domain::fuzz_checks::email),
    ("envelope", server::fuzz_checks::envelope),
    ("request", server::fuzz_checks::request),
];

/// Seeds are small by design; the committed corpus stays far below a megabyte.
const SEED_BYTES_MAX: usize = 8 * 1024;

fn fuzz_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `folder` whose names start with `prefix`, by name. A missing folder has none.
fn files(folder: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return BTreeMap::new();
    };
    entries
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.is_file())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.to_owned();
            name.starts_with(prefix)
                .then(|| (name, std::fs::read(&path).expect("a corpus file reads")))
        })
        .collect()
}

#[test]
fn committed_seeds_are_the_generated_ones() {
    let update = std::env::var_os("UPDATE_FUZZ_SEEDS").is_some();
    for (target, _) in TARGETS {
        let folder = fuzz_folder().join("corpus").join(target);
        let generated: BTreeMap<String, Vec<u8>> = seeds(target)
            .into_iter()
            .map(|(name, bytes)| (format!("seed-{name}"), bytes))
            .collect();
        for (name, bytes) in &generated {
            assert!(bytes.len() <= SEED_BYTES_MAX, "{target}/{name} is too big");
        }
        if update {
            std::fs::create_dir_all(&folder).expect("the corpus folder is made");
            for name in files(&folder, "seed-").keys() {
                std::fs::remove_file(folder.join(name)).expect("an old seed is removed");
            }
            for (name, bytes) in &generated {
                std::fs::write(folder.join(name), bytes).expect("a seed is written");
            }
        }
        let committed = files(&folder, "seed-");
        assert_eq!(
            committed.keys().collect::<Vec<_>>(),
            generated.keys().collect::<Vec<_>>(),
            "the seeds of {target} differ from the generated ones; run with UPDATE_FUZZ_SEEDS=1"
        );
        for (name, bytes) in &generated {
            assert_eq!(&committed[name], bytes, "{target}/{name} differs");
        }
    }
}

#[test]
fn every_committed_seed_and_regression_input_passes_the_fuzz_checks() {
    for (target, check) in TARGETS {
        let seeds = files(&fuzz_folder().join("corpus").join(target), "seed-");
        assert!(seeds.len() >= 10, "{target} has only {} seeds", seeds.len());
        let regressions = files(&fuzz_folder().join("regressions").join(target), "");
        for (name, input) in seeds.iter().chain(&regressions) {
            let outcome = std::panic::catch_unwind(|| check(input));
            assert!(outcome.is_ok(), "{target}: {name} fails the fuzz checks");
        }
    }
}

/// The seeds of `target`, by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "csv_import" => csv_seeds(),
        "email" => email_seeds(),
        "envelope" => envelope_seeds(),
        "request" => request_seeds(),
        other => panic!("no seeds for {other}"),
    }
}

fn named(name: &str, bytes: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_owned(), bytes.into())
}

/// CSV files of the shapes spreadsheets export (CSV-1 .. CSV-4), each behind the two bytes
/// the target reads first: the row bound's index (0: 1 byte, 1: 4, 2: 9, 3: 20, 4: 100,
/// 5: 64 KiB) and the seed of the split plan.
fn csv_seeds() -> Vec<(String, Vec<u8>)> {
    let files: [(&str, u8, &[u8]); 16] = [
        (
            "spreadsheet-export",
            5,
            "\u{feff}Name,EMAIL \r\n\"Doe, Jane\",jane@north.edu\r\nBob,BOB@north.edu \r\n\r\nEve,not an email\r\n\"Ann\",\"ann@north.edu\"\r\nBob again,bob@north.edu\r\n".as_bytes(),
        ),
        ("plain-lf", 5, b"Email\nbob@north.edu\nnobody@north.edu\n"),
        ("missing-header", 5, b"Mail\nx@north.edu\n"),
        ("header-only", 5, b"Email"),
        ("lone-cr", 5, b"Email\ra@north.edu\rb@north.edu\r"),
        (
            "quoted-line-breaks",
            5,
            b"Note,Email\n\"a, \"\"b\"\"\r\nc\nd\",x@north.edu\n\"one, two\",\"Y@North.edu\"\nlast,bad\n",
        ),
        (
            "blank-and-white-space-rows",
            5,
            b"\nEmail\n\n\na@north.edu\r\n\r\n , ,\t\n,,\nBob,  \n",
        ),
        (
            "fewer-cells",
            5,
            b"Name,Email,Notes\nAnn,,x\nCid\nDee,d@north.edu\n",
        ),
        (
            "invalid-utf8-cells",
            5,
            b"Name,Email\nAnn,a\xff@north.edu\n\xff\xfe,b@north.edu\n",
        ),
        ("header-not-utf8", 5, b"Na\xffme,Email\na@north.edu\n"),
        (
            "double-byte-order-mark",
            5,
            b"\xef\xbb\xbf\xef\xbb\xbfEmail\nann@north.edu\n",
        ),
        (
            "unicode-emails",
            5,
            "Email\n\u{c9}L\u{c8}VE@\u{c9}cole.fr\n\u{130}lker@\u{f6}rnek.com.tr\n\u{3a3}\u{39f}\u{3a6}\u{399}\u{391}\u{3a3}@example.gr\nzero\u{200b}width@north.edu\n".as_bytes(),
        ),
        (
            "rows-over-a-small-bound",
            2,
            b"Email\r\na@b.co\r\nlonger@north.edu\r\nc@d.co\r\n\"quoted\nrow@north.edu\"\n",
        ),
        ("header-over-a-small-bound", 1, b"Name,Email\na@b.co\n"),
        (
            "quote-after-text",
            4,
            b"Email,Note\nab\"c@north.edu\",x\n\"a\"b@north.edu,\"\"\"\"\n",
        ),
        ("no-final-line-end", 3, b"Name,Email\nAnn,a@north.edu"),
    ];
    let mut seeds = Vec::new();
    for (name, bound, file) in files {
        // Two split plans each: 0 makes chunks of the xorshift's first lengths, 7 others.
        for split in [0u8, 7] {
            let mut input = vec![bound, split];
            input.extend_from_slice(file);
            seeds.push(named(&format!("{name}-{split}"), input));
        }
    }
    seeds
}

/// Emails and domains a person may paste (SPEC §1, ADD-2), among them characters whose
/// lower case is longer than they are, final sigma, and invisible characters.
fn email_seeds() -> Vec<(String, Vec<u8>)> {
    let texts: [(&str, String); 18] = [
        ("mixed-case", "Ann@North.EDU".into()),
        ("white-space-around", "  bob@north.edu\t\r\n".into()),
        (
            "plus-and-subdomain",
            "user+tag@mail.school.north.edu".into(),
        ),
        ("accents", "\u{c0}LICE@\u{c9}COLE.FR".into()),
        ("dotted-capital-i", "\u{130}lker@\u{d6}RNEK.com.tr".into()),
        (
            "final-sigma",
            "\u{39f}\u{394}\u{3a5}\u{3a3}\u{3a3}\u{395}\u{3a5}\u{3a3}@example.gr".into(),
        ),
        ("kelvin-and-sharp-s", "\u{212a}\u{1e9e}@x.de".into()),
        ("lower-case-grows", format!("{}@x.co", "\u{23a}".repeat(80))),
        (
            "at-the-length-bound",
            format!("{}@north.edu", "a".repeat(244)),
        ),
        (
            "over-the-length-bound",
            format!("{}@north.edu", "a".repeat(245)),
        ),
        ("no-dot", "a@north".into()),
        ("two-at-signs", "a@b@north.edu".into()),
        ("empty-label", "a@north..edu".into()),
        ("empty-local-part", "@north.edu".into()),
        ("zero-width-space", "zero\u{200b}width@north.edu".into()),
        ("next-line-control", "a@north.edu\u{85}".into()),
        ("domain-only", " North.EDU ".into()),
        ("byte-order-mark", "\u{feff}a@north.edu".into()),
    ];
    let mut seeds: Vec<_> = texts
        .into_iter()
        .map(|(name, text)| named(name, text))
        .collect();
    seeds.push(named("not-utf8", b"a\xff@north.edu".to_vec()));
    seeds
}

/// Records whose payloads are the golden samples of every event type (mode 0), envelopes
/// made from bytes (mode 1), and the golden payloads given straight to the event decoder
/// (mode 2).
fn envelope_seeds() -> Vec<(String, Vec<u8>)> {
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../domain/tests/golden/events_v1.txt"),
    )
    .expect("the golden events are there");
    let mut seeds = Vec::new();
    for (index, line) in golden.lines().enumerate() {
        let mut parts = line.split(' ');
        let (Some(event_type), Some(version), Some(hex)) =
            (parts.next(), parts.next(), parts.next())
        else {
            panic!("a golden line has a type, a version and a payload: {line}");
        };
        let version: u16 = version.parse().expect("a version number");
        let payload = from_hex(hex);
        let type_index = Event::TYPE_NAMES
            .iter()
            .position(|name| *name == event_type)
            .expect("a golden type is an event type");
        let event = RecordedEvent {
            event_id: uuid::Uuid::from_u128(index as u128 + 1),
            stream: "license-L1".into(),
            revision: index as u64,
            position: 100 + index as u64,
            event_type: event_type.into(),
            schema_version: version,
            recorded_at: Utc
                .timestamp_opt(1_785_542_400 + index as i64, 250_000_000)
                .single()
                .expect("a valid time"),
            actor: "admin@north.edu".into(),
            command_id: uuid::Uuid::from_u128(7),
            correlation_id: uuid::Uuid::from_u128(8),
            payload: payload.clone(),
            predecessor_hash: [index as u8; 32],
            hash: [0; 32],
        };
        let mut record = vec![0];
        record.extend(ledger::fuzz_checks::encode_record_body(&event, 1, None));
        seeds.push(named(&format!("record-{event_type}"), record));
        if index == 0 {
            // The last record of an append may keep its command's answer (AUD-4).
            let mut answered = vec![0];
            answered.extend(ledger::fuzz_checks::encode_record_body(
                &event,
                1,
                Some(b"\x01answer"),
            ));
            seeds.push(named("record-answered", answered));
        }
        let mut direct = vec![2, type_index as u8];
        direct.extend_from_slice(&version.to_be_bytes());
        direct.extend_from_slice(&payload);
        seeds.push(named(&format!("payload-{event_type}"), direct));
    }
    seeds.push(named("made-envelope-empty", vec![1]));
    let mut made = vec![1, 1, 10];
    made.extend_from_slice(b"license-L1");
    made.extend_from_slice(&[0x5a; 120]);
    seeds.push(named("made-envelope", made));
    seeds.push(named("payload-unknown-type", vec![2, 0xff, 0, 1, 0x80]));
    seeds.push(named("payload-version-2", vec![2, 0, 0, 2, 0x80]));
    seeds
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hexadecimal digits"))
        .collect()
}

/// Requests of each kind the `request` target decodes, valid ones from the README's session
/// and refused ones, each behind the byte that picks the message type.
fn request_seeds() -> Vec<(String, Vec<u8>)> {
    fn seed(name: &str, kind: u8, message: impl Message) -> (String, Vec<u8>) {
        let mut input = vec![kind];
        input.extend(message.encode_to_vec());
        named(name, input)
    }
    let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect();
    vec![
        seed(
            "issue-license",
            0,
            IssueLicenseRequest {
                license: "L1".into(),
                r#type: "school".into(),
                seats: 30,
                valid_from: "2026-08-01T00:00:00Z".into(),
                valid_until: "2027-07-31T23:59:59Z".into(),
                admins: strings(&["admin@north.edu"]),
            },
        ),
        seed(
            "issue-license-bad-time",
            0,
            IssueLicenseRequest {
                license: "L1".into(),
                r#type: "Teacher".into(),
                seats: -1,
                valid_from: "2026-08-01".into(),
                ..IssueLicenseRequest::default()
            },
        ),
        seed(
            "renew-license",
            1,
            RenewLicenseRequest {
                license: "L1".into(),
                valid_until: "2028-07-31T23:59:59+02:00".into(),
            },
        ),
        seed(
            "change-seats-too-many",
            2,
            ChangeSeatsRequest {
                license: "L1".into(),
                seats: i64::MAX,
            },
        ),
        seed(
            "grant-license-admin",
            3,
            LicenseAdminRequest {
                license: "L1".into(),
                email: "Second@North.edu".into(),
            },
        ),
        seed(
            "grant-domain-admin",
            5,
            DomainAdminRequest {
                domain: "north.edu".into(),
                email: "admin@north.edu".into(),
            },
        ),
        seed(
            "add-users-by-email",
            7,
            AddUsersByEmailRequest {
                license: "L1".into(),
                emails: "a@north.edu, b@gmail.com\r\nnot an email,,\n@x.y".into(),
            },
        ),
        seed(
            "import-csv-start",
            8,
            ImportCsvChunk {
                part: Some(import_csv_chunk::Part::Start(ImportCsvStart {
                    license: "L1".into(),
                    mode: "remove".into(),
                })),
            },
        ),
        seed(
            "remove-users",
            9,
            RemoveUsersRequest {
                license: "L1".into(),
                emails: strings(&["a@north.edu", "nobody", ""]),
            },
        ),
        seed(
            "set-feature-permission",
            10,
            SetFeaturePermissionRequest {
                license: "L1".into(),
                feature: "pdf_export".into(),
                enabled: true,
                role: "teacher".into(),
            },
        ),
        seed(
            "link-ou",
            12,
            LinkOuRequest {
                license: "L1".into(),
                ou_paths: strings(&["/Students/Grade 5", "Teachers"]),
                google_admin: true,
            },
        ),
        seed(
            "sync-ou",
            13,
            SyncOuRequest {
                license: "L1".into(),
                members: vec![OuMember {
                    email: "kid@north.edu".into(),
                    ou_path: "/Students".into(),
                    role: "student".into(),
                    suspended: true,
                }],
            },
        ),
        seed(
            "claim-domain",
            14,
            ClaimDomainRequest {
                license: "L1".into(),
                domain: "North.EDU".into(),
                dedicated: true,
            },
        ),
        seed(
            "user-signed-up",
            16,
            UserSignedUpRequest {
                email: "new@north.edu".into(),
                role: "other".into(),
            },
        ),
        seed(
            "scan-domain",
            17,
            ScanDomainRequest {
                domain: "north.edu".into(),
                accounts: vec![ScannedAccount {
                    email: "t@north.edu".into(),
                    role: "teacher".into(),
                }],
            },
        ),
        seed(
            "assignment-opened",
            18,
            AssignmentOpenedRequest {
                teacher: "teach@north.edu".into(),
                student: "kid@north.edu".into(),
                lms: "google_classroom".into(),
                kami_assignment: true,
            },
        ),
        seed(
            "sync-classroom-roster",
            19,
            SyncClassroomRosterRequest {
                license: "L1".into(),
                course: "course-1".into(),
                students: strings(&["kid@north.edu", "other@north.edu"]),
            },
        ),
        seed(
            "license-ref",
            20,
            LicenseRef {
                license: "L-1_x".into(),
            },
        ),
    ]
}

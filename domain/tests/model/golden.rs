//! AUD-2: events are read forever. `tests/golden/events_v1.txt` holds one encoded sample of
//! every event type as it was first written; this test decodes each and compares it with the
//! sample built here. A change that breaks an old event fails CI. Regenerate the file only
//! for a new event type (`UPDATE_GOLDEN=1 cargo test -p domain --test model golden`), never
//! to paper over a changed payload: bump that type's schema version and add an upcaster.

use chrono::{DateTime, Utc};
use domain::events::*;
use domain::{
    DomainName, Email, FeatureName, LicenseId, LicenseType, OuPath, Role, Secret, Source,
};

const GOLDEN_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/events_v1.txt");

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

fn email(raw: &str) -> Email {
    Email::parse(raw).unwrap()
}

fn counts() -> OuSyncCounts {
    OuSyncCounts {
        added: 3,
        removed: 1,
        readded: 1,
        skipped_suspended: 2,
        waitlisted: 4,
    }
}

/// One sample of every event type, with every optional field set in at least one of them.
fn samples() -> Vec<Event> {
    let domain = DomainName::parse("north.edu").unwrap();
    let license = LicenseId::parse("L1").unwrap();
    let ou_entry = OuEntry {
        email: email("kid@north.edu"),
        ou_path: OuPath::parse("/Students/Grade 5").unwrap(),
        role: Role::Student,
        suspended: false,
    };
    vec![
        LicenseIssued {
            license: license.clone(),
            license_type: LicenseType::Teacher,
            seats: 30,
            valid_from: at("2026-08-01T00:00:00Z"),
            valid_until: at("2027-07-31T23:59:59Z"),
            admins: vec![email("teach@north.edu")],
            key: Secret::new("key0123456789abcdefghijk".into()).unwrap(),
            link: Some(Secret::new("link0123456789abcdefghij".into()).unwrap()),
            auto_enrollment: true,
        }
        .into(),
        LicenseRenewed {
            valid_until: at("2028-07-31T23:59:59Z"),
            previous_valid_until: at("2027-07-31T23:59:59Z"),
        }
        .into(),
        SeatsChanged {
            seats: 40,
            previous_seats: 30,
        }
        .into(),
        LicenseAdminGranted {
            email: email("second@north.edu"),
        }
        .into(),
        LicenseAdminRevoked {
            email: email("second@north.edu"),
        }
        .into(),
        DomainAdminGranted {
            domain: domain.clone(),
            email: email("it@north.edu"),
        }
        .into(),
        DomainAdminRevoked {
            domain: domain.clone(),
            email: email("it@north.edu"),
        }
        .into(),
        UserAdded {
            email: email("kid@north.edu"),
            source: Source::Ou,
            role: Role::Student,
            ou_path: Some(OuPath::parse("/Students").unwrap()),
        }
        .into(),
        InviteSent {
            email: email("guest@gmail.com"),
            source: Source::Csv,
            role: Role::Other,
        }
        .into(),
        InviteAccepted {
            email: email("guest@gmail.com"),
        }
        .into(),
        InviteRejected {
            email: email("guest@gmail.com"),
        }
        .into(),
        UserWaitlisted {
            email: email("late@north.edu"),
            source: Source::Key,
            role: Role::Other,
            ou_path: None,
        }
        .into(),
        UserPromoted {
            email: email("late@north.edu"),
        }
        .into(),
        UserRemoved {
            email: email("kid@north.edu"),
            reason: RemovalReason::OuSync,
        }
        .into(),
        LicenseKeyRotated {
            key: Secret::new("key1123456789abcdefghijk".into()).unwrap(),
        }
        .into(),
        JoinLinkRotated {
            link: Secret::new("link1123456789abcdefghij".into()).unwrap(),
        }
        .into(),
        FeaturePermissionSet {
            feature: FeatureName::parse("text_to_speech").unwrap(),
            enabled: false,
            role: Some(Role::Student),
        }
        .into(),
        AutoEnrollmentSet { enabled: false }.into(),
        OuLinked {
            ou_paths: vec![OuPath::parse("/Students").unwrap()],
        }
        .into(),
        OuUnlinked {
            ou_paths: vec![OuPath::parse("/Students").unwrap()],
        }
        .into(),
        OuSynced { counts: counts() }.into(),
        OuSyncHeld {
            entries: vec![ou_entry],
            would: counts(),
            reason: "the directory reported no users at all".into(),
        }
        .into(),
        OuSyncConfirmed { entries_count: 1 }.into(),
        DomainClaimed {
            domain: domain.clone(),
            license: license.clone(),
        }
        .into(),
        DomainReleased { domain, license }.into(),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("golden file holds hex"))
        .collect()
}

#[test]
fn every_event_type_has_a_golden_sample() {
    // AUD-2
    let mut sampled: Vec<&str> = samples().iter().map(Event::type_name).collect();
    sampled.sort_unstable();
    let mut all = Event::TYPE_NAMES.to_vec();
    all.sort_unstable();
    assert_eq!(sampled, all);
}

#[test]
fn golden_events_still_decode_to_the_same_values() {
    // AUD-2
    let samples = samples();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text: String = samples
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}\n",
                    e.type_name(),
                    e.schema_version(),
                    hex(&e.encode())
                )
            })
            .collect();
        std::fs::write(GOLDEN_PATH, text).expect("golden file is writable");
    }
    let golden = std::fs::read_to_string(GOLDEN_PATH).expect("golden file exists");
    let lines: Vec<&str> = golden.lines().collect();
    assert_eq!(lines.len(), samples.len(), "one golden line per sample");
    for (line, sample) in lines.iter().zip(&samples) {
        let mut parts = line.split(' ');
        let (event_type, version, payload) = (
            parts.next().unwrap(),
            parts.next().unwrap().parse::<u16>().unwrap(),
            unhex(parts.next().unwrap()),
        );
        let decoded = Event::decode(event_type, version, &payload)
            .unwrap_or_else(|error| panic!("golden {event_type} no longer decodes: {error}"));
        assert_eq!(
            &decoded, sample,
            "golden {event_type} decodes to another value"
        );
    }
}

#[test]
fn decoding_refuses_unknown_types_versions_and_bytes() {
    // AUD-2: an unreadable event is an error, never a silently wrong value.
    let sample = &samples()[0];
    let bytes = sample.encode();
    assert!(matches!(
        Event::decode("NoSuchEvent", 1, &bytes),
        Err(DecodeError::UnknownType(_))
    ));
    assert!(matches!(
        Event::decode(sample.type_name(), 99, &bytes),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        Event::decode(sample.type_name(), 1, &bytes[..bytes.len() / 2]),
        Err(DecodeError::Payload { .. })
    ));
    // A payload whose email breaks SPEC §1 must not decode into an Email.
    let forged = rmp_serde::to_vec_named(&serde_json::json!({"email": "not an email"})).unwrap();
    assert!(Event::decode("InviteAccepted", 1, &forged).is_err());
}

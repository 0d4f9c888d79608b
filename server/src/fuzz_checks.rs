//! The fuzz targets `request` and `envelope` as plain functions, so that the stable test
//! suite replays the committed corpus through exactly what the fuzzer runs. Each function
//! takes the raw fuzz input and panics when a property fails: a panic is what a fuzzer
//! reports.
//!
//! `envelope` lives here because the server is where both halves meet: it reads records
//! with the ledger and their payloads with the domain.
//!
//! Not part of the server's API; hidden from the documentation.

use std::fmt::Debug;

use domain::{Email, LicenseCommand, LicenseId, Secret};
use prost::Message;
use proto::*;
use tonic::{Code, Status};

use crate::requests;

/// The longest message an INVALID_ARGUMENT from the request edge may have. Messages repeat
/// at most a shortened part of the input, so junk in a request never comes back whole.
pub const INVALID_MESSAGE_LENGTH_MAX_BYTES: usize = 1024;

/// The most characters an `InvalidEntry` repeats of what was typed, its '…' included.
const INVALID_ENTRY_ECHO_MAX_CHARS: usize = domain::email_list::ENTRY_ECHO_LENGTH_MAX_CHARS;

/// The request messages the `request` target decodes, in the order of the selector byte.
const REQUEST_KINDS: usize = 21;

/// Fuzz target `request`: one byte choosing the request message, then its protobuf bytes.
///
/// Properties (ERR-1, ERR-3): mapping a request to a domain command never panics; it is
/// deterministic; a refusal is INVALID_ARGUMENT with a non-empty message of bounded
/// length; an accepted request accounts for every entry it carried (none dropped or
/// invented) and its values parse again to themselves.
pub fn request(input: &[u8]) {
    let [kind, bytes @ ..] = input else {
        return;
    };
    match usize::from(*kind) % REQUEST_KINDS {
        0 => issue_license(bytes),
        1 => license_command::<RenewLicenseRequest>(bytes, requests::renew_license),
        2 => license_command::<ChangeSeatsRequest>(bytes, requests::change_seats),
        3 => license_command::<LicenseAdminRequest>(bytes, requests::grant_license_admin),
        4 => license_command::<LicenseAdminRequest>(bytes, requests::revoke_license_admin),
        5 => {
            map_twice::<DomainAdminRequest, _>(bytes, |r| requests::domain_admin(&r, true));
        }
        6 => {
            map_twice::<DomainAdminRequest, _>(bytes, |r| requests::domain_admin(&r, false));
        }
        7 => add_users_by_email(bytes),
        8 => import_csv_start(bytes),
        9 => remove_users(bytes),
        10 => {
            license_command::<SetFeaturePermissionRequest>(bytes, requests::set_feature_permission)
        }
        11 => license_command::<SetAutoEnrollmentRequest>(bytes, requests::set_auto_enrollment),
        12 => license_command::<LinkOuRequest>(bytes, requests::link_ou),
        13 => sync_ou(bytes),
        14 => {
            map_twice::<ClaimDomainRequest, _>(bytes, |r| {
                requests::domain_claim(&r.domain, &r.license)
            });
        }
        15 => {
            map_twice::<ReleaseDomainRequest, _>(bytes, |r| {
                requests::domain_claim(&r.domain, &r.license)
            });
        }
        16 => {
            map_twice::<UserSignedUpRequest, _>(bytes, |r| requests::user_signed_up(&r));
        }
        17 => scan_domain(bytes),
        18 => {
            map_twice::<AssignmentOpenedRequest, _>(bytes, |r| requests::assignment_opened(&r));
        }
        19 => sync_classroom_roster(bytes),
        _ => {
            if let Some(license) =
                map_twice(bytes, |r: LicenseRef| requests::parse_license(&r.license))
            {
                check_license(&license);
            }
        }
    }
}

/// A secret of the right shape that is the same on every run, so that mapping twice gives
/// equal commands.
fn fixed_secret(digit: char) -> Secret {
    Secret::new(digit.to_string().repeat(32)).expect("32 hexadecimal digits are a secret")
}

/// Decodes `bytes` as `M` the way tonic does and maps the request twice: both answers must
/// be equal, a refusal must be a clean INVALID_ARGUMENT. Bytes that are not an `M` are
/// refused by tonic before any handler runs, so they end the check.
fn map_twice<M, T>(bytes: &[u8], map: impl Fn(M) -> Result<T, Status>) -> Option<T>
where
    M: Message + Default + Clone,
    T: PartialEq + Debug,
{
    let request = M::decode(bytes).ok()?;
    let first = map(request.clone());
    let second = map(request);
    match (first, second) {
        (Ok(first), Ok(second)) => {
            assert_eq!(first, second, "the mapping is not deterministic");
            Some(first)
        }
        (Err(first), Err(second)) => {
            assert_eq!(first.code(), Code::InvalidArgument, "{first:?}");
            assert_eq!(first.message(), second.message());
            assert!(!first.message().is_empty());
            assert!(
                first.message().len() <= INVALID_MESSAGE_LENGTH_MAX_BYTES,
                "a message of {} bytes",
                first.message().len()
            );
            None
        }
        (first, second) => panic!("the mapping is not deterministic: {first:?} then {second:?}"),
    }
}

fn license_command<M: Message + Default + Clone>(
    bytes: &[u8],
    map: impl Fn(M) -> Result<(LicenseId, LicenseCommand), Status>,
) {
    if let Some((license, _)) = map_twice(bytes, map) {
        check_license(&license);
    }
}

fn check_license(license: &LicenseId) {
    assert_eq!(LicenseId::parse(license.as_str()).as_ref(), Ok(license));
}

fn check_email(email: &Email) {
    assert_eq!(Email::parse(email.as_str()).as_ref(), Ok(email));
}

fn issue_license(bytes: &[u8]) {
    let mapped = map_twice(bytes, |r: IssueLicenseRequest| {
        requests::issue_license(r, fixed_secret('a'), fixed_secret('b'))
    });
    if let Some((license, command)) = mapped {
        check_license(&license);
        let LicenseCommand::Issue { license: named, .. } = command else {
            panic!("IssueLicense mapped to another command");
        };
        assert_eq!(named, license);
    }
}

fn add_users_by_email(bytes: &[u8]) {
    let Some(request) = AddUsersByEmailRequest::decode(bytes).ok() else {
        return;
    };
    let Some((license, emails, invalid)) = map_twice(bytes, |r: AddUsersByEmailRequest| {
        requests::add_users_by_email(&r)
    }) else {
        return;
    };
    check_license(&license);
    emails.iter().for_each(check_email);
    // ADD-1, ADD-2: every non-blank entry is either an email or reported, at its position.
    let entries = request
        .emails
        .split([',', '\n', '\r'])
        .filter(|entry| !entry.trim().is_empty())
        .count();
    assert_eq!(emails.len() + invalid.len(), entries);
    let mut previous = 0;
    for entry in &invalid {
        assert!(entry.position > previous && entry.position as usize <= entries);
        previous = entry.position;
        assert!(!entry.reason.is_empty());
        assert!(entry.value.chars().count() <= INVALID_ENTRY_ECHO_MAX_CHARS);
    }
}

fn import_csv_start(bytes: &[u8]) {
    let Ok(ImportCsvChunk {
        part: Some(import_csv_chunk::Part::Start(start)),
    }) = ImportCsvChunk::decode(bytes)
    else {
        return;
    };
    let start = start.encode_to_vec();
    map_twice(&start, |start: ImportCsvStart| {
        let removes = requests::import_csv_removes(&start)?;
        Ok((removes, requests::parse_license(&start.license)?))
    });
}

fn remove_users(bytes: &[u8]) {
    let Some(request) = RemoveUsersRequest::decode(bytes).ok() else {
        return;
    };
    if let Some((license, emails, not_emails)) =
        map_twice(bytes, |r: RemoveUsersRequest| requests::remove_users(&r))
    {
        check_license(&license);
        emails.iter().for_each(check_email);
        assert_eq!(
            emails.len() as u64 + not_emails,
            request.emails.len() as u64
        );
    }
}

fn sync_ou(bytes: &[u8]) {
    let Some(request) = SyncOuRequest::decode(bytes).ok() else {
        return;
    };
    if let Some((license, entries)) = map_twice(bytes, |r: SyncOuRequest| requests::sync_ou(&r)) {
        check_license(&license);
        assert_eq!(entries.len(), request.members.len());
        for (entry, member) in entries.iter().zip(&request.members) {
            check_email(&entry.email);
            assert_eq!(entry.suspended, member.suspended);
        }
    }
}

fn scan_domain(bytes: &[u8]) {
    let Some(request) = ScanDomainRequest::decode(bytes).ok() else {
        return;
    };
    if let Some((_, accounts)) = map_twice(bytes, |r: ScanDomainRequest| requests::scan_domain(&r))
    {
        assert_eq!(accounts.len(), request.accounts.len());
        accounts
            .iter()
            .for_each(|account| check_email(&account.email));
    }
}

fn sync_classroom_roster(bytes: &[u8]) {
    let Some(request) = SyncClassroomRosterRequest::decode(bytes).ok() else {
        return;
    };
    if let Some((license, students)) = map_twice(bytes, |r: SyncClassroomRosterRequest| {
        requests::sync_classroom_roster(&r)
    }) {
        check_license(&license);
        assert_eq!(students.len(), request.students.len());
        students.iter().for_each(check_email);
    }
}

/// Fuzz target `envelope`: one byte choosing the mode, then its bytes.
///
/// Mode 0: arbitrary bytes as a record body and a framed record (`ledger::fuzz_checks::record`),
/// and the payload of a body that decodes through the domain's event decoder. Mode 1: bytes
/// made into a valid envelope that must round-trip (`ledger::fuzz_checks::envelope_round_trip`).
/// Mode 2: a type name, a version and arbitrary payload bytes through the domain's event
/// decoder (`domain::fuzz_checks::event_payload_input`).
pub fn envelope(input: &[u8]) {
    let [mode, bytes @ ..] = input else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Some(event) = ledger::fuzz_checks::record(bytes) {
                domain::fuzz_checks::event_payload(
                    &event.event_type,
                    event.schema_version,
                    &event.payload,
                );
            }
        }
        1 => ledger::fuzz_checks::envelope_round_trip(bytes),
        _ => domain::fuzz_checks::event_payload_input(bytes),
    }
}

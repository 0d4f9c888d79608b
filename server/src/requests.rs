//! The edge between the wire and the domain: each command request, as prost decoded it,
//! becomes the value types of a domain command, or INVALID_ARGUMENT with a message for a
//! person (ERR-1 puts that refusal before every other). These functions are pure (no
//! authentication, no state, no I/O), so the `request` fuzz target and its stable replay
//! test call exactly what `commands.rs` calls.

use chrono::{DateTime, Utc};
use domain::email_list::parse_email_list;
use domain::events::OuEntry;
use domain::{
    DomainCommand, DomainName, Email, FeatureName, LicenseCommand, LicenseId, LicenseType, Lms,
    OuPath, Role, ScannedAccount, Secret,
};
use proto::*;
use tonic::Status;

use crate::status::{from_domain, invalid};

pub fn parse_time(raw: &str, name: &str) -> Result<DateTime<Utc>, Status> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            invalid(format!(
                "{name} must be an RFC 3339 time such as 2026-08-01T00:00:00Z"
            ))
        })
}

pub fn parse_email(raw: &str, name: &str) -> Result<Email, Status> {
    Email::parse(raw).map_err(|reason| invalid(format!("{name}: {reason}")))
}

pub fn parse_domain(raw: &str) -> Result<DomainName, Status> {
    DomainName::parse(raw).map_err(|reason| invalid(format!("domain: {reason}")))
}

pub fn parse_license(raw: &str) -> Result<LicenseId, Status> {
    LicenseId::parse(raw).map_err(|e| from_domain(&e))
}

pub fn parse_seats(seats: i64) -> Result<u32, Status> {
    u32::try_from(seats).map_err(|_| {
        invalid(format!(
            "seats must be between {} and {}, not {seats}",
            domain::SEATS_MIN,
            domain::SEATS_MAX
        ))
    })
}

/// LIC-1. `key` and `link` are the fresh secrets the caller made for the new license.
pub fn issue_license(
    r: IssueLicenseRequest,
    key: Secret,
    link: Secret,
) -> Result<(LicenseId, LicenseCommand), Status> {
    let license = parse_license(&r.license)?;
    let command = LicenseCommand::Issue {
        license: license.clone(),
        license_type: LicenseType::parse(&r.r#type).map_err(|e| from_domain(&e))?,
        seats: parse_seats(r.seats)?,
        valid_from: parse_time(&r.valid_from, "valid_from")?,
        valid_until: parse_time(&r.valid_until, "valid_until")?,
        admins: r
            .admins
            .iter()
            .map(|a| parse_email(a, "admins"))
            .collect::<Result<Vec<_>, _>>()?,
        key,
        link,
    };
    Ok((license, command))
}

pub fn renew_license(r: RenewLicenseRequest) -> Result<(LicenseId, LicenseCommand), Status> {
    let command = LicenseCommand::Renew {
        valid_until: parse_time(&r.valid_until, "valid_until")?,
    };
    Ok((parse_license(&r.license)?, command))
}

pub fn change_seats(r: ChangeSeatsRequest) -> Result<(LicenseId, LicenseCommand), Status> {
    let command = LicenseCommand::ChangeSeats {
        seats: parse_seats(r.seats)?,
    };
    Ok((parse_license(&r.license)?, command))
}

pub fn grant_license_admin(r: LicenseAdminRequest) -> Result<(LicenseId, LicenseCommand), Status> {
    let command = LicenseCommand::GrantAdmin {
        email: parse_email(&r.email, "email")?,
    };
    Ok((parse_license(&r.license)?, command))
}

pub fn revoke_license_admin(r: LicenseAdminRequest) -> Result<(LicenseId, LicenseCommand), Status> {
    let command = LicenseCommand::RevokeAdmin {
        email: parse_email(&r.email, "email")?,
    };
    Ok((parse_license(&r.license)?, command))
}

/// INV-1: the domain and the command for it.
pub fn domain_admin(
    r: &DomainAdminRequest,
    grant: bool,
) -> Result<(DomainName, DomainCommand), Status> {
    let domain = parse_domain(&r.domain)?;
    let email = parse_email(&r.email, "email")?;
    let command = if grant {
        DomainCommand::GrantAdmin { email }
    } else {
        DomainCommand::RevokeAdmin { email }
    };
    Ok((domain, command))
}

/// ADD-1, ADD-2: the license, the valid emails in order, and the entries that are not
/// emails with their reasons. Only a list too large to handle refuses the request.
pub fn add_users_by_email(
    r: &AddUsersByEmailRequest,
) -> Result<(LicenseId, Vec<Email>, Vec<InvalidEntry>), Status> {
    let entries = parse_email_list(&r.emails).map_err(|e| from_domain(&e))?;
    let license = parse_license(&r.license)?;
    let mut emails = Vec::with_capacity(entries.len());
    let mut invalid_entries = Vec::new();
    for entry in entries {
        match entry.email {
            Ok(email) => emails.push(email),
            Err(reason) => invalid_entries.push(InvalidEntry {
                position: entry.position,
                value: entry.value,
                reason,
            }),
        }
    }
    Ok((license, emails, invalid_entries))
}

/// CSV-1: whether an import removes (`remove`) rather than adds (`add`).
pub fn import_csv_removes(start: &ImportCsvStart) -> Result<bool, Status> {
    match start.mode.as_str() {
        "add" => Ok(false),
        "remove" => Ok(true),
        _ => Err(invalid("mode must be 'add' or 'remove'")),
    }
}

/// REM-1: the license, the entries that are emails, and how many are not (those cannot be
/// members, so they count as not found).
pub fn remove_users(r: &RemoveUsersRequest) -> Result<(LicenseId, Vec<Email>, u64), Status> {
    let license = parse_license(&r.license)?;
    let mut not_emails = 0u64;
    let emails: Vec<Email> = r
        .emails
        .iter()
        .filter_map(|raw| Email::parse(raw).map_err(|_| not_emails += 1).ok())
        .collect();
    Ok((license, emails, not_emails))
}

/// LIC-7.
pub fn set_feature_permission(
    r: SetFeaturePermissionRequest,
) -> Result<(LicenseId, LicenseCommand), Status> {
    let feature = FeatureName::parse(&r.feature).map_err(|e| from_domain(&e))?;
    let role = if r.role.trim().is_empty() {
        None
    } else {
        Some(Role::parse(&r.role).map_err(|e| from_domain(&e))?)
    };
    let command = LicenseCommand::SetFeature {
        feature,
        enabled: r.enabled,
        role,
    };
    Ok((parse_license(&r.license)?, command))
}

/// LMS-1.
pub fn set_auto_enrollment(
    r: SetAutoEnrollmentRequest,
) -> Result<(LicenseId, LicenseCommand), Status> {
    let command = LicenseCommand::SetAutoEnrollment { enabled: r.enabled };
    Ok((parse_license(&r.license)?, command))
}

/// OU-1.
pub fn link_ou(r: LinkOuRequest) -> Result<(LicenseId, LicenseCommand), Status> {
    let ou_paths = r
        .ou_paths
        .iter()
        .map(|p| OuPath::parse(p).map_err(|e| from_domain(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let command = LicenseCommand::LinkOu {
        ou_paths,
        google_admin: r.google_admin,
    };
    Ok((parse_license(&r.license)?, command))
}

/// OU-3: the license and the directory's users, each checked; a bad entry names its index.
pub fn sync_ou(r: &SyncOuRequest) -> Result<(LicenseId, Vec<OuEntry>), Status> {
    let mut entries = Vec::with_capacity(r.members.len());
    for (index, member) in r.members.iter().enumerate() {
        entries.push(OuEntry {
            email: parse_email(&member.email, &format!("members[{index}].email"))?,
            ou_path: OuPath::parse(&member.ou_path)
                .map_err(|e| invalid(format!("members[{index}].ou_path: {}", e.message())))?,
            role: Role::parse(&member.role)
                .map_err(|e| invalid(format!("members[{index}].role: {}", e.message())))?,
            suspended: member.suspended,
        });
    }
    Ok((parse_license(&r.license)?, entries))
}

/// DOM-1, DOM-2: the domain and the license of a claim or a release.
pub fn domain_claim(domain: &str, license: &str) -> Result<(DomainName, LicenseId), Status> {
    let domain = parse_domain(domain)?;
    let license = parse_license(license)?;
    Ok((domain, license))
}

/// DOM-3.
pub fn user_signed_up(r: &UserSignedUpRequest) -> Result<(Email, Role), Status> {
    let email = parse_email(&r.email, "email")?;
    let role = Role::parse(&r.role).map_err(|e| from_domain(&e))?;
    Ok((email, role))
}

/// DOM-4: the domain and the accounts found in it, each checked.
pub fn scan_domain(r: &ScanDomainRequest) -> Result<(DomainName, Vec<ScannedAccount>), Status> {
    let domain = parse_domain(&r.domain)?;
    let mut accounts = Vec::with_capacity(r.accounts.len());
    for (index, account) in r.accounts.iter().enumerate() {
        accounts.push(ScannedAccount {
            email: parse_email(&account.email, &format!("accounts[{index}].email"))?,
            role: Role::parse(&account.role)
                .map_err(|e| invalid(format!("accounts[{index}].role: {}", e.message())))?,
        });
    }
    Ok((domain, accounts))
}

/// LMS-2: the teacher, the student and the LMS.
pub fn assignment_opened(r: &AssignmentOpenedRequest) -> Result<(Email, Email, Lms), Status> {
    let teacher = parse_email(&r.teacher, "teacher")?;
    let student = parse_email(&r.student, "student")?;
    let lms = Lms::parse(&r.lms).map_err(|e| from_domain(&e))?;
    Ok((teacher, student, lms))
}

/// ROS-1: the license and the roster's students; the course id is checked by the license.
pub fn sync_classroom_roster(
    r: &SyncClassroomRosterRequest,
) -> Result<(LicenseId, Vec<Email>), Status> {
    let students = r
        .students
        .iter()
        .map(|s| parse_email(s, "students"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((parse_license(&r.license)?, students))
}

//! A step's command or query as the request the API takes: `with` is read strictly (a
//! field FORMAT.md does not define, or a value of the wrong type, is an error), and a field
//! left out takes its protobuf zero value, so that the server rather than the runner decides
//! what a missing argument means.

use std::collections::BTreeSet;

use proto::history_request::Subject;
use serde_json::{Map, Value};

/// Whether a name is under `do` (a command) or `query`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Command,
    Query,
}

/// One call of the API, ready to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    IssueLicense(proto::IssueLicenseRequest),
    RenewLicense(proto::RenewLicenseRequest),
    ChangeSeats(proto::ChangeSeatsRequest),
    GrantLicenseAdmin(proto::LicenseAdminRequest),
    RevokeLicenseAdmin(proto::LicenseAdminRequest),
    GrantDomainAdmin(proto::DomainAdminRequest),
    RevokeDomainAdmin(proto::DomainAdminRequest),
    AddUsersByEmail(proto::AddUsersByEmailRequest),
    /// Streamed as a `start` chunk and then the text in data chunks.
    ImportCsv {
        start: proto::ImportCsvStart,
        csv: String,
    },
    RemoveUsers(proto::RemoveUsersRequest),
    AcceptInvite(proto::LicenseRef),
    RejectInvite(proto::LicenseRef),
    RedeemLicenseKey(proto::RedeemLicenseKeyRequest),
    JoinViaLink(proto::JoinViaLinkRequest),
    RotateLicenseKey(proto::LicenseRef),
    RotateJoinLink(proto::LicenseRef),
    SetFeaturePermission(proto::SetFeaturePermissionRequest),
    SetAutoEnrollment(proto::SetAutoEnrollmentRequest),
    LinkOu(proto::LinkOuRequest),
    UnlinkOu(proto::LicenseRef),
    ConfirmOuSync(proto::LicenseRef),
    SyncOu(proto::SyncOuRequest),
    ClaimDomain(proto::ClaimDomainRequest),
    ReleaseDomain(proto::ReleaseDomainRequest),
    UserSignedUp(proto::UserSignedUpRequest),
    ScanDomain(proto::ScanDomainRequest),
    AssignmentOpened(proto::AssignmentOpenedRequest),
    SyncClassroomRoster(proto::SyncClassroomRosterRequest),
    GetLicense(proto::LicenseRef),
    /// Without a page size the runner follows the page tokens and answers every row.
    ListUsers {
        request: proto::ListUsersRequest,
        follow_pages: bool,
    },
    ListMyLicenses(proto::EmailRef),
    ListMyInvites(proto::EmailRef),
    ListMyDomains(proto::EmailRef),
    GetUsage(proto::GetUsageRequest),
    History(proto::HistoryRequest),
}

/// The commands FORMAT.md defines, in its order.
pub const COMMANDS: &[&str] = &[
    "IssueLicense",
    "RenewLicense",
    "ChangeSeats",
    "GrantLicenseAdmin",
    "RevokeLicenseAdmin",
    "GrantDomainAdmin",
    "RevokeDomainAdmin",
    "AddUsersByEmail",
    "ImportCsv",
    "RemoveUsers",
    "AcceptInvite",
    "RejectInvite",
    "RedeemLicenseKey",
    "JoinViaLink",
    "RotateLicenseKey",
    "RotateJoinLink",
    "SetFeaturePermission",
    "SetAutoEnrollment",
    "LinkOu",
    "UnlinkOu",
    "ConfirmOuSync",
    "SyncOu",
    "ClaimDomain",
    "ReleaseDomain",
    "UserSignedUp",
    "ScanDomain",
    "AssignmentOpened",
    "SyncClassroomRoster",
];

/// The queries FORMAT.md defines, in its order.
pub const QUERIES: &[&str] = &[
    "GetLicense",
    "ListUsers",
    "ListMyLicenses",
    "ListMyInvites",
    "ListMyDomains",
    "GetUsage",
    "History",
];

impl Call {
    /// Builds the call named `name` from its `with` arguments.
    pub fn build(kind: CallKind, name: &str, with: &Map<String, Value>) -> Result<Self, String> {
        let known = match kind {
            CallKind::Command => COMMANDS,
            CallKind::Query => QUERIES,
        };
        if !known.contains(&name) {
            let other = match kind {
                CallKind::Command if QUERIES.contains(&name) => " (it is a query: use 'query')",
                CallKind::Query if COMMANDS.contains(&name) => " (it is a command: use 'do')",
                _ => "",
            };
            let what = match kind {
                CallKind::Command => "command",
                CallKind::Query => "query",
            };
            return Err(format!("unknown {what} '{name}'{other}"));
        }
        let mut arguments = Arguments::new(with, "with");
        let call = build_known(name, &mut arguments)?;
        arguments.finish()?;
        Ok(call)
    }

    pub fn kind(&self) -> CallKind {
        match self {
            Self::GetLicense(_)
            | Self::ListUsers { .. }
            | Self::ListMyLicenses(_)
            | Self::ListMyInvites(_)
            | Self::ListMyDomains(_)
            | Self::GetUsage(_)
            | Self::History(_) => CallKind::Query,
            _ => CallKind::Command,
        }
    }
}

fn license_ref(arguments: &mut Arguments<'_>) -> Result<proto::LicenseRef, String> {
    Ok(proto::LicenseRef {
        license: arguments.text("license")?,
    })
}

fn email_ref(arguments: &mut Arguments<'_>) -> Result<proto::EmailRef, String> {
    Ok(proto::EmailRef {
        email: arguments.text("email")?,
    })
}

fn license_admin(arguments: &mut Arguments<'_>) -> Result<proto::LicenseAdminRequest, String> {
    Ok(proto::LicenseAdminRequest {
        license: arguments.text("license")?,
        email: arguments.text("email")?,
    })
}

fn domain_admin(arguments: &mut Arguments<'_>) -> Result<proto::DomainAdminRequest, String> {
    Ok(proto::DomainAdminRequest {
        domain: arguments.text("domain")?,
        email: arguments.text("email")?,
    })
}

fn build_known(name: &str, arguments: &mut Arguments<'_>) -> Result<Call, String> {
    let call = match name {
        "IssueLicense" => Call::IssueLicense(proto::IssueLicenseRequest {
            license: arguments.text("license")?,
            r#type: arguments.text("type")?,
            seats: arguments.signed("seats")?,
            valid_from: arguments.text("valid_from")?,
            valid_until: arguments.text("valid_until")?,
            admins: arguments.texts("admins")?,
        }),
        "RenewLicense" => Call::RenewLicense(proto::RenewLicenseRequest {
            license: arguments.text("license")?,
            valid_until: arguments.text("valid_until")?,
        }),
        "ChangeSeats" => Call::ChangeSeats(proto::ChangeSeatsRequest {
            license: arguments.text("license")?,
            seats: arguments.signed("seats")?,
        }),
        "GrantLicenseAdmin" => Call::GrantLicenseAdmin(license_admin(arguments)?),
        "RevokeLicenseAdmin" => Call::RevokeLicenseAdmin(license_admin(arguments)?),
        "GrantDomainAdmin" => Call::GrantDomainAdmin(domain_admin(arguments)?),
        "RevokeDomainAdmin" => Call::RevokeDomainAdmin(domain_admin(arguments)?),
        "AddUsersByEmail" => Call::AddUsersByEmail(proto::AddUsersByEmailRequest {
            license: arguments.text("license")?,
            emails: arguments.text("emails")?,
        }),
        "ImportCsv" => Call::ImportCsv {
            start: proto::ImportCsvStart {
                license: arguments.text("license")?,
                mode: arguments.text("mode")?,
            },
            csv: arguments.text("csv")?,
        },
        "RemoveUsers" => Call::RemoveUsers(proto::RemoveUsersRequest {
            license: arguments.text("license")?,
            emails: arguments.texts("emails")?,
        }),
        "AcceptInvite" => Call::AcceptInvite(license_ref(arguments)?),
        "RejectInvite" => Call::RejectInvite(license_ref(arguments)?),
        "RedeemLicenseKey" => Call::RedeemLicenseKey(proto::RedeemLicenseKeyRequest {
            key: arguments.text("key")?,
        }),
        "JoinViaLink" => Call::JoinViaLink(proto::JoinViaLinkRequest {
            token: arguments.text("token")?,
        }),
        "RotateLicenseKey" => Call::RotateLicenseKey(license_ref(arguments)?),
        "RotateJoinLink" => Call::RotateJoinLink(license_ref(arguments)?),
        "SetFeaturePermission" => Call::SetFeaturePermission(proto::SetFeaturePermissionRequest {
            license: arguments.text("license")?,
            feature: arguments.text("feature")?,
            enabled: arguments.flag("enabled")?,
            role: arguments.text("role")?,
        }),
        "SetAutoEnrollment" => Call::SetAutoEnrollment(proto::SetAutoEnrollmentRequest {
            license: arguments.text("license")?,
            enabled: arguments.flag("enabled")?,
        }),
        "LinkOu" => Call::LinkOu(proto::LinkOuRequest {
            license: arguments.text("license")?,
            ou_paths: arguments.texts("ou_paths")?,
            google_admin: arguments.flag("google_admin")?,
        }),
        "UnlinkOu" => Call::UnlinkOu(license_ref(arguments)?),
        "ConfirmOuSync" => Call::ConfirmOuSync(license_ref(arguments)?),
        "SyncOu" => Call::SyncOu(proto::SyncOuRequest {
            license: arguments.text("license")?,
            members: arguments.objects("members", |member| {
                Ok(proto::OuMember {
                    email: member.text("email")?,
                    ou_path: member.text("ou_path")?,
                    role: member.text("role")?,
                    suspended: member.flag("suspended")?,
                })
            })?,
        }),
        "ClaimDomain" => Call::ClaimDomain(proto::ClaimDomainRequest {
            license: arguments.text("license")?,
            domain: arguments.text("domain")?,
            dedicated: arguments.flag("dedicated")?,
        }),
        "ReleaseDomain" => Call::ReleaseDomain(proto::ReleaseDomainRequest {
            license: arguments.text("license")?,
            domain: arguments.text("domain")?,
        }),
        "UserSignedUp" => Call::UserSignedUp(proto::UserSignedUpRequest {
            email: arguments.text("email")?,
            role: arguments.text("role")?,
        }),
        "ScanDomain" => Call::ScanDomain(proto::ScanDomainRequest {
            domain: arguments.text("domain")?,
            accounts: arguments.objects("accounts", |account| {
                Ok(proto::ScannedAccount {
                    email: account.text("email")?,
                    role: account.text("role")?,
                })
            })?,
        }),
        "AssignmentOpened" => Call::AssignmentOpened(proto::AssignmentOpenedRequest {
            teacher: arguments.text("teacher")?,
            student: arguments.text("student")?,
            lms: arguments.text("lms")?,
            kami_assignment: arguments.flag("kami_assignment")?,
        }),
        "SyncClassroomRoster" => Call::SyncClassroomRoster(proto::SyncClassroomRosterRequest {
            license: arguments.text("license")?,
            course: arguments.text("course")?,
            students: arguments.texts("students")?,
        }),
        "GetLicense" => Call::GetLicense(license_ref(arguments)?),
        "ListUsers" => {
            let page_size = arguments.optional_page_size("page_size")?;
            Call::ListUsers {
                request: proto::ListUsersRequest {
                    license: arguments.text("license")?,
                    pattern: arguments.text("pattern")?,
                    role_is: arguments.text("role_is")?,
                    role_is_not: arguments.text("role_is_not")?,
                    status: arguments.text("status")?,
                    source: arguments.text("source")?,
                    sort: arguments.text("sort")?,
                    desc: arguments.flag("desc")?,
                    page_size: page_size.unwrap_or(0),
                    page_token: String::new(),
                },
                follow_pages: page_size.is_none(),
            }
        }
        "ListMyLicenses" => Call::ListMyLicenses(email_ref(arguments)?),
        "ListMyInvites" => Call::ListMyInvites(email_ref(arguments)?),
        "ListMyDomains" => Call::ListMyDomains(email_ref(arguments)?),
        "GetUsage" => Call::GetUsage(proto::GetUsageRequest {
            license: arguments.text("license")?,
            from: arguments.text("from")?,
            to: arguments.text("to")?,
            bucket: arguments.text("bucket")?,
        }),
        "History" => {
            let license = arguments.optional_text("license")?;
            let user = arguments.optional_text("user")?;
            let subject = match (license, user) {
                (Some(_), Some(_)) => {
                    return Err("History takes 'license' or 'user', not both".into());
                }
                (Some(license), None) => Some(Subject::License(license)),
                (None, Some(user)) => Some(Subject::User(user)),
                (None, None) => None,
            };
            Call::History(proto::HistoryRequest { subject })
        }
        other => unreachable!("'{other}' is in COMMANDS or QUERIES but has no request"),
    };
    Ok(call)
}

/// Reads the arguments of one object strictly, remembering which keys were read so that
/// any other key can be reported as unknown.
struct Arguments<'a> {
    values: &'a Map<String, Value>,
    /// Where this object is, for messages: `with` or `with.members[2]`.
    path: String,
    read: BTreeSet<&'static str>,
}

impl<'a> Arguments<'a> {
    fn new(values: &'a Map<String, Value>, path: impl Into<String>) -> Self {
        Self {
            values,
            path: path.into(),
            read: BTreeSet::new(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.read.insert(key);
        self.values.get(key)
    }

    fn wrong(&self, key: &str, wanted: &str, got: &Value) -> String {
        format!("{}.{key} must be {wanted}, not {got}", self.path)
    }

    fn optional_text(&mut self, key: &'static str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong(key, "text", other)),
        }
    }

    fn text(&mut self, key: &'static str) -> Result<String, String> {
        Ok(self.optional_text(key)?.unwrap_or_default())
    }

    fn texts(&mut self, key: &'static str) -> Result<Vec<String>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(self.wrong(key, "a list of text", other)),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of text", other)),
        }
    }

    fn flag(&mut self, key: &'static str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(self.wrong(key, "true or false", other)),
        }
    }

    /// A whole number as the API's `int64`, so that out-of-range seat counts reach the
    /// server, whose refusal the scenario expects.
    fn signed(&mut self, key: &'static str) -> Result<i64, String> {
        match self.get(key) {
            None => Ok(0),
            Some(value) => value
                .as_i64()
                .ok_or_else(|| self.wrong(key, "a whole number", value)),
        }
    }

    fn optional_page_size(&mut self, key: &'static str) -> Result<Option<u32>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|size| u32::try_from(size).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a whole number from 0 to 4294967295", value)),
        }
    }

    fn objects<T>(
        &mut self,
        key: &'static str,
        mut build: impl FnMut(&mut Arguments<'a>) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong(key, "a list of objects", other)),
        };
        let mut built = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let Value::Object(values) = item else {
                return Err(self.wrong(&format!("{key}[{index}]"), "an object", item));
            };
            let mut element = Arguments::new(values, format!("{}.{key}[{index}]", self.path));
            built.push(build(&mut element)?);
            element.finish()?;
        }
        Ok(built)
    }

    /// Fails on the first key that was never read: FORMAT.md does not define it here.
    fn finish(&self) -> Result<(), String> {
        match self
            .values
            .keys()
            .find(|key| !self.read.contains(key.as_str()))
        {
            None => Ok(()),
            Some(unknown) => {
                let known: Vec<&str> = self.read.iter().copied().collect();
                Err(format!(
                    "unknown field '{unknown}' in {} (known: {})",
                    self.path,
                    known.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(kind: CallKind, name: &str, with: Value) -> Result<Call, String> {
        Call::build(kind, name, with.as_object().unwrap())
    }

    #[test]
    fn every_name_of_the_format_builds_with_no_arguments() {
        for name in COMMANDS {
            let call = build(CallKind::Command, name, json!({})).unwrap();
            assert_eq!(call.kind(), CallKind::Command, "{name}");
        }
        for name in QUERIES {
            let call = build(CallKind::Query, name, json!({})).unwrap();
            assert_eq!(call.kind(), CallKind::Query, "{name}");
        }
    }

    #[test]
    fn issue_license_takes_every_field() {
        let call = build(
            CallKind::Command,
            "IssueLicense",
            json!({"license": "L1", "type": "school", "seats": 10000001,
                "valid_from": "2026-08-01T00:00:00Z", "valid_until": "2027-07-31T23:59:59Z", "admins": ["a@north.edu"]}),
        )
        .unwrap();
        assert_eq!(
            call,
            Call::IssueLicense(proto::IssueLicenseRequest {
                license: "L1".into(),
                r#type: "school".into(),
                seats: 10_000_001,
                valid_from: "2026-08-01T00:00:00Z".into(),
                valid_until: "2027-07-31T23:59:59Z".into(),
                admins: vec!["a@north.edu".into()],
            })
        );
        // A negative count is the server's to refuse, not the runner's.
        let negative = build(
            CallKind::Command,
            "ChangeSeats",
            json!({"license": "L1", "seats": -1}),
        );
        assert!(matches!(negative, Ok(Call::ChangeSeats(request)) if request.seats == -1));
    }

    #[test]
    fn nested_members_are_read_strictly() {
        let call = build(
            CallKind::Command,
            "SyncOu",
            json!({"license": "D1", "members": [{"email": "a@d.org", "ou_path": "/S", "role": "student", "suspended": true}]}),
        )
        .unwrap();
        let Call::SyncOu(request) = call else {
            panic!("SyncOu builds a SyncOu call")
        };
        assert_eq!(request.members.len(), 1);
        assert!(request.members[0].suspended);
        assert_eq!(request.members[0].ou_path, "/S");
        let error = build(
            CallKind::Command,
            "SyncOu",
            json!({"license": "D1", "members": [{"email": "a@d.org", "ou": "/S"}]}),
        )
        .unwrap_err();
        assert!(
            error.contains("'ou'") && error.contains("with.members[0]"),
            "{error}"
        );
    }

    #[test]
    fn unknown_names_fields_and_wrong_types_are_errors() {
        let error = build(CallKind::Command, "IssueLicence", json!({})).unwrap_err();
        assert!(error.contains("unknown command 'IssueLicence'"), "{error}");
        let error = build(CallKind::Command, "GetLicense", json!({})).unwrap_err();
        assert!(error.contains("use 'query'"), "{error}");
        let error = build(CallKind::Query, "IssueLicense", json!({})).unwrap_err();
        assert!(error.contains("use 'do'"), "{error}");
        let error = build(
            CallKind::Query,
            "GetLicense",
            json!({"license": "L1", "id": "L1"}),
        )
        .unwrap_err();
        assert!(error.contains("unknown field 'id'"), "{error}");
        let error = build(CallKind::Command, "IssueLicense", json!({"seats": "5"})).unwrap_err();
        assert!(error.contains("with.seats"), "{error}");
        assert!(build(CallKind::Command, "IssueLicense", json!({"seats": 1.5})).is_err());
        assert!(
            build(
                CallKind::Command,
                "RemoveUsers",
                json!({"emails": "a@x.org"})
            )
            .is_err()
        );
        assert!(
            build(
                CallKind::Command,
                "SetAutoEnrollment",
                json!({"enabled": "yes"})
            )
            .is_err()
        );
        assert!(build(CallKind::Query, "ListUsers", json!({"page_size": -1})).is_err());
        assert!(
            build(
                CallKind::Query,
                "History",
                json!({"license": "L1", "user": "a@x.org"})
            )
            .is_err()
        );
    }

    #[test]
    fn list_users_follows_pages_only_without_a_page_size() {
        let all = build(
            CallKind::Query,
            "ListUsers",
            json!({"license": "D1", "sort": "email", "desc": true}),
        )
        .unwrap();
        assert!(
            matches!(&all, Call::ListUsers { follow_pages: true, request } if request.desc && request.page_size == 0)
        );
        let page = build(
            CallKind::Query,
            "ListUsers",
            json!({"license": "D1", "page_size": 2}),
        )
        .unwrap();
        assert!(
            matches!(&page, Call::ListUsers { follow_pages: false, request } if request.page_size == 2)
        );
    }

    #[test]
    fn history_names_its_subject() {
        let by_user = build(CallKind::Query, "History", json!({"user": "a@x.org"})).unwrap();
        assert_eq!(
            by_user,
            Call::History(proto::HistoryRequest {
                subject: Some(Subject::User("a@x.org".into()))
            })
        );
        let by_license = build(CallKind::Query, "History", json!({"license": "L1"})).unwrap();
        assert_eq!(
            by_license,
            Call::History(proto::HistoryRequest {
                subject: Some(Subject::License("L1".into()))
            })
        );
    }
}

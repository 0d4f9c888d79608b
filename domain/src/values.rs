//! Value types that cannot hold invalid data. Every constructor validates; the only way to
//! get an `Email` or a `LicenseId` is through the rules of SPEC §1, so the aggregates never
//! re-check them.

use crate::shared_str::SharedStr;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// The longest email SPEC §1 allows, in bytes after trimming.
pub const EMAIL_LENGTH_MAX_BYTES: usize = 254;
/// The longest license id SPEC §1 allows.
pub const LICENSE_ID_LENGTH_MAX_CHARS: usize = 64;
/// The fewest and most seats a license may have (SPEC §1).
pub const SEATS_MIN: u32 = 1;
pub const SEATS_MAX: u32 = 10_000_000;
/// The longest feature name LIC-7 allows.
pub const FEATURE_NAME_LENGTH_MAX_CHARS: usize = 64;
/// The longest OU path we accept. Google's own limit is far below this; the bound exists so
/// that a hostile request cannot make one event arbitrarily large.
pub const OU_PATH_LENGTH_MAX_BYTES: usize = 1_024;
/// The longest course id a roster sync may name.
pub const COURSE_ID_LENGTH_MAX_BYTES: usize = 256;

/// Why an email, a domain or another value was refused. The text is meant for a person.
pub type Reason = String;

/// A license id given by staff: 1-64 of `[A-Za-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LicenseId(String);

impl LicenseId {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid = !raw.is_empty()
            && raw.chars().count() <= LICENSE_ID_LENGTH_MAX_CHARS
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DomainError::InvalidArgument(format!(
                "license id must be 1 to {LICENSE_ID_LENGTH_MAX_CHARS} characters of A-Z, a-z, 0-9, '_' or '-'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LicenseId {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<LicenseId> for String {
    fn from(value: LicenseId) -> Self {
        value.0
    }
}

impl fmt::Display for LicenseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the shape of a domain name that is already trimmed and lower-cased: at least two
/// non-empty labels separated by dots, and no character that cannot appear in a host name
/// part of an address (spaces, '@', control characters).
fn check_domain_shape(domain: &str) -> Result<(), Reason> {
    if domain.is_empty() {
        return Err("the domain is empty".into());
    }
    if !domain.contains('.') {
        return Err(format!("the domain '{domain}' has no dot"));
    }
    if domain.split('.').any(str::is_empty) {
        return Err(format!(
            "the domain '{domain}' has an empty part between dots"
        ));
    }
    if domain.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '@' | ',' | ';' | '"' | '<' | '>')
    }) {
        return Err(format!(
            "the domain '{domain}' holds a character not allowed in a domain"
        ));
    }
    Ok(())
}

/// Whether `bytes` is an email that `Email::parse_checked` accepts unchanged, in one pass
/// over its bytes: printable ASCII without upper case (so trimming and lower-casing leave it
/// as it is, and it holds no space or control character), at most
/// `EMAIL_LENGTH_MAX_BYTES`, one '@' after a non-empty name, and a domain of at least two
/// non-empty labels without a character `check_domain_shape` refuses. Every stored email is
/// canonical, and a replay decodes millions of them: the rules one by one, each a pass of its
/// own, were a twentieth of a rebuild's CPU (BENCHMARKS.md, session 15). A `false` only
/// means "ask `parse_checked`", which then gives the reason.
fn is_canonical_email(bytes: &[u8]) -> bool {
    if bytes.is_empty() || bytes.len() > EMAIL_LENGTH_MAX_BYTES {
        return false;
    }
    let mut at: Option<usize> = None;
    for (index, &byte) in bytes.iter().enumerate() {
        if !byte.is_ascii_graphic() || byte.is_ascii_uppercase() {
            return false;
        }
        if byte == b'@' {
            if at.is_some() {
                return false;
            }
            at = Some(index);
        }
    }
    let Some(at) = at.filter(|at| *at > 0) else {
        return false;
    };
    let domain = &bytes[at + 1..];
    let mut dots = 0usize;
    let mut label_bytes = 0usize;
    for &byte in domain {
        match byte {
            b'.' if label_bytes == 0 => return false,
            b'.' => {
                dots += 1;
                label_bytes = 0;
            }
            b',' | b';' | b'"' | b'<' | b'>' => return false,
            _ => label_bytes += 1,
        }
    }
    dots > 0 && label_bytes > 0
}

/// An email address normalised by SPEC §1: trimmed, lower-cased, `local@domain` with a dot in
/// the domain, no spaces, at most 254 bytes.
///
/// Shared, not copied, when cloned: one import of a million rows holds each email in the
/// command, in its event and in the license aggregate at the same moment, and the three
/// share one allocation (that moment was the server's memory peak, issue 7). The handle is
/// one pointer wide (`SharedStr`), half of an `Arc<str>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Email(SharedStr);

impl<'de> Deserialize<'de> for Email {
    /// Parses the string in place (`Email::parse`): a replay decodes millions of stored
    /// emails, and going through an owned `String` first cost an allocation each.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EmailVisitor;
        impl serde::de::Visitor<'_> for EmailVisitor {
            type Value = Email;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an email address")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Email, E> {
                Email::parse(value).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(EmailVisitor)
    }
}

impl Serialize for Email {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl Email {
    /// Normalises and validates. The error is a reason a person can act on; it repeats the
    /// input only in shortened form so that a pasted secret or a megabyte of junk does not
    /// end up in an answer.
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        if is_canonical_email(raw.as_bytes()) {
            return Ok(Self(SharedStr::new(raw)));
        }
        Self::parse_checked(raw)
    }

    /// Every rule of `parse`, one after the other, each with its reason. `parse` comes here
    /// for every email that is not already canonical, and for every one it refuses.
    fn parse_checked(raw: &str) -> Result<Self, Reason> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("empty email".into());
        }
        if trimmed.len() > EMAIL_LENGTH_MAX_BYTES {
            return Err(format!(
                "email is {} characters long; at most {EMAIL_LENGTH_MAX_BYTES} are allowed",
                trimmed.len()
            ));
        }
        // Almost every email is already lower-case ASCII (every stored one is): then it
        // is its own lower-cased form, and no copy is made.
        let canonical = trimmed
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !byte.is_ascii_uppercase());
        let lowered: std::borrow::Cow<'_, str> = if canonical {
            std::borrow::Cow::Borrowed(trimmed)
        } else {
            std::borrow::Cow::Owned(trimmed.to_lowercase())
        };
        if lowered.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("an email cannot contain spaces".into());
        }
        let Some((local, domain)) = lowered.split_once('@') else {
            return Err("an email needs an '@' between the name and the domain".into());
        };
        if local.is_empty() {
            return Err("the part before '@' is empty".into());
        }
        if domain.contains('@') {
            return Err("an email has exactly one '@'".into());
        }
        check_domain_shape(domain)?;
        // Lower-casing can lengthen some characters; re-check the bound on the stored form.
        if lowered.len() > EMAIL_LENGTH_MAX_BYTES {
            return Err(format!(
                "email is longer than {EMAIL_LENGTH_MAX_BYTES} characters"
            ));
        }
        Ok(Self(SharedStr::new(&lowered)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after '@', which decides domain-admin adds (INV-1) and domain claims (DOM-3).
    pub fn domain(&self) -> &str {
        // The constructor guarantees exactly one '@'.
        self.0
            .split_once('@')
            .map(|(_, domain)| domain)
            .unwrap_or("")
    }
}

impl TryFrom<String> for Email {
    type Error = Reason;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

/// An email domain (`north.edu`), trimmed and lower-cased like an email's domain part.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let lowered = raw.trim().to_lowercase();
        if lowered.len() > EMAIL_LENGTH_MAX_BYTES {
            return Err(format!(
                "a domain is at most {EMAIL_LENGTH_MAX_BYTES} characters"
            ));
        }
        check_domain_shape(&lowered)?;
        Ok(Self(lowered))
    }

    pub fn of(email: &Email) -> Self {
        Self(email.domain().to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DomainName {
    type Error = Reason;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DomainName> for String {
    fn from(value: DomainName) -> Self {
        value.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Defines a closed set of names with `parse`, `as_str` and serde as the lower-case name, so
/// that the wire names, the event payloads and the query filters all agree.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                let lowered = raw.trim().to_ascii_lowercase();
                match lowered.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(DomainError::InvalidArgument(format!(
                        concat!("unknown ", $what, " '{}'; expected one of: {}"),
                        raw.chars().take(40).collect::<String>(),
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(
    /// The kind of plan (SPEC §1).
    LicenseType, "license type" {
        Teacher => "teacher",
        School => "school",
        Building => "building",
        District => "district",
        Pro => "pro",
        Work => "work",
    }
);

impl LicenseType {
    /// OU-1: Google Workspace OU sync is for district, school and building licenses.
    pub fn supports_ou_sync(self) -> bool {
        matches!(self, Self::District | Self::School | Self::Building)
    }

    /// LMS-1: pro and work plans have no auto-enrollment at all.
    pub fn supports_auto_enrollment(self) -> bool {
        !matches!(self, Self::Pro | Self::Work)
    }

    /// LMS-1: on by default for teacher licenses only.
    pub fn auto_enrollment_by_default(self) -> bool {
        matches!(self, Self::Teacher)
    }

    /// LINK-1: only teacher licenses have a join link.
    pub fn has_join_link(self) -> bool {
        matches!(self, Self::Teacher)
    }
}

named_enum!(
    /// A member's standing on a license (SPEC §1). A removed member has no status.
    Status, "status" {
        Accepted => "accepted",
        Invited => "invited",
        Rejected => "rejected",
        Waitlisted => "waitlisted",
    }
);

impl Status {
    /// SEAT-1, SEAT-2: accepted and invited members hold a seat, nobody else does.
    pub fn holds_seat(self) -> bool {
        matches!(self, Self::Accepted | Self::Invited)
    }
}

named_enum!(
    /// How a member came to the license (SPEC §1).
    Source, "source" {
        Email => "email",
        Csv => "csv",
        Ou => "ou",
        Domain => "domain",
        Lms => "lms",
        Roster => "roster",
        Link => "link",
        Key => "key",
    }
);

impl Source {
    /// SEAT-3 and SEAT-4 treat admin batches and automatic sources differently.
    pub fn is_automatic(self) -> bool {
        !matches!(self, Self::Email | Self::Csv)
    }
}

named_enum!(
    /// What the Manage Users "is = student" filter uses (SPEC §1).
    Role, "role" {
        Student => "student",
        Teacher => "teacher",
        Other => "other",
    }
);

named_enum!(
    /// The learning management systems LMS-2 knows.
    Lms, "lms" {
        GoogleClassroom => "google_classroom",
        Schoology => "schoology",
        Canvas => "canvas",
    }
);

/// Who acts. License-admin and domain-admin are not actors of their own: they are users
/// whose email the ledger's state names as such.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Staff,
    System,
    User(Email),
}

impl Actor {
    pub fn email(&self) -> Option<&Email> {
        match self {
            Self::User(email) => Some(email),
            Self::Staff | Self::System => None,
        }
    }
}

impl Actor {
    /// How the ledger names the actor in an event's envelope: `staff`, `system` or the
    /// user's email.
    pub fn label(&self) -> &str {
        match self {
            Self::Staff => "staff",
            Self::System => "system",
            Self::User(email) => email.as_str(),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A feature name for LIC-7: `[a-z0-9_]{1,64}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FeatureName(String);

impl FeatureName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid = !raw.is_empty()
            && raw.len() <= FEATURE_NAME_LENGTH_MAX_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DomainError::InvalidArgument(format!(
                "feature name must be 1 to {FEATURE_NAME_LENGTH_MAX_CHARS} characters of a-z, 0-9 or '_'"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FeatureName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<FeatureName> for String {
    fn from(value: FeatureName) -> Self {
        value.0
    }
}

/// A Google Workspace organisational-unit path such as `/Students/Grade 5`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OuPath(String);

impl OuPath {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let trimmed = raw.trim();
        let valid = trimmed.starts_with('/')
            && trimmed.len() <= OU_PATH_LENGTH_MAX_BYTES
            && !trimmed.chars().any(char::is_control);
        if valid {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(DomainError::InvalidArgument(format!(
                "an OU path starts with '/' and is at most {OU_PATH_LENGTH_MAX_BYTES} bytes without control characters"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OuPath {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OuPath> for String {
    fn from(value: OuPath) -> Self {
        value.0
    }
}

/// A secret: a license key or a join-link token. It is made by the caller from at least 128
/// random bits (the domain does no I/O, so it cannot draw randomness itself). `Debug` never
/// shows it, so a secret cannot leak through a log line or an error by accident.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// The fewest characters a secret may have: 128 bits as 32 hexadecimal digits, or fewer
/// characters of a larger alphabet. We ask for 22, which is 128 bits in base64url.
pub const SECRET_LENGTH_MIN_CHARS: usize = 22;
pub const SECRET_LENGTH_MAX_CHARS: usize = 128;

impl Secret {
    /// Accepts a freshly generated secret. Only the server calls this, with random material.
    pub fn new(value: String) -> Result<Self, DomainError> {
        let valid = (SECRET_LENGTH_MIN_CHARS..=SECRET_LENGTH_MAX_CHARS).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(value))
        } else {
            Err(DomainError::InvalidArgument(format!(
                "a secret is {SECRET_LENGTH_MIN_CHARS} to {SECRET_LENGTH_MAX_CHARS} URL-safe characters"
            )))
        }
    }

    /// A secret typed by a user, compared but never stored or echoed. It need not have a
    /// valid shape: a wrong key is simply not found (KEY-1).
    pub fn presented(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is, so that response
    /// timing does not reveal how much of a guessed key was right.
    pub fn matches(&self, other: &Secret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let email = Email::parse("  A.Thomas@North.EDU ").unwrap();
        assert_eq!(email.as_str(), "a.thomas@north.edu");
        assert_eq!(email.domain(), "north.edu");
    }

    #[test]
    fn email_shapes_that_are_refused() {
        for bad in [
            "",
            "   ",
            "not-an-email",
            "not an email",
            "a b@north.edu",
            "@north.edu",
            "a@",
            "a@north",
            "a@@north.edu",
            "a@north..edu",
            "a@.north.edu",
            "a@north.edu.",
            "a@b@north.edu",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_decoded_email_is_parsed_like_a_typed_one() {
        // SPEC §1: stored and received emails go through the same normalisation and
        // checks, whether already canonical (the fast path) or not.
        let decode = |raw: &str| rmp_serde::from_slice::<Email>(&rmp_serde::to_vec(raw).unwrap());
        assert_eq!(
            decode("a.thomas@north.edu").unwrap().as_str(),
            "a.thomas@north.edu"
        );
        assert_eq!(
            decode(" A.Thomas@North.EDU").unwrap().as_str(),
            "a.thomas@north.edu"
        );
        assert_eq!(decode("ÅSA@north.edu").unwrap().as_str(), "åsa@north.edu");
        for bad in [
            "a@north",
            "a b@north.edu",
            "a@b@north.edu",
            "a\u{7f}@north.edu",
        ] {
            let error = decode(bad).unwrap_err().to_string();
            assert!(
                error.contains("domain") || error.contains("email"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn the_canonical_fast_path_agrees_with_every_rule() {
        // SPEC §1: `parse` skips the rule-by-rule checks for emails that are already
        // canonical. Over every string of up to three characters from an alphabet of the
        // characters the rules care about, in every position of an address, the fast path
        // may only accept what the full checks accept unchanged, and must accept every
        // printable lower-case ASCII email they accept.
        let alphabet = [
            'a', 'Z', '@', '.', ',', ';', '"', '<', '>', ' ', '\u{7f}', 'é', '-',
        ];
        let mut parts = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = parts
                .iter()
                .flat_map(|part| alphabet.iter().map(move |c| format!("{part}{c}")))
                .collect();
            parts.extend(longer);
        }
        let mut checked = 0usize;
        for part in &parts {
            for raw in [
                part.clone(),
                format!("a{part}@north.edu"),
                format!("a@{part}.edu"),
                format!("a@north.{part}"),
                format!("a@north{part}"),
                format!("{part}@b.c"),
            ] {
                let fast = is_canonical_email(raw.as_bytes());
                let full = Email::parse_checked(&raw);
                let full_unchanged = full.as_ref().is_ok_and(|email| email.as_str() == raw);
                let printable_lower = raw
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase());
                assert_eq!(fast, full_unchanged && printable_lower, "{raw:?}: {full:?}");
                assert_eq!(Email::parse(&raw), full, "{raw:?}");
                checked += 1;
            }
        }
        assert!(checked > 10_000);
        let long_domain = format!("@{}.edu", "d".repeat(EMAIL_LENGTH_MAX_BYTES));
        assert!(!is_canonical_email(format!("a{long_domain}").as_bytes()));
    }

    #[test]
    fn email_length_limit_is_254() {
        let domain = "@north.edu";
        let at_limit = format!(
            "{}{domain}",
            "a".repeat(EMAIL_LENGTH_MAX_BYTES - domain.len())
        );
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("a{at_limit}");
        assert!(Email::parse(&over).unwrap_err().contains("254"));
    }

    #[test]
    fn license_id_bounds() {
        assert!(LicenseId::parse("L1_x-Y").is_ok());
        assert!(LicenseId::parse(&"a".repeat(64)).is_ok());
        assert!(LicenseId::parse(&"a".repeat(65)).is_err());
        assert!(LicenseId::parse("").is_err());
        assert!(LicenseId::parse("a b").is_err());
        assert!(LicenseId::parse("é").is_err());
    }

    #[test]
    fn feature_names_follow_lic_7() {
        // LIC-7
        assert!(FeatureName::parse("text_to_speech").is_ok());
        assert!(FeatureName::parse("Text").is_err());
        assert!(FeatureName::parse("").is_err());
        assert!(FeatureName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secret = Secret::new("abcdefghijklmnopqrstuvwxyz012345".into()).unwrap();
        assert!(!format!("{secret:?}").contains("abcdef"));
        assert!(secret.matches(&Secret::presented("abcdefghijklmnopqrstuvwxyz012345")));
        assert!(!secret.matches(&Secret::presented("abcdefghijklmnopqrstuvwxyz012346")));
        assert!(!secret.matches(&Secret::presented("short")));
    }

    #[test]
    fn named_enums_round_trip() {
        for source in Source::ALL {
            assert_eq!(Source::parse(source.as_str()).unwrap(), *source);
        }
        assert!(Status::parse("removed").is_err());
        assert_eq!(
            Lms::parse("google_classroom").unwrap(),
            Lms::GoogleClassroom
        );
    }
}

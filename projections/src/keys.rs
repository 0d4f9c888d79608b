//! The key layout of one projection generation (one sled `Tree`). Every read model owns one
//! leading byte, so a digest or a wipe of one read model is a prefix scan, and parts of a key
//! are joined with a zero byte. Zero never occurs inside a license id, an email or a domain
//! name (the domain's value types refuse control characters), so the separator keeps the
//! byte order of the keys equal to the order of their parts. Integers are big-endian, so
//! byte order is numeric order.

/// Checkpoint and schema version of the generation.
pub(crate) const PREFIX_META: u8 = 0x00;
/// license id -> `LicenseRecord`.
pub(crate) const PREFIX_LICENSE: u8 = 0x01;
/// license id 0 email -> `MemberRecord` (Q-2, ordered by email).
pub(crate) const PREFIX_MEMBER: u8 = 0x02;
// 0x03 held the sort index (license id 0 column value 0 email) up to schema 2; Q-2's other
// orders now come from the in-memory member lists, and the byte stays unused.
/// email 0 license id -> status name (Q-3, Q-4 invites).
pub(crate) const PREFIX_USER_LICENSE: u8 = 0x04;
/// domain 0 email -> nothing (the domain admins of a domain, for the command context).
pub(crate) const PREFIX_DOMAIN_ADMIN: u8 = 0x05;
/// email 0 domain -> nothing (Q-4 ListMyDomains).
pub(crate) const PREFIX_USER_DOMAIN: u8 = 0x06;
/// license id 0 day -> `UsageRecord`.
pub(crate) const PREFIX_USAGE: u8 = 0x07;
/// license id 0 position -> nothing (Q-6 by license).
pub(crate) const PREFIX_HISTORY_LICENSE: u8 = 0x08;
/// email 0 position -> nothing (Q-6 by user).
pub(crate) const PREFIX_HISTORY_USER: u8 = 0x09;
/// sha256(license key) -> license id (KEY-1).
pub(crate) const PREFIX_KEY_HASH: u8 = 0x0a;
/// sha256(join-link token) -> license id (LINK-1).
pub(crate) const PREFIX_LINK_HASH: u8 = 0x0b;
/// claimed domain -> license id (DOM-3).
pub(crate) const PREFIX_CLAIM: u8 = 0x0c;

/// Every read model with its prefix, in the order the digest reports them.
pub(crate) const READ_MODELS: &[(u8, &str)] = &[
    (PREFIX_LICENSE, "licenses"),
    (PREFIX_MEMBER, "members"),
    (PREFIX_USER_LICENSE, "user_licenses"),
    (PREFIX_DOMAIN_ADMIN, "domain_admins"),
    (PREFIX_USER_DOMAIN, "user_domains"),
    (PREFIX_USAGE, "usage"),
    (PREFIX_HISTORY_LICENSE, "history_by_license"),
    (PREFIX_HISTORY_USER, "history_by_user"),
    (PREFIX_KEY_HASH, "key_hashes"),
    (PREFIX_LINK_HASH, "link_hashes"),
    (PREFIX_CLAIM, "domain_claims"),
];

pub(crate) const SEPARATOR: u8 = 0x00;

pub(crate) fn checkpoint_key() -> Vec<u8> {
    let mut key = vec![PREFIX_META];
    key.extend_from_slice(b"checkpoint");
    key
}

pub(crate) fn schema_key() -> Vec<u8> {
    let mut key = vec![PREFIX_META];
    key.extend_from_slice(b"schema");
    key
}

/// `prefix part` with no trailing separator.
pub(crate) fn single(prefix: u8, part: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + part.len());
    key.push(prefix);
    key.extend_from_slice(part);
    key
}

/// `prefix part 0`: the start of every key under `part`.
pub(crate) fn scope(prefix: u8, part: &[u8]) -> Vec<u8> {
    pair(prefix, part, &[])
}

/// `prefix first 0 second`, in one allocation of its exact size: the fold makes two of
/// these per member event, and growing the key part by part reallocated it twice (a sixth
/// of a rebuild's fold, BENCHMARKS.md session 15).
pub(crate) fn pair(prefix: u8, first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + first.len() + second.len());
    key.push(prefix);
    key.extend_from_slice(first);
    key.push(SEPARATOR);
    key.extend_from_slice(second);
    key
}

/// The license id and the email of a member record key (`02 license 0 email`); `None`
/// for a key without a separator.
pub(crate) fn member_key_parts(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let parts = key.get(1..)?;
    let at = parts.iter().position(|byte| *byte == SEPARATOR)?;
    Some((&parts[..at], &parts[at + 1..]))
}

/// The start of a member record key up to and including the separator after its license
/// id (`02 license 0`), which every member key of the license starts with; `None` for a
/// key without a separator.
pub(crate) fn member_license_scope(key: &[u8]) -> Option<&[u8]> {
    member_key_parts(key).map(|(license, _)| &key[..license.len() + 2])
}

/// `prefix first 0 position`, for the history indexes.
pub(crate) fn positioned(prefix: u8, first: &[u8], position: u64) -> Vec<u8> {
    pair(prefix, first, &position.to_be_bytes())
}

/// Days since 1970-01-01 with the sign bit flipped, so that byte order is numeric order for
/// negative days too.
pub(crate) fn day_bytes(day: i64) -> [u8; 8] {
    ((day as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn day_from_bytes(bytes: &[u8]) -> Option<i64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some((u64::from_be_bytes(array) ^ (1 << 63)) as i64)
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when no
/// such key exists (the prefix is all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The smallest string greater than every string that starts with `prefix` (code point
/// order, which is UTF-8 byte order), or `None` when every string after `prefix` has it.
pub(crate) fn string_prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        while next <= u32::from(char::MAX) {
            if let Some(character) = char::from_u32(next) {
                chars.push(character);
                return Some(chars.into_iter().collect());
            }
            next += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_bytes_keep_numeric_order_across_zero() {
        // usage keys range-scan by day, before and after 1970 alike.
        let days = [-400i64, -1, 0, 1, 20_000];
        for window in days.windows(2) {
            assert!(day_bytes(window[0]) < day_bytes(window[1]));
        }
        assert_eq!(day_from_bytes(&day_bytes(-5)), Some(-5));
    }

    #[test]
    fn prefix_ends_bound_every_longer_key() {
        // a literal prefix pattern range-scans exactly the emails that start with it.
        assert_eq!(prefix_end(&[1, 2, 0xff]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(string_prefix_end("ab").as_deref(), Some("ac"));
        assert!(string_prefix_end("ab").unwrap().as_str() > "abzzzz");
    }
}

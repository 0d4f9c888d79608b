//! A license's members by email, stored densely.
//!
//! A `HashMap<Email, Box<Member>>` pays, per member, a table bucket holding the email and
//! a pointer (at the table's load, about two buckets per member) and a separate allocation
//! for the member. Here the members sit side by side in one vector, each beside its email,
//! and the hash table holds only a 32-bit position per bucket: at 1,000,000 members about
//! 58 MB instead of about 76 (issue 7, BENCHMARKS.md). A removal moves the last member into
//! the freed place and tells the table.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::license::Member;
use crate::values::Email;

#[derive(Clone, Default)]
pub(crate) struct MemberTable {
    hasher: RandomState,
    /// Each member's position in `entries`, found by the hash of its email.
    positions: HashTable<u32>,
    entries: Vec<(Email, Member)>,
}

impl MemberTable {
    fn hash(hasher: &RandomState, email: &Email) -> u64 {
        hasher.hash_one(email.as_str())
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn position(&self, email: &Email) -> Option<usize> {
        let hash = Self::hash(&self.hasher, email);
        self.positions
            .find(hash, |&position| {
                self.entries[position as usize].0 == *email
            })
            .map(|&position| position as usize)
    }

    pub(crate) fn get(&self, email: &Email) -> Option<&Member> {
        self.position(email)
            .map(|position| &self.entries[position].1)
    }

    pub(crate) fn get_mut(&mut self, email: &Email) -> Option<&mut Member> {
        self.position(email)
            .map(|position| &mut self.entries[position].1)
    }

    /// Inserts or replaces `email`'s member; returns the member it replaced.
    pub(crate) fn insert(&mut self, email: Email, member: Member) -> Option<Member> {
        if let Some(position) = self.position(&email) {
            return Some(std::mem::replace(&mut self.entries[position].1, member));
        }
        let position =
            u32::try_from(self.entries.len()).expect("a license has fewer than 2^32 members");
        let Self {
            hasher,
            positions,
            entries,
        } = self;
        positions.insert_unique(Self::hash(hasher, &email), position, |&p| {
            Self::hash(hasher, &entries[p as usize].0)
        });
        entries.push((email, member));
        self.check_sizes();
        None
    }

    pub(crate) fn remove(&mut self, email: &Email) -> Option<Member> {
        let Self {
            hasher,
            positions,
            entries,
        } = self;
        let found = positions
            .find_entry(Self::hash(hasher, email), |&p| {
                entries[p as usize].0 == *email
            })
            .ok()?;
        let position = *found.get() as usize;
        found.remove();
        let last = entries.len() - 1;
        if position != last {
            // The last member moves into the freed place: its bucket must say so.
            let moved = positions
                .find_mut(Self::hash(hasher, &entries[last].0), |&p| {
                    p as usize == last
                })
                .expect("every member's position is in the table");
            *moved = u32::try_from(position).expect("positions fit 32 bits");
        }
        let (_, member) = entries.swap_remove(position);
        self.check_sizes();
        Some(member)
    }

    /// Makes room for `additional` more members at once.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let Self {
            hasher,
            positions,
            entries,
        } = self;
        entries.reserve(additional);
        positions.reserve(additional, |&p| Self::hash(hasher, &entries[p as usize].0));
    }

    /// Every member, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Email, &Member)> {
        self.entries.iter().map(|(email, member)| (email, member))
    }

    /// The table and the vector hold the same members (a bug otherwise).
    fn check_sizes(&self) {
        debug_assert_eq!(self.positions.len(), self.entries.len());
    }
}

impl PartialEq for MemberTable {
    /// The same members, whatever their order.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(email, member)| other.get(email) == Some(member))
    }
}

impl Eq for MemberTable {}

impl fmt::Debug for MemberTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A map from email to member, as the `HashMap` it replaced wrote it, so that snapshots
/// taken before read the same.
impl Serialize for MemberTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (email, member) in self.iter() {
            map.serialize_entry(email, member)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for MemberTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = MemberTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from email to member")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MemberTable, A::Error> {
                let mut table = MemberTable::default();
                // A snapshot's own count sizes the table once, up to a bound, so that a
                // corrupt count cannot ask for any amount of memory.
                table.reserve(
                    map.size_hint()
                        .unwrap_or(0)
                        .min(SNAPSHOT_RESERVE_MEMBERS_MAX),
                );
                while let Some((email, member)) = map.next_entry::<Email, Member>()? {
                    table.insert(email, member);
                }
                Ok(table)
            }
        }
        deserializer.deserialize_map(TableVisitor)
    }
}

/// The most members a decoded snapshot's count reserves room for at once (about 60 MB);
/// a larger table grows as its members are read, so a corrupt count costs no more.
const SNAPSHOT_RESERVE_MEMBERS_MAX: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::license::tests_support::member;

    fn email(index: usize) -> Email {
        Email::parse(&format!("user{index}@north.edu")).expect("a valid email")
    }

    /// Inserts, replacements and removals in a mixed order leave the table holding exactly
    /// what a `HashMap` given the same steps holds; every removal moves the last member.
    #[test]
    fn the_table_holds_what_a_map_given_the_same_steps_holds() {
        let mut table = MemberTable::default();
        let mut map: HashMap<Email, Member> = HashMap::new();
        for step in 0..5_000usize {
            let who = email((step * 7_919) % 600);
            match step % 5 {
                0..=2 => {
                    let added = member(step as u64);
                    assert_eq!(
                        table.insert(who.clone(), added.clone()),
                        map.insert(who, added),
                        "step {step}"
                    );
                }
                3 => assert_eq!(table.remove(&who), map.remove(&who), "step {step}"),
                _ => {
                    if let (Some(in_table), Some(in_map)) = (table.get_mut(&who), map.get_mut(&who))
                    {
                        *in_table = member(step as u64 + 1);
                        *in_map = member(step as u64 + 1);
                    }
                }
            }
            assert_eq!(table.len(), map.len(), "step {step}");
        }
        for index in 0..600 {
            assert_eq!(table.get(&email(index)), map.get(&email(index)), "{index}");
        }
        let mut listed: Vec<_> = table.iter().map(|(email, _)| email.clone()).collect();
        listed.sort();
        let mut expected: Vec<_> = map.keys().cloned().collect();
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_table_reads_back_as_written_and_compares_whatever_its_order() {
        let mut forward = MemberTable::default();
        let mut backward = MemberTable::default();
        for index in 0..100 {
            forward.insert(email(index), member(index as u64));
            backward.insert(email(99 - index), member(99 - index as u64));
        }
        assert_eq!(forward, backward);
        let bytes = rmp_serde::to_vec(&forward).expect("encodes");
        let read: MemberTable = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(read, forward);
        // The same bytes as the map the table replaced, so old snapshots read the same.
        let as_map: HashMap<Email, Box<Member>> =
            rmp_serde::from_slice(&bytes).expect("decodes as a map");
        assert_eq!(as_map.len(), 100);
        backward.remove(&email(5));
        assert_ne!(forward, backward);
    }
}

//! AUD-4: the first outcome of every command sent with a command id, so that a retry gets it
//! back: the answer of a command that was carried out, or the refusal of one that was not.
//! The store is a cache beside the log: the ledger itself also refuses to append a command id
//! twice, across restarts, which is what guarantees "appends nothing more".

use sled::Tree;
use tonic::Code;

/// What a command id was first answered.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstOutcome {
    /// The encoded reply of a command that was carried out.
    Reply(Vec<u8>),
    /// The refusal of a command that was decided against (ERR-1): its code and message.
    Refused { code: Code, message: String },
}

/// What was answered to a command id, with the fingerprint of the command it answered.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredOutcome {
    pub fingerprint: [u8; 32],
    pub outcome: FirstOutcome,
}

/// Whether a refusal is the command's decided outcome, which a retry must get back (AUD-4),
/// rather than a failure to decide (the store unavailable, a deadline, a crash), after which
/// a retry must be decided again.
pub fn is_decided_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange
    )
}

#[derive(Clone)]
pub struct Outcomes {
    replies: Tree,
    refusals: Tree,
}

impl Outcomes {
    /// Replies and refusals live in trees of their own, so neither value format has to tell
    /// itself apart from the other.
    pub fn new(replies: Tree, refusals: Tree) -> Self {
        Self { replies, refusals }
    }

    pub fn get(&self, command_id: &str) -> Result<Option<StoredOutcome>, sled::Error> {
        let key = command_id.as_bytes();
        if let Some(value) = self.replies.get(key)?
            && let Some(fingerprint) = fingerprint_of(&value)
        {
            return Ok(Some(StoredOutcome {
                fingerprint,
                outcome: FirstOutcome::Reply(value[32..].to_vec()),
            }));
        }
        Ok(self.refusals.get(key)?.and_then(|value| {
            let fingerprint = fingerprint_of(&value)?;
            let code = i32::from_be_bytes(value.get(32..36)?.try_into().ok()?);
            Some(StoredOutcome {
                fingerprint,
                outcome: FirstOutcome::Refused {
                    code: Code::from_i32(code),
                    message: String::from_utf8_lossy(&value[36..]).into_owned(),
                },
            })
        }))
    }

    pub fn put(
        &self,
        command_id: &str,
        fingerprint: [u8; 32],
        reply: &[u8],
    ) -> Result<(), sled::Error> {
        let mut value = Vec::with_capacity(32 + reply.len());
        value.extend_from_slice(&fingerprint);
        value.extend_from_slice(reply);
        self.replies.insert(command_id.as_bytes(), value)?;
        Ok(())
    }

    /// Keeps a decided refusal (`is_decided_refusal`). Its message names no secret: refusals
    /// never carry a license key or a link token (ERR-1).
    pub fn put_refusal(
        &self,
        command_id: &str,
        fingerprint: [u8; 32],
        code: Code,
        message: &str,
    ) -> Result<(), sled::Error> {
        debug_assert!(is_decided_refusal(code), "{code:?} is not a decision");
        let mut value = Vec::with_capacity(36 + message.len());
        value.extend_from_slice(&fingerprint);
        value.extend_from_slice(&(code as i32).to_be_bytes());
        value.extend_from_slice(message.as_bytes());
        self.refusals.insert(command_id.as_bytes(), value)?;
        Ok(())
    }
}

fn fingerprint_of(value: &[u8]) -> Option<[u8; 32]> {
    value.get(..32)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes() -> Outcomes {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Outcomes::new(
            db.open_tree("replies").unwrap(),
            db.open_tree("refusals").unwrap(),
        )
    }

    #[test]
    fn a_reply_and_a_refusal_are_read_back_as_kept() {
        // AUD-4: the first outcome, whichever it was, comes back with its fingerprint.
        let outcomes = outcomes();
        outcomes.put("done", [1; 32], b"reply bytes").unwrap();
        outcomes
            .put_refusal("refused", [2; 32], Code::ResourceExhausted, "2 seats short")
            .unwrap();
        assert_eq!(
            outcomes.get("done").unwrap(),
            Some(StoredOutcome {
                fingerprint: [1; 32],
                outcome: FirstOutcome::Reply(b"reply bytes".to_vec()),
            })
        );
        assert_eq!(
            outcomes.get("refused").unwrap(),
            Some(StoredOutcome {
                fingerprint: [2; 32],
                outcome: FirstOutcome::Refused {
                    code: Code::ResourceExhausted,
                    message: "2 seats short".into(),
                },
            })
        );
        assert_eq!(outcomes.get("unknown").unwrap(), None);
    }

    #[test]
    fn only_decisions_count_as_refusals_to_keep() {
        // AUD-4: a retry after an outage or a deadline is decided again.
        assert!(is_decided_refusal(Code::ResourceExhausted));
        assert!(is_decided_refusal(Code::FailedPrecondition));
        assert!(!is_decided_refusal(Code::Unavailable));
        assert!(!is_decided_refusal(Code::Internal));
        assert!(!is_decided_refusal(Code::DeadlineExceeded));
        assert!(!is_decided_refusal(Code::Unauthenticated));
    }
}

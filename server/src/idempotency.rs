//! AUD-4: the first answer of every command sent with a command id, so that a retry gets it
//! back. The store is a cache beside the log: the ledger itself also refuses to append a
//! command id twice, across restarts, which is what guarantees "appends nothing more".

use sled::Tree;

/// What was answered to a command id.
pub struct StoredOutcome {
    pub fingerprint: [u8; 32],
    pub reply: Vec<u8>,
}

#[derive(Clone)]
pub struct Outcomes {
    tree: Tree,
}

impl Outcomes {
    pub fn new(tree: Tree) -> Self {
        Self { tree }
    }

    pub fn get(&self, command_id: &str) -> Result<Option<StoredOutcome>, sled::Error> {
        Ok(self.tree.get(command_id.as_bytes())?.and_then(|value| {
            (value.len() >= 32).then(|| StoredOutcome {
                fingerprint: value[..32].try_into().expect("32 bytes"),
                reply: value[32..].to_vec(),
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
        self.tree.insert(command_id.as_bytes(), value)?;
        Ok(())
    }
}

//! Identity: every call carries `authorization: Bearer <token>`; each configured token has a
//! scope. A user-scoped call names the person it acts for in `x-actor`. License-admin and
//! domain-admin roles are not scopes: they come from the ledger's own state.

use std::collections::HashMap;
use std::path::Path;

use domain::{Actor, Email};
use rand::Rng;
use tonic::metadata::MetadataMap;

/// The header naming the person a user-scoped token acts for.
pub const ACTOR_HEADER: &str = "x-actor";
/// The most tokens a tokens file may define.
pub const TOKENS_MAX: usize = 10_000;
/// The name of the development tokens file a fresh data directory gets.
pub const DEVELOPMENT_TOKENS_FILE: &str = "dev-tokens.txt";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Staff,
    System,
    User,
}

impl Scope {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "staff" => Some(Self::Staff),
            "system" => Some(Self::System),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file line {line}: {reason}")]
    Line { line: usize, reason: String },
}

/// The configured bearer tokens and their scopes. `Debug` does not show the tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    scopes: HashMap<String, Scope>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.scopes.len())
    }
}

impl Tokens {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, token: impl Into<String>, scope: Scope) {
        self.scopes.insert(token.into(), scope);
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Parses `scope token` lines (`staff`, `system` or `user`); `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = Self::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(scope), Some(token), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(TokensError::Line {
                    line: index + 1,
                    reason: "expected 'scope token'".into(),
                });
            };
            let scope = Scope::parse(scope).ok_or_else(|| TokensError::Line {
                line: index + 1,
                reason: "the scope must be staff, system or user".into(),
            })?;
            if token.len() < 16 {
                return Err(TokensError::Line {
                    line: index + 1,
                    reason: "a token must have at least 16 characters".into(),
                });
            }
            if tokens.scopes.len() >= TOKENS_MAX {
                return Err(TokensError::Line {
                    line: index + 1,
                    reason: format!("at most {TOKENS_MAX} tokens"),
                });
            }
            tokens.insert(token, scope);
        }
        Ok(tokens)
    }

    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The development tokens of a data directory: read from `dev-tokens.txt`, or made
    /// (random, one per scope) and written there on first start, so a fresh checkout can
    /// talk to its own server without any set-up.
    pub fn development(data_dir: &Path) -> Result<Self, TokensError> {
        let path = data_dir.join(DEVELOPMENT_TOKENS_FILE);
        if path.exists() {
            return Self::load(&path);
        }
        let mut text = String::from(
            "# Development tokens, made on first start. Do not use them in production.\n",
        );
        for scope in ["staff", "system", "user"] {
            text.push_str(&format!("{scope} dev-{scope}-{}\n", random_token()));
        }
        std::fs::write(&path, &text).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Who a call acts as, from its metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Actor, tonic::Status> {
        let header = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "missing credentials: send 'authorization: Bearer <token>'",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                tonic::Status::unauthenticated("the authorization header must be 'Bearer <token>'")
            })?;
        // The token is never echoed: it is a secret even when it is wrong.
        let scope = self
            .scopes
            .get(token.trim())
            .ok_or_else(|| tonic::Status::unauthenticated("unknown token"))?;
        match scope {
            Scope::Staff => Ok(Actor::Staff),
            Scope::System => Ok(Actor::System),
            Scope::User => {
                let raw = metadata
                    .get(ACTOR_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .ok_or_else(|| {
                        tonic::Status::unauthenticated(
                            "a user token must name the person it acts for in 'x-actor'",
                        )
                    })?;
                let email = Email::parse(raw).map_err(|reason| {
                    tonic::Status::unauthenticated(format!("'x-actor' is not an email: {reason}"))
                })?;
                Ok(Actor::User(email))
            }
        }
    }
}

/// 128 random bits as 32 hexadecimal digits.
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines_and_errors() {
        let tokens = Tokens::parse(
            "# comment\nstaff 0123456789abcdef0123\n\nuser abcdefabcdefabcdef  # me\n",
        )
        .unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "authorization",
            "Bearer 0123456789abcdef0123".parse().unwrap(),
        );
        assert_eq!(tokens.authenticate(&metadata).unwrap(), Actor::Staff);
        assert!(Tokens::parse("admin 0123456789abcdef0123").is_err());
        assert!(Tokens::parse("staff short").is_err());
    }

    #[test]
    fn user_tokens_need_an_actor_and_wrong_tokens_are_not_echoed() {
        // ERR-2
        let tokens = Tokens::parse("user abcdefabcdefabcdef").unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "authorization",
            "Bearer abcdefabcdefabcdef".parse().unwrap(),
        );
        let missing = tokens.authenticate(&metadata).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        metadata.insert(ACTOR_HEADER, "Kid@North.edu".parse().unwrap());
        assert_eq!(
            tokens.authenticate(&metadata).unwrap(),
            Actor::User(Email::parse("kid@north.edu").unwrap())
        );
        metadata.insert(
            "authorization",
            "Bearer guessed-secret-token".parse().unwrap(),
        );
        let wrong = tokens.authenticate(&metadata).unwrap_err();
        assert!(!wrong.message().contains("guessed-secret-token"));
        assert!(tokens.authenticate(&MetadataMap::new()).is_err());
    }
}

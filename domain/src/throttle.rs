//! KEY-2: wrong license keys (and join-link tokens, which are secrets of the same kind) are
//! throttled per actor. Pure: the caller passes the time and keeps the throttle.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};

use crate::error::DomainError;
use crate::values::Actor;

/// KEY-2: after this many wrong secrets within the window ...
pub const WRONG_SECRETS_PER_WINDOW_MAX: usize = 10;
/// ... every further attempt within the window is refused.
pub const WRONG_SECRET_WINDOW_SECONDS: i64 = 60;
/// The most actors the throttle remembers. Beyond it, actors whose window has passed are
/// forgotten first; the bound keeps a flood of distinct identities from growing memory.
pub const THROTTLED_ACTORS_MAX: usize = 100_000;

#[derive(Clone, Debug, Default)]
pub struct WrongSecretThrottle {
    wrong_attempts: HashMap<Actor, VecDeque<DateTime<Utc>>>,
}

impl WrongSecretThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    fn window_start(now: DateTime<Utc>) -> DateTime<Utc> {
        now - Duration::seconds(WRONG_SECRET_WINDOW_SECONDS)
    }

    /// Call before looking at the secret: once an actor is over the limit, even a right
    /// secret is refused, so that guessing cannot go on.
    pub fn check(&mut self, actor: &Actor, now: DateTime<Utc>) -> Result<(), DomainError> {
        let start = Self::window_start(now);
        let Some(attempts) = self.wrong_attempts.get_mut(actor) else {
            return Ok(());
        };
        while attempts.front().is_some_and(|at| *at <= start) {
            attempts.pop_front();
        }
        if attempts.is_empty() {
            self.wrong_attempts.remove(actor);
            return Ok(());
        }
        if attempts.len() >= WRONG_SECRETS_PER_WINDOW_MAX {
            return Err(DomainError::ResourceExhausted(format!(
                "too many wrong license keys: after {WRONG_SECRETS_PER_WINDOW_MAX} wrong keys in a minute, wait a minute before trying again"
            )));
        }
        Ok(())
    }

    /// Records a wrong secret presented by an actor.
    pub fn record_wrong(&mut self, actor: &Actor, now: DateTime<Utc>) {
        if self.wrong_attempts.len() >= THROTTLED_ACTORS_MAX
            && !self.wrong_attempts.contains_key(actor)
        {
            let start = Self::window_start(now);
            self.wrong_attempts
                .retain(|_, attempts| attempts.back().is_some_and(|at| *at > start));
        }
        let attempts = self.wrong_attempts.entry(actor.clone()).or_default();
        attempts.push_back(now);
        // Only the newest attempts within the limit matter; older ones can go.
        while attempts.len() > WRONG_SECRETS_PER_WINDOW_MAX {
            attempts.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::Email;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn ten_wrong_keys_in_a_minute_lock_the_actor_out_for_the_rest_of_it() {
        // KEY-2
        let mut throttle = WrongSecretThrottle::new();
        let actor = Actor::User(Email::parse("guesser@gmail.com").unwrap());
        let other = Actor::User(Email::parse("honest@gmail.com").unwrap());
        for second in 0..10 {
            assert!(
                throttle.check(&actor, at(second)).is_ok(),
                "attempt {second}"
            );
            throttle.record_wrong(&actor, at(second));
        }
        let refused = throttle.check(&actor, at(30)).unwrap_err();
        assert!(matches!(refused, DomainError::ResourceExhausted(_)));
        assert!(
            throttle.check(&other, at(30)).is_ok(),
            "throttling is per actor"
        );
        // The first wrong key was at second 0; at second 61 only nine remain in the window.
        assert!(throttle.check(&actor, at(61)).is_ok());
    }

    #[test]
    fn nine_wrong_keys_do_not_throttle() {
        // KEY-2
        let mut throttle = WrongSecretThrottle::new();
        let actor = Actor::User(Email::parse("typo@gmail.com").unwrap());
        for second in 0..9 {
            throttle.record_wrong(&actor, at(second));
        }
        assert!(throttle.check(&actor, at(10)).is_ok());
    }
}

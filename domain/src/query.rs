//! Pure pieces of the queries that the projections and the server share.

/// The most characters a Manage Users search pattern may have.
pub const EMAIL_PATTERN_LENGTH_MAX_CHARS: usize = 256;

/// Q-2's email pattern: `%` matches any run of characters, everything else matches itself,
/// case-insensitively; a pattern without `%` is an exact match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailPattern {
    /// The literal pieces between the `%` signs, lower-cased.
    pieces: Vec<String>,
    anchored_start: bool,
    anchored_end: bool,
}

impl EmailPattern {
    pub fn parse(raw: &str) -> Result<Self, crate::DomainError> {
        if raw.chars().count() > EMAIL_PATTERN_LENGTH_MAX_CHARS {
            return Err(crate::DomainError::InvalidArgument(format!(
                "a search pattern is at most {EMAIL_PATTERN_LENGTH_MAX_CHARS} characters"
            )));
        }
        let lowered = raw.trim().to_lowercase();
        Ok(Self {
            anchored_start: !lowered.starts_with('%'),
            anchored_end: !lowered.ends_with('%'),
            pieces: lowered
                .split('%')
                .filter(|piece| !piece.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// The longest text every match starts with, for a range scan over an email-ordered
    /// index (empty when the pattern starts with `%`).
    pub fn literal_prefix(&self) -> &str {
        match (self.anchored_start, self.pieces.first()) {
            (true, Some(first)) => first,
            _ => "",
        }
    }

    pub fn is_exact(&self) -> bool {
        self.anchored_start && self.anchored_end && self.pieces.len() <= 1
    }

    pub fn matches(&self, email: &str) -> bool {
        let lowered;
        let text = if email.bytes().any(|b| b.is_ascii_uppercase()) || !email.is_ascii() {
            lowered = email.to_lowercase();
            lowered.as_str()
        } else {
            email
        };
        if self.pieces.is_empty() {
            // "" matches only "", and "%" or "%%" match everything.
            return !(self.anchored_start && self.anchored_end) || text.is_empty();
        }
        let mut rest = text;
        let last_index = self.pieces.len() - 1;
        for (index, piece) in self.pieces.iter().enumerate() {
            let first = index == 0;
            let last = index == last_index;
            if first && self.anchored_start {
                let Some(after) = rest.strip_prefix(piece.as_str()) else {
                    return false;
                };
                if last && self.anchored_end {
                    return after.is_empty();
                }
                rest = after;
            } else if last && self.anchored_end {
                return rest.len() >= piece.len() && rest.ends_with(piece.as_str());
            } else {
                let Some(found) = rest.find(piece.as_str()) else {
                    return false;
                };
                rest = &rest[found + piece.len()..];
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::EmailPattern;

    fn matches(pattern: &str, email: &str) -> bool {
        EmailPattern::parse(pattern).unwrap().matches(email)
    }

    #[test]
    fn percent_matches_any_run_case_insensitively() {
        //
        assert!(matches("%Thomas%", "a.thomas@d.org"));
        assert!(matches("%thomas%", "thomas.a@d.org"));
        assert!(!matches("%thomas%", "tom@d.org"));
        assert!(matches("thomas%", "thomas.a@d.org"));
        assert!(!matches("thomas%", "a.thomas@d.org"));
        assert!(matches("%@d.org", "tom@d.org"));
        assert!(!matches("%@d.org", "tom@d.org.uk"));
        assert!(matches("t%m@d.org", "tom@d.org"));
        assert!(matches("a%a", "aa"));
        assert!(!matches("a%a", "a"));
        assert!(matches("%", "anyone@d.org"));
    }

    #[test]
    fn no_percent_means_exact_match() {
        //
        assert!(matches("tom@d.org", "tom@d.org"));
        assert!(matches("TOM@d.org", "tom@d.org"));
        assert!(!matches("tom@d.org", "tom@d.org.uk"));
        assert!(!matches("tom", "tom@d.org"));
        assert!(
            matches("_", "_") && !matches("_", "a"),
            "underscore is literal"
        );
    }

    #[test]
    fn literal_prefix_serves_range_scans() {
        assert_eq!(
            EmailPattern::parse("Tho%mas").unwrap().literal_prefix(),
            "tho"
        );
        assert_eq!(EmailPattern::parse("%thomas").unwrap().literal_prefix(), "");
        assert!(EmailPattern::parse("tom@d.org").unwrap().is_exact());
    }
}

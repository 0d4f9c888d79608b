//! Placeholders in the strings of `with` and `let`: `${key:L1}` (license L1's current key),
//! `${link:L1}` (its current join-link token) and `${var}` (a `let` binding). Substitution
//! happens in two passes, because secrets are read over the network: first the runner lists
//! what a step refers to, reads those secrets, then replaces them all at once.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// What a placeholder refers to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placeholder {
    Key(String),
    Link(String),
    Variable(String),
}

impl Placeholder {
    fn parse(inner: &str) -> Result<Self, String> {
        let placeholder = if let Some(license) = inner.strip_prefix("key:") {
            Self::Key(license.to_owned())
        } else if let Some(license) = inner.strip_prefix("link:") {
            Self::Link(license.to_owned())
        } else {
            Self::Variable(inner.to_owned())
        };
        match &placeholder {
            Self::Key(name) | Self::Link(name) | Self::Variable(name) if name.is_empty() => {
                Err(format!("the placeholder ${{{inner}}} names nothing"))
            }
            _ => Ok(placeholder),
        }
    }
}

impl std::fmt::Display for Placeholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(license) => write!(f, "${{key:{license}}}"),
            Self::Link(license) => write!(f, "${{link:{license}}}"),
            Self::Variable(name) => write!(f, "${{{name}}}"),
        }
    }
}

/// Every placeholder in the strings of `value`, keys and links included.
pub fn placeholders_in(value: &Value) -> Result<BTreeSet<Placeholder>, String> {
    let mut found = BTreeSet::new();
    visit_strings(value, &mut |text| {
        replace_in_text(text, &mut |placeholder| {
            found.insert(placeholder.clone());
            Ok(String::new())
        })
        .map(drop)
    })?;
    Ok(found)
}

/// `value` with every placeholder replaced by its entry in `resolved`; a placeholder
/// missing there is an error.
pub fn substitute(value: &Value, resolved: &HashMap<Placeholder, String>) -> Result<Value, String> {
    let mut replace = |placeholder: &Placeholder| {
        resolved
            .get(placeholder)
            .cloned()
            .ok_or_else(|| format!("{placeholder} is not defined"))
    };
    map_strings(value, &mut |text| replace_in_text(text, &mut replace))
}

/// Replaces each `${...}` of `text` once, left to right. Replacement text is not scanned
/// again, so a secret that happened to contain `${` could not be mistaken for a placeholder.
/// A `${` without a closing brace is kept as written.
fn replace_in_text(
    text: &str,
    replace: &mut dyn FnMut(&Placeholder) -> Result<String, String>,
) -> Result<String, String> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(length) = rest[start + 2..].find('}') else {
            break;
        };
        output.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + 2 + length];
        output.push_str(&replace(&Placeholder::parse(inner)?)?);
        rest = &rest[start + 2 + length + 1..];
    }
    output.push_str(rest);
    Ok(output)
}

fn visit_strings(
    value: &Value,
    visit: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().try_for_each(|item| visit_strings(item, visit)),
        Value::Object(map) => map.values().try_for_each(|item| visit_strings(item, visit)),
        _ => Ok(()),
    }
}

fn map_strings(
    value: &Value,
    change: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(change(text)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| map_strings(item, change))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), map_strings(item, change)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_every_kind_of_placeholder_once() {
        let with = json!({"key": "${key:T1}", "list": ["${link:T1}", "x${old}y${old}"], "n": 5});
        let found = placeholders_in(&with).unwrap();
        let expected: BTreeSet<Placeholder> = [
            Placeholder::Key("T1".into()),
            Placeholder::Link("T1".into()),
            Placeholder::Variable("old".into()),
        ]
        .into();
        assert_eq!(found, expected);
    }

    #[test]
    fn substitutes_in_nested_strings_and_leaves_other_values() {
        let resolved: HashMap<Placeholder, String> = [
            (Placeholder::Key("T1".into()), "secret-1".to_owned()),
            (Placeholder::Variable("old".into()), "${key:T1}".to_owned()),
        ]
        .into();
        let with =
            json!({"key": "${key:T1}", "deep": [{"v": "a-${old}-b"}], "seats": 5, "flag": true});
        let replaced = substitute(&with, &resolved).unwrap();
        // The variable's value is not scanned again.
        assert_eq!(
            replaced,
            json!({"key": "secret-1", "deep": [{"v": "a-${key:T1}-b"}], "seats": 5, "flag": true})
        );
    }

    #[test]
    fn an_undefined_placeholder_is_an_error_and_an_unclosed_one_is_text() {
        let error = substitute(&json!("${nope}"), &HashMap::new()).unwrap_err();
        assert!(error.contains("${nope}"), "{error}");
        assert!(placeholders_in(&json!("${}")).is_err());
        assert!(placeholders_in(&json!("${key:}")).is_err());
        assert_eq!(
            substitute(&json!("cost: ${5"), &HashMap::new()).unwrap(),
            json!("cost: ${5")
        );
    }
}

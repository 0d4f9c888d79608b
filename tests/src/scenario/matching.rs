//! FORMAT.md's matching rules: an expected object matches when every key it names matches
//! (other keys are ignored), an expected array matches element by element in order,
//! `{"$len": N}` matches an array of length N, `{"$unordered": [...]}` matches the same
//! elements in any order, and numbers, strings and booleans match by equality.

use serde_json::{Map, Value};

/// Why an answer does not match: where (`result.users[0].email`) and what differs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Mismatch {
    pub path: String,
    pub reason: String,
}

/// Checks `actual` against the pattern `expected`; `path` names the root in messages.
pub fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), Mismatch> {
    let mismatch = |reason: String| {
        Err(Mismatch {
            path: path.to_owned(),
            reason,
        })
    };
    match expected {
        Value::Object(pattern) if is_operator(pattern, "$len") => {
            let Some(wanted) = pattern["$len"].as_u64() else {
                return mismatch(format!(
                    "$len takes a whole number, not {}",
                    pattern["$len"]
                ));
            };
            match actual.as_array() {
                Some(items) if items.len() as u64 == wanted => Ok(()),
                Some(items) => mismatch(format!(
                    "expected {wanted} items, got {}: {actual}",
                    items.len()
                )),
                None => mismatch(format!("expected a list, got {actual}")),
            }
        }
        Value::Object(pattern) if is_operator(pattern, "$unordered") => {
            let Some(wanted) = pattern["$unordered"].as_array() else {
                return mismatch(format!(
                    "$unordered takes a list, not {}",
                    pattern["$unordered"]
                ));
            };
            let Some(items) = actual.as_array() else {
                return mismatch(format!("expected a list, got {actual}"));
            };
            if items.len() != wanted.len() {
                return mismatch(format!(
                    "expected {} items in any order, got {}: {actual}",
                    wanted.len(),
                    items.len()
                ));
            }
            match unmatched_pattern(wanted, items, path) {
                None => Ok(()),
                Some(index) => mismatch(format!(
                    "no distinct element matches {} in {actual}",
                    wanted[index]
                )),
            }
        }
        Value::Object(pattern) => {
            let Some(object) = actual.as_object() else {
                return mismatch(format!("expected an object, got {actual}"));
            };
            for (key, wanted) in pattern {
                let child = format!("{path}.{key}");
                let Some(got) = object.get(key) else {
                    return Err(Mismatch {
                        path: child,
                        reason: format!("missing in {actual}"),
                    });
                };
                matches(wanted, got, &child)?;
            }
            Ok(())
        }
        Value::Array(wanted) => {
            let Some(items) = actual.as_array() else {
                return mismatch(format!("expected a list, got {actual}"));
            };
            if items.len() != wanted.len() {
                return mismatch(format!(
                    "expected {} items, got {}: {actual}",
                    wanted.len(),
                    items.len()
                ));
            }
            wanted
                .iter()
                .zip(items)
                .enumerate()
                .try_for_each(|(index, (want, got))| {
                    matches(want, got, &format!("{path}[{index}]"))
                })
        }
        Value::Number(wanted) => match actual {
            Value::Number(got) if numbers_equal(wanted, got) => Ok(()),
            _ => mismatch(format!("expected {expected}, got {actual}")),
        },
        _ if expected == actual => Ok(()),
        _ => mismatch(format!("expected {expected}, got {actual}")),
    }
}

/// An object is an operator only when the operator is its sole key, so that an answer
/// object that happens to have such a key can still be matched as an object.
fn is_operator(pattern: &Map<String, Value>, operator: &str) -> bool {
    pattern.len() == 1 && pattern.contains_key(operator)
}

/// Whole numbers compare exactly (the answers' counters are 64-bit); anything else by value.
fn numbers_equal(wanted: &serde_json::Number, got: &serde_json::Number) -> bool {
    if let (Some(a), Some(b)) = (wanted.as_i64(), got.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (wanted.as_u64(), got.as_u64()) {
        return a == b;
    }
    match (wanted.as_f64(), got.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Pairs every pattern with a distinct item (a bipartite matching, so that a broad pattern
/// listed first cannot take the only item a narrower pattern fits). Answers the index of a
/// pattern left without an item, if any.
fn unmatched_pattern(patterns: &[Value], items: &[Value], path: &str) -> Option<usize> {
    let fits: Vec<Vec<bool>> = patterns
        .iter()
        .map(|pattern| {
            items
                .iter()
                .map(|item| matches(pattern, item, path).is_ok())
                .collect()
        })
        .collect();
    // `owner[item]` is the pattern currently holding that item.
    let mut owner: Vec<Option<usize>> = vec![None; items.len()];
    for pattern in 0..patterns.len() {
        let mut visited = vec![false; items.len()];
        if !augment(pattern, &fits, &mut owner, &mut visited) {
            return Some(pattern);
        }
    }
    None
}

/// Kuhn's augmenting path: gives `pattern` an item, moving earlier patterns to other items
/// they also fit when needed. Each call visits every item at most once.
fn augment(
    pattern: usize,
    fits: &[Vec<bool>],
    owner: &mut [Option<usize>],
    visited: &mut [bool],
) -> bool {
    for item in 0..owner.len() {
        if !fits[pattern][item] || visited[item] {
            continue;
        }
        visited[item] = true;
        let free = match owner[item] {
            None => true,
            Some(holder) => augment(holder, fits, owner, visited),
        };
        if free {
            owner[item] = Some(pattern);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expected: Value, actual: Value) -> Result<(), Mismatch> {
        matches(&expected, &actual, "result")
    }

    #[test]
    fn objects_match_by_subset_and_a_missing_key_is_a_mismatch() {
        assert!(check(json!({"a": 1}), json!({"a": 1, "b": 2})).is_ok());
        assert!(check(json!({}), json!({"a": 1})).is_ok());
        let missing = check(json!({"c": 1}), json!({"a": 1})).unwrap_err();
        assert_eq!(missing.path, "result.c");
        assert!(check(json!({"a": 1}), json!([1])).is_err());
    }

    #[test]
    fn nested_mismatches_name_their_path() {
        let error = check(
            json!({"users": [{"email": "a@x.org"}, {"email": "b@x.org"}]}),
            json!({"users": [{"email": "a@x.org"}, {"email": "c@x.org", "status": "accepted"}], "more": false}),
        )
        .unwrap_err();
        assert_eq!(error.path, "result.users[1].email");
        assert!(error.reason.contains("\"b@x.org\""), "{error}");
        assert!(error.reason.contains("\"c@x.org\""), "{error}");
    }

    #[test]
    fn arrays_match_by_length_and_order() {
        assert!(check(json!([1, 2]), json!([1, 2])).is_ok());
        assert!(check(json!([1, 2]), json!([2, 1])).is_err());
        assert!(check(json!([1, 2]), json!([1, 2, 3])).is_err());
        assert!(check(json!([]), json!([])).is_ok());
        assert!(check(json!([]), json!({})).is_err());
    }

    #[test]
    fn length_operator() {
        assert!(check(json!({"$len": 2}), json!([7, 8])).is_ok());
        assert!(check(json!({"$len": 0}), json!([])).is_ok());
        assert!(check(json!({"$len": 3}), json!([7, 8])).is_err());
        assert!(check(json!({"$len": 0}), json!({})).is_err());
        assert!(check(json!({"$len": "two"}), json!([7, 8])).is_err());
        // With another key beside it, `$len` is an ordinary key of an object.
        assert!(check(json!({"$len": 1, "a": 1}), json!({"$len": 1, "a": 1})).is_ok());
    }

    #[test]
    fn unordered_operator_pairs_each_pattern_with_a_distinct_element() {
        assert!(check(json!({"$unordered": [2, 1]}), json!([1, 2])).is_ok());
        assert!(check(json!({"$unordered": [2, 2]}), json!([1, 2])).is_err());
        assert!(check(json!({"$unordered": [1]}), json!([1, 2])).is_err());
        // A greedy pairing would give the broad first pattern the only element the second
        // pattern fits, and fail.
        assert!(
            check(
                json!({"$unordered": [{"a": 1}, {"a": 1, "b": 2}]}),
                json!([{"a": 1, "b": 2}, {"a": 1, "b": 3}])
            )
            .is_ok()
        );
        assert!(
            check(
                json!({"$unordered": [{"a": 1, "b": 2}, {"a": 1, "b": 2}]}),
                json!([{"a": 1, "b": 2}, {"a": 1, "b": 3}])
            )
            .is_err()
        );
    }

    #[test]
    fn scalars_match_by_equality_and_zero_values_are_values() {
        assert!(check(json!(0), json!(0)).is_ok());
        assert!(check(json!(5), json!(5.0)).is_ok());
        assert!(check(json!(5), json!(6)).is_err());
        assert!(check(json!(5), json!("5")).is_err());
        assert!(check(json!(u64::MAX), json!(u64::MAX - 1)).is_err());
        assert!(check(json!(false), json!(false)).is_ok());
        assert!(check(json!(false), json!(null)).is_err());
        assert!(check(json!(""), json!("")).is_ok());
        assert!(check(json!("a"), json!("A")).is_err());
        assert!(check(json!({"features": {}}), json!({"features": {}})).is_ok());
    }
}

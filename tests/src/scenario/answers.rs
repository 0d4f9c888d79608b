//! The API's replies as the JSON answers of FORMAT.md's table: every field of the shape,
//! zero values included, so that an expected `0`, `false`, `""`, `[]` or `{}` can match.
//! Command replies also carry the log position the runner needs for read-your-writes;
//! it is returned beside the answer rather than inside it.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// A reply as FORMAT.md shows it.
pub trait Answer {
    /// The answer's JSON.
    fn to_json(&self) -> Value;
}

/// A command's reply: its answer and the log position its events reached (0 when the
/// command appended nothing).
pub trait CommandAnswer: Answer {
    fn position(&self) -> u64;
}

macro_rules! command_answer {
    ($($reply:ty),* $(,)?) => {
        $(impl CommandAnswer for $reply {
            fn position(&self) -> u64 {
                self.position
            }
        })*
    };
}

command_answer!(
    proto::CommandReply,
    proto::AddUsersReply,
    proto::ImportCsvReply,
    proto::RemoveUsersReply,
    proto::JoinReply,
    proto::UnlinkOuReply,
    proto::OuSyncReply,
    proto::LicenseNameReply,
    proto::AutomaticReply,
);

impl Answer for proto::CommandReply {
    fn to_json(&self) -> Value {
        json!({})
    }
}

impl Answer for proto::AddUsersReply {
    fn to_json(&self) -> Value {
        json!({
            "added": self.added,
            "invited": self.invited,
            "unchanged": self.unchanged,
            "invalid": self.invalid.iter().map(|entry| json!({
                "position": entry.position,
                "value": entry.value,
                "reason": entry.reason,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Answer for proto::ImportCsvReply {
    fn to_json(&self) -> Value {
        json!({
            "added": self.added,
            "invited": self.invited,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "not_found": self.not_found,
            "will_return": self.will_return,
            "invalid_count": self.invalid_count,
            "invalid": self.invalid.iter().map(|error| json!({
                "line": error.line,
                "reason": error.reason,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Answer for proto::RemoveUsersReply {
    fn to_json(&self) -> Value {
        json!({
            "removed": self.removed,
            "not_found": self.not_found,
            "will_return": self.will_return,
        })
    }
}

impl Answer for proto::JoinReply {
    fn to_json(&self) -> Value {
        json!({"license": self.license, "status": self.status})
    }
}

impl Answer for proto::UnlinkOuReply {
    fn to_json(&self) -> Value {
        json!({"removed": self.removed})
    }
}

/// SyncOu's shape; ConfirmOuSync's is the same without `held` (see [`confirm_ou_sync`]).
impl Answer for proto::OuSyncReply {
    fn to_json(&self) -> Value {
        json!({
            "added": self.added,
            "removed": self.removed,
            "readded": self.readded,
            "skipped_suspended": self.skipped_suspended,
            "waitlisted": self.waitlisted,
            "held": self.held,
        })
    }
}

/// ConfirmOuSync's answer: FORMAT.md gives it no `held`, since a confirmed sync is applied.
pub fn confirm_ou_sync(reply: &proto::OuSyncReply) -> Value {
    let mut answer = reply.to_json();
    if let Value::Object(fields) = &mut answer {
        fields.remove("held");
    }
    answer
}

impl Answer for proto::LicenseNameReply {
    fn to_json(&self) -> Value {
        json!({"license": self.license})
    }
}

impl Answer for proto::AutomaticReply {
    fn to_json(&self) -> Value {
        json!({"added": self.added, "waitlisted": self.waitlisted})
    }
}

fn object_of<V: Into<Value> + Clone>(map: &HashMap<String, V>) -> Value {
    // serde_json's map is ordered, so the printed answer does not depend on hashing.
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), value.clone().into()))
            .collect::<Map<String, Value>>(),
    )
}

impl Answer for proto::LicenseView {
    fn to_json(&self) -> Value {
        let features_by_role: Map<String, Value> = self
            .features_by_role
            .iter()
            .map(|(role, set)| (role.clone(), object_of(&set.features)))
            .collect();
        json!({
            "id": self.id,
            "type": self.r#type,
            "seats": self.seats,
            "users_count": self.users_count,
            "accepted": self.accepted,
            "invited": self.invited,
            "rejected": self.rejected,
            "waitlisted": self.waitlisted,
            "seats_free": self.seats_free,
            "over_by": self.over_by,
            "expired": self.expired,
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "admins": self.admins,
            "domains": self.domains,
            "ou_paths": self.ou_paths,
            "ou_sync_held": self.ou_sync_held,
            "auto_enrollment": self.auto_enrollment,
            "features": object_of(&self.features),
            "features_by_role": features_by_role,
            "key": self.key,
            "link": self.link,
        })
    }
}

/// One ListUsers row.
pub fn user_row(row: &proto::UserRow) -> Value {
    json!({
        "email": row.email,
        "status": row.status,
        "source": row.source,
        "role": row.role,
        "added_at": row.added_at,
        "added_by": row.added_by,
    })
}

/// ListUsers' answer from the rows gathered over one or more pages.
pub fn list_users(rows: &[proto::UserRow], more: bool) -> Value {
    json!({"users": rows.iter().map(user_row).collect::<Vec<_>>(), "more": more})
}

impl Answer for proto::MyLicensesReply {
    fn to_json(&self) -> Value {
        json!({"licenses": self.licenses.iter().map(|license| json!({
            "license": license.license,
            "status": license.status,
        })).collect::<Vec<_>>()})
    }
}

impl Answer for proto::MyInvitesReply {
    fn to_json(&self) -> Value {
        json!({"invites": self.invites.iter().map(|invite| json!({
            "license": invite.license,
        })).collect::<Vec<_>>()})
    }
}

impl Answer for proto::MyDomainsReply {
    fn to_json(&self) -> Value {
        json!({"domains": self.domains})
    }
}

impl Answer for proto::UsageReply {
    fn to_json(&self) -> Value {
        json!({"buckets": self.buckets.iter().map(|bucket| json!({
            "start": bucket.start,
            "users_count": bucket.users_count,
            "added": object_of(&bucket.added),
            "removed": object_of(&bucket.removed),
        })).collect::<Vec<_>>()})
    }
}

/// History's events carry every field of the API. `change` is JSON text on the wire; it is
/// shown as the JSON it holds, so that a scenario can match part of it
/// (`{"change": {"seats": 5}}`), and as the text itself when it does not parse.
impl Answer for proto::HistoryReply {
    fn to_json(&self) -> Value {
        json!({"events": self.events.iter().map(|event| json!({
            "position": event.position,
            "stream": event.stream,
            "revision": event.revision,
            "type": event.r#type,
            "at": event.at,
            "actor": event.actor,
            "email": event.email,
            "change": serde_json::from_str::<Value>(&event.change)
                .unwrap_or_else(|_| Value::String(event.change.clone())),
        })).collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_shown() {
        let answer = proto::LicenseView::default().to_json();
        for (key, zero) in [
            ("id", json!("")),
            ("seats", json!(0)),
            ("expired", json!(false)),
            ("admins", json!([])),
            ("features", json!({})),
            ("features_by_role", json!({})),
            ("key", json!("")),
            ("link", json!("")),
        ] {
            assert_eq!(answer[key], zero, "{key}");
        }
        assert_eq!(answer.as_object().unwrap().len(), 22);
        assert_eq!(
            proto::ImportCsvReply::default().to_json(),
            json!({"added": 0, "invited": 0, "unchanged": 0, "removed": 0, "not_found": 0,
                "will_return": 0, "invalid_count": 0, "invalid": []})
        );
        assert_eq!(proto::CommandReply { position: 7 }.to_json(), json!({}));
    }

    #[test]
    fn feature_maps_become_objects() {
        let view = proto::LicenseView {
            features: [("text_to_speech".to_owned(), false)].into(),
            features_by_role: [(
                "teacher".to_owned(),
                proto::FeatureSet {
                    features: [("text_to_speech".to_owned(), true)].into(),
                },
            )]
            .into(),
            ..Default::default()
        };
        let answer = view.to_json();
        assert_eq!(answer["features"], json!({"text_to_speech": false}));
        assert_eq!(
            answer["features_by_role"],
            json!({"teacher": {"text_to_speech": true}})
        );
    }

    #[test]
    fn command_answers_keep_their_shape_and_position() {
        let reply = proto::AddUsersReply {
            position: 12,
            added: 1,
            invited: 2,
            unchanged: 0,
            invalid: vec![proto::InvalidEntry {
                position: 3,
                value: "nope".into(),
                reason: "not an email".into(),
            }],
        };
        assert_eq!(reply.position(), 12);
        assert_eq!(
            reply.to_json(),
            json!({"added": 1, "invited": 2, "unchanged": 0,
                "invalid": [{"position": 3, "value": "nope", "reason": "not an email"}]})
        );
        let sync = proto::OuSyncReply {
            held: true,
            ..Default::default()
        };
        assert_eq!(sync.to_json()["held"], json!(true));
        assert!(confirm_ou_sync(&sync).get("held").is_none());
        assert_eq!(confirm_ou_sync(&sync)["readded"], json!(0));
    }

    #[test]
    fn usage_history_and_rows() {
        let usage = proto::UsageReply {
            buckets: vec![proto::UsageBucket {
                start: "2026-09-01T00:00:00+00:00".into(),
                users_count: 3,
                added: [("key".to_owned(), 2)].into(),
                removed: HashMap::new(),
            }],
        };
        assert_eq!(
            usage.to_json(),
            json!({"buckets": [{"start": "2026-09-01T00:00:00+00:00", "users_count": 3,
                "added": {"key": 2}, "removed": {}}]})
        );
        let history = proto::HistoryReply {
            events: vec![proto::HistoryEvent {
                r#type: "UserAdded".into(),
                actor: "staff".into(),
                email: "a@x.org".into(),
                change: r#"{"source":"csv","status":"accepted"}"#.into(),
                ..Default::default()
            }],
        };
        let events = history.to_json();
        assert_eq!(events["events"][0]["type"], json!("UserAdded"));
        assert_eq!(events["events"][0]["position"], json!(0));
        assert_eq!(
            events["events"][0]["change"],
            json!({"source": "csv", "status": "accepted"})
        );
        let unparsable = proto::HistoryReply {
            events: vec![proto::HistoryEvent {
                change: "not json".into(),
                ..Default::default()
            }],
        };
        assert_eq!(
            unparsable.to_json()["events"][0]["change"],
            json!("not json")
        );
        let rows = [proto::UserRow {
            email: "a@x.org".into(),
            ..Default::default()
        }];
        assert_eq!(
            list_users(&rows, false),
            json!({"users": [{"email": "a@x.org", "status": "", "source": "", "role": "",
                "added_at": "", "added_by": ""}], "more": false})
        );
    }
}

//! What an event changed, for auditors, as a small JSON object. Secrets never appear:
//! a rotated key is shown as rotated, not as its value.

use domain::events::Event;
use serde_json::{Value, json};

pub fn change_summary(event: &Event) -> String {
    let value: Value = match event {
        Event::LicenseIssued(e) => json!({
            "license": e.license.as_str(), "type": e.license_type.as_str(), "seats": e.seats,
            "valid_from": crate::time_text(e.valid_from), "valid_until": crate::time_text(e.valid_until),
            "admins": e.admins.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "auto_enrollment": e.auto_enrollment,
        }),
        Event::LicenseRenewed(e) => {
            json!({"valid_until": crate::time_text(e.valid_until), "previous_valid_until": crate::time_text(e.previous_valid_until)})
        }
        Event::SeatsChanged(e) => json!({"seats": e.seats, "previous_seats": e.previous_seats}),
        Event::LicenseAdminGranted(e) => json!({"email": e.email.as_str()}),
        Event::LicenseAdminRevoked(e) => json!({"email": e.email.as_str()}),
        Event::DomainAdminGranted(e) => {
            json!({"domain": e.domain.as_str(), "email": e.email.as_str()})
        }
        Event::DomainAdminRevoked(e) => {
            json!({"domain": e.domain.as_str(), "email": e.email.as_str()})
        }
        Event::UserAdded(e) => {
            json!({"email": e.email.as_str(), "status": "accepted", "source": e.source.as_str(), "role": e.role.as_str(), "ou_path": e.ou_path.as_ref().map(|p| p.as_str())})
        }
        Event::InviteSent(e) => {
            json!({"email": e.email.as_str(), "status": "invited", "source": e.source.as_str(), "role": e.role.as_str()})
        }
        Event::InviteAccepted(e) => json!({"email": e.email.as_str(), "status": "accepted"}),
        Event::InviteRejected(e) => json!({"email": e.email.as_str(), "status": "rejected"}),
        Event::UserWaitlisted(e) => {
            json!({"email": e.email.as_str(), "status": "waitlisted", "source": e.source.as_str(), "role": e.role.as_str()})
        }
        Event::UserPromoted(e) => json!({"email": e.email.as_str(), "status": "accepted"}),
        Event::UserRemoved(e) => {
            json!({"email": e.email.as_str(), "removed": true, "reason": format!("{:?}", e.reason)})
        }
        Event::LicenseKeyRotated(_) => json!({"key": "rotated"}),
        Event::JoinLinkRotated(_) => json!({"link": "rotated"}),
        Event::FeaturePermissionSet(e) => {
            json!({"feature": e.feature.as_str(), "enabled": e.enabled, "role": e.role.map(|r| r.as_str())})
        }
        Event::AutoEnrollmentSet(e) => json!({"enabled": e.enabled}),
        Event::OuLinked(e) => {
            json!({"ou_paths": e.ou_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>()})
        }
        Event::OuUnlinked(e) => {
            json!({"ou_paths": e.ou_paths.iter().map(|p| p.as_str()).collect::<Vec<_>>()})
        }
        Event::OuSynced(e) => {
            json!({"added": e.counts.added, "removed": e.counts.removed, "readded": e.counts.readded, "skipped_suspended": e.counts.skipped_suspended, "waitlisted": e.counts.waitlisted})
        }
        Event::OuSyncHeld(e) => {
            json!({"entries": e.entries.len(), "reason": e.reason, "would_remove": e.would.removed})
        }
        Event::OuSyncConfirmed(e) => json!({"entries": e.entries_count}),
        Event::DomainClaimed(e) => {
            json!({"domain": e.domain.as_str(), "license": e.license.as_str()})
        }
        Event::DomainReleased(e) => {
            json!({"domain": e.domain.as_str(), "license": e.license.as_str()})
        }
    };
    value.to_string()
}

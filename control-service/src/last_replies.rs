//! The last allowance this replica gave each instance, repeated (marked degraded) while the
//! store is unreachable, for what is left of its validity.

use std::collections::HashMap;

use wipgate_admission::wire::{InForce, SyncReply};
use wipgate_admission::Bulkhead;

/// See [`crate::state::Inner::last_replies`].
#[derive(Default)]
pub struct LastReplies {
    /// Per instance: the reply and when it was given (ms, the service's clock).
    replies: HashMap<String, (SyncReply, u64)>,
    /// Expired replies are swept when the map reaches this size.
    sweep_at: usize,
}

impl LastReplies {
    /// Remembers `reply` as given at `now_ms` to the instance filed under `key` (its id, and
    /// its nonce when it sends one: `fleet::instance_book::book_key`).
    pub fn insert(&mut self, key: &str, reply: &SyncReply, now_ms: u64) {
        if self.replies.len() >= self.sweep_at {
            self.replies
                .retain(|_, (r, at)| now_ms.saturating_sub(*at) < r.stale_after_ms);
            self.sweep_at = self.replies.len() * 2 + 64;
        }
        self.replies.insert(key.to_owned(), (reply.clone(), now_ms));
    }

    /// The last reply to `instance`, marked degraded, with what is left at `now_ms` of its
    /// validity; `None` when there is none or it has run out.
    pub fn degraded(&self, key: &str, now_ms: u64) -> Option<SyncReply> {
        let (reply, at) = self.replies.get(key)?;
        let age = now_ms.saturating_sub(*at);
        let left = reply.stale_after_ms.checked_sub(age).filter(|l| *l > 0)?;
        Some(SyncReply {
            degraded: true,
            stale_after_ms: left,
            ..reply.clone()
        })
    }
}

/// A repeated reply within what the Envoy enforces now, entry by entry. Another replica may
/// have lowered its grant since this replica's reply, and the fleet counts only the lower
/// one once the Envoy shows it in force: a repeat must never raise what it enforces.
/// A report of protocol version 2 or later without an allowance in force gets no repeat
/// (`None`): its last grant may have been freed; version 1 reports say nothing, and get the
/// repeat as before.
pub fn within_in_force(
    reply: SyncReply,
    version: u32,
    in_force: Option<&InForce>,
) -> Option<SyncReply> {
    if version < 2 {
        return Some(reply);
    }
    let f = in_force?;
    let min_max = |a: Option<u32>, b: Option<u32>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let cap = |entries: std::collections::BTreeMap<String, Bulkhead>,
               held: &std::collections::BTreeMap<String, Bulkhead>| {
        entries
            .into_iter()
            .map(|(name, b)| {
                let (reserved, max) = match held.get(&name) {
                    Some(h) => (b.reserved.min(h.reserved), min_max(b.max, h.max)),
                    None => (0, b.max),
                };
                let reserved = reserved.min(max.unwrap_or(u32::MAX));
                (name, Bulkhead { reserved, max })
            })
            .collect()
    };
    Some(SyncReply {
        max_inflight: reply.max_inflight.min(f.max_inflight),
        tenants: cap(reply.tenants, &f.tenants),
        classes: cap(reply.classes, &f.classes),
        ..reply
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn reply(instance: &str, stale_after_ms: u64) -> SyncReply {
        SyncReply {
            instance: instance.to_owned(),
            policy_version: 3,
            max_inflight: 7,
            tenants: std::collections::BTreeMap::new(),
            classes: std::collections::BTreeMap::new(),
            degraded: false,
            stale_after_ms,
            health: wipgate_admission::wire::ResourceHealth::Ok,
        }
    }

    #[test]
    fn a_repeated_reply_is_degraded_and_keeps_only_what_is_left_of_its_validity() {
        let mut last = LastReplies::default();
        last.insert("e1", &reply("e1", 1_000), 10_000);
        assert!(last.degraded("e2", 10_000).is_none(), "never served");
        let repeated = last.degraded("e1", 10_400).unwrap();
        assert!(repeated.degraded);
        assert_eq!(repeated.stale_after_ms, 600);
        assert_eq!(
            SyncReply {
                degraded: false,
                stale_after_ms: 1_000,
                ..repeated
            },
            reply("e1", 1_000)
        );
        assert_eq!(last.degraded("e1", 10_999).unwrap().stale_after_ms, 1);
        assert!(last.degraded("e1", 11_000).is_none(), "run out");
    }

    #[test]
    fn expired_replies_are_swept() {
        let mut last = LastReplies::default();
        for i in 0..64 {
            last.insert(&format!("old-{i}"), &reply(&format!("old-{i}"), 1_000), 0);
        }
        // The 65th insert sweeps: everything given at 0 has run out at 1000.
        last.insert("new", &reply("new", 1_000), 1_000);
        assert_eq!(last.replies.len(), 1);
        assert!(last.degraded("new", 1_500).is_some());
    }

    #[test]
    fn a_repeat_never_raises_what_a_version_2_envoy_enforces() {
        let mut given = reply("e1", 1_000);
        given.tenants.insert(
            "acme".into(),
            Bulkhead {
                reserved: 4,
                max: Some(9),
            },
        );
        given.tenants.insert(
            "new".into(),
            Bulkhead {
                reserved: 2,
                max: Some(5),
            },
        );
        let in_force = InForce {
            max_inflight: 5,
            tenants: [(
                "acme".to_owned(),
                Bulkhead {
                    reserved: 6,
                    max: Some(3),
                },
            )]
            .into(),
            classes: std::collections::BTreeMap::new(),
        };
        let r = within_in_force(given.clone(), 2, Some(&in_force)).unwrap();
        assert_eq!(r.max_inflight, 5);
        assert_eq!(
            r.tenants["acme"],
            Bulkhead {
                reserved: 3,
                max: Some(3)
            }
        );
        assert_eq!(
            r.tenants["new"],
            Bulkhead {
                reserved: 0,
                max: Some(5)
            }
        );
        assert!(
            within_in_force(given.clone(), 2, None).is_none(),
            "nothing in force"
        );
        assert_eq!(
            within_in_force(given.clone(), 1, None),
            Some(given),
            "version 1"
        );
    }
}

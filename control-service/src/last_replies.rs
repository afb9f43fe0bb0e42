//! The last allowance this replica gave each instance, repeated (marked degraded) while the
//! store is unreachable, for what is left of its validity.

use std::collections::HashMap;

use wipgate_admission::wire::SyncReply;

/// See [`crate::state::Inner::last_replies`].
#[derive(Default)]
pub struct LastReplies {
    /// Per instance: the reply and when it was given (ms, the service's clock).
    replies: HashMap<String, (SyncReply, u64)>,
    /// Expired replies are swept when the map reaches this size.
    sweep_at: usize,
}

impl LastReplies {
    /// Remembers `reply` as given at `now_ms`.
    pub fn insert(&mut self, reply: &SyncReply, now_ms: u64) {
        if self.replies.len() >= self.sweep_at {
            self.replies
                .retain(|_, (r, at)| now_ms.saturating_sub(*at) < r.stale_after_ms);
            self.sweep_at = self.replies.len() * 2 + 64;
        }
        self.replies
            .insert(reply.instance.clone(), (reply.clone(), now_ms));
    }

    /// The last reply to `instance`, marked degraded, with what is left at `now_ms` of its
    /// validity; `None` when there is none or it has run out.
    pub fn degraded(&self, instance: &str, now_ms: u64) -> Option<SyncReply> {
        let (reply, at) = self.replies.get(instance)?;
        let age = now_ms.saturating_sub(*at);
        let left = reply.stale_after_ms.checked_sub(age).filter(|l| *l > 0)?;
        Some(SyncReply {
            degraded: true,
            stale_after_ms: left,
            ..reply.clone()
        })
    }
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
        last.insert(&reply("e1", 1_000), 10_000);
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
            last.insert(&reply(&format!("old-{i}"), 1_000), 0);
        }
        // The 65th insert sweeps: everything given at 0 has run out at 1000.
        last.insert(&reply("new", 1_000), 1_000);
        assert_eq!(last.replies.len(), 1);
        assert!(last.degraded("new", 1_500).is_some());
    }
}

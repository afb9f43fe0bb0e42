//! The last allowance this replica gave each instance, repeated (marked degraded) while the
//! store is unreachable, for what is left of its validity.

use std::collections::HashMap;
use std::time::Instant;

use wipgate_admission::wire::SyncReply;

/// See [`crate::state::Inner::last_replies`].
#[derive(Default)]
pub struct LastReplies {
    replies: HashMap<String, (SyncReply, Instant)>,
    sweep_at: usize,
}

impl LastReplies {
    /// Remembers `reply` as given now.
    pub fn insert(&mut self, reply: &SyncReply) {
        if self.replies.len() >= self.sweep_at {
            let now = Instant::now();
            self.replies.retain(|_, (r, at)| {
                now.duration_since(*at).as_millis() < u128::from(r.stale_after_ms)
            });
            self.sweep_at = self.replies.len() * 2 + 64;
        }
        self.replies
            .insert(reply.instance.clone(), (reply.clone(), Instant::now()));
    }

    /// The last reply to `instance`, marked degraded, with what is left of its validity;
    /// `None` when there is none or it has run out.
    pub fn degraded(&self, instance: &str) -> Option<SyncReply> {
        let (reply, at) = self.replies.get(instance)?;
        let age = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let left = reply.stale_after_ms.checked_sub(age).filter(|l| *l > 0)?;
        Some(SyncReply {
            degraded: true,
            stale_after_ms: left,
            ..reply.clone()
        })
    }
}

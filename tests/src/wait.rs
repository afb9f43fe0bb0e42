//! Polling with a deadline: the harness never sleeps a fixed time where a condition can be
//! polled, and every poll loop is bounded in time.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Pause between polls: short enough to react fast, long enough not to spin.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Calls `f` until it returns true or `deadline` has passed (then an error naming `what`).
/// `f` is always called at least once, and once more at the deadline.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(POLL_EVERY.min(end - now));
    }
}

/// The async twin of [`wait_until`]: sleeps on the tokio timer between polls.
pub async fn wait_until_async(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> Result<()> {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_EVERY.min(end - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_when_the_condition_turns_true_and_fails_at_the_deadline() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            n >= 3
        })
        .is_ok());
        let err = wait_until(Duration::from_millis(30), "never", || false);
        assert!(err.is_err_and(|e| e.to_string().contains("waiting for never")));
    }
}

//! Polling with a deadline: the harness never sleeps a fixed time where a condition can be
//! polled, and every poll loop is bounded in time. One loop, [`poll_until`], and its async
//! twin share [`Deadline`]; the `wait_until*` forms are for conditions without a value. The
//! control service's tests poll through these too.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Pause between polls: short enough to react fast, long enough not to spin.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// The time left to one wait.
struct Deadline {
    limit: Duration,
    end: Instant,
}

impl Deadline {
    fn start(limit: Duration) -> Self {
        Self {
            limit,
            end: Instant::now() + limit,
        }
    }

    /// How long to pause before the next poll (never past the deadline, so the last poll
    /// falls on it), or the error naming `what` once the deadline has passed.
    fn pause(&self, what: &str) -> Result<Duration> {
        let now = Instant::now();
        if now >= self.end {
            bail!("timed out after {:?} waiting for {what}", self.limit);
        }
        Ok(POLL_EVERY.min(self.end - now))
    }
}

/// Calls `f` until it returns `Some(value)` (then that value) or `deadline` has passed (then
/// an error naming `what`). `f` is always called at least once, and once more at the
/// deadline.
pub fn poll_until<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let clock = Deadline::start(deadline);
    loop {
        if let Some(value) = f() {
            return Ok(value);
        }
        std::thread::sleep(clock.pause(what)?);
    }
}

/// The async twin of [`poll_until`]: `f` returns a future, and the pause between polls is
/// on the tokio timer.
pub async fn poll_until_async<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let clock = Deadline::start(deadline);
    loop {
        if let Some(value) = f().await {
            return Ok(value);
        }
        tokio::time::sleep(clock.pause(what)?).await;
    }
}

/// Calls `f` until it returns true or `deadline` has passed (then an error naming `what`).
/// `f` is always called at least once, and once more at the deadline.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    poll_until(deadline, what, || f().then_some(()))
}

/// [`wait_until`] from async code: sleeps on the tokio timer between polls.
pub async fn wait_until_async(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> Result<()> {
    poll_until_async(deadline, what, || std::future::ready(f().then_some(()))).await
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

    #[test]
    fn poll_until_returns_the_first_value_and_polls_once_more_at_the_deadline() {
        let mut n = 0;
        let got = poll_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n * 10)
        });
        assert_eq!(got.ok(), Some(30));
        let start = Instant::now();
        let mut last = None;
        let err = poll_until(Duration::from_millis(50), "never", || {
            last = Some(start.elapsed());
            None::<()>
        });
        assert!(err.is_err());
        assert!(
            last.is_some_and(|t| t >= Duration::from_millis(50)),
            "{last:?}"
        );
    }

    #[tokio::test]
    async fn the_async_twin_awaits_each_poll_and_times_out_naming_what() {
        let mut n = 0;
        let got = poll_until_async(Duration::from_secs(5), "n to reach 2", || {
            n += 1;
            let now = n;
            async move { (now >= 2).then_some(now) }
        })
        .await;
        assert_eq!(got.ok(), Some(2));
        let err = wait_until_async(Duration::from_millis(30), "never", || false).await;
        assert!(err.is_err_and(|e| e.to_string().contains("waiting for never")));
    }
}

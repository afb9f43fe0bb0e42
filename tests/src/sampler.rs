//! A time series read on a thread of its own beside a load run: a value at a steady beat
//! until stopped (and never longer than a bound). Threads, not tasks: the runtime is busy
//! with the load, and a sampler that lags would smear the series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a sampler runs, whatever happens to the run it samples.
const MAX_SAMPLING: Duration = Duration::from_secs(120);

/// A running sampler; [`Sampler::finish`] stops it and returns (seconds since `start`,
/// value) for every read that gave a value.
pub struct Sampler<T> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(f64, T)>>,
}

impl<T: Send + 'static> Sampler<T> {
    /// Reads `read` every `every`, times counted from `start`.
    pub fn start(
        start: Instant,
        every: Duration,
        mut read: impl FnMut() -> Option<T> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut next = start;
            while !flag.load(Ordering::SeqCst) && start.elapsed() < MAX_SAMPLING {
                if let Some(v) = read() {
                    out.push((start.elapsed().as_secs_f64(), v));
                }
                // A steady beat: the next read is due `every` after the last one was due.
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            out
        });
        Self { stop, thread }
    }

    /// Stops it: what it read.
    #[must_use]
    pub fn finish(self) -> Vec<(f64, T)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_a_beat_until_stopped() {
        let mut n = 0u32;
        let sampler = Sampler::start(Instant::now(), Duration::from_millis(5), move || {
            n += 1;
            (n % 2 == 0).then_some(n)
        });
        std::thread::sleep(Duration::from_millis(60)); // the reads under test
        let got = sampler.finish();
        assert!(got.len() >= 3, "{got:?}");
        assert!(
            got.iter().all(|(_, v)| v % 2 == 0),
            "only reads with a value"
        );
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}

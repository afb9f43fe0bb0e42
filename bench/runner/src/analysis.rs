//! The figures read off a time series: how often a limit changed direction, how much of
//! the time it stayed near the knee, how long in-flight took to get back near it after the
//! bottleneck changed. Plain functions of numbers, so the report's definitions are tested.

/// Direction reversals of `values`: after equal neighbours are merged, the number of times
/// a rise follows a fall or a fall a rise. A limit that settles has few; a limit cycle has
/// two per period.
#[must_use]
pub fn reversals(values: &[f64]) -> usize {
    let mut count = 0;
    let mut last_dir = 0i8;
    for w in values.windows(2) {
        let dir = match w[1].total_cmp(&w[0]) {
            std::cmp::Ordering::Greater => 1,
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => continue,
        };
        if last_dir != 0 && dir != last_dir {
            count += 1;
        }
        last_dir = dir;
    }
    count
}

/// Whether `value` is within `band` (a fraction, 0.25 for ±25%) of `knee`.
#[must_use]
pub fn within(value: f64, knee: f64, band: f64) -> bool {
    (value - knee).abs() <= band * knee
}

/// The share of `values` within `band` of `knee`; 0 for no values.
#[must_use]
pub fn share_within(values: &[f64], knee: f64, band: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let n = values.iter().filter(|&&v| within(v, knee, band)).count();
    #[allow(clippy::cast_precision_loss)]
    let share = n as f64 / values.len() as f64;
    share
}

/// After an event at `from_s`, how long until `values` (sampled at times `t`) are within
/// `band` of `knee` and stay there up to `until_s`: 0 if they never leave, `None` if they are
/// not within it by the end. A value that leaves the band and comes back restarts the clock,
/// so an oscillation around the knee counts as not settled.
#[must_use]
pub fn settled_after(
    t: &[f64],
    values: &[f64],
    from_s: f64,
    until_s: f64,
    knee: f64,
    band: f64,
) -> Option<f64> {
    let mut settled_since: Option<f64> = None;
    for (&at, &v) in t.iter().zip(values) {
        if at < from_s || at >= until_s {
            continue;
        }
        if within(v, knee, band) {
            settled_since.get_or_insert(at);
        } else {
            settled_since = None;
        }
    }
    settled_since.map(|s| (s - from_s).max(0.0))
}

/// The mean of `values`; 0 for none.
#[must_use]
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = values.len() as f64;
    values.iter().sum::<f64>() / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversals_count_changes_of_direction_not_steps() {
        assert_eq!(reversals(&[]), 0);
        assert_eq!(reversals(&[10.0, 10.0, 10.0]), 0);
        // Up in steps, then flat: no reversal.
        assert_eq!(reversals(&[5.0, 6.0, 8.0, 8.0, 10.0, 10.0]), 0);
        // Up, down, up: two; plateaus in between do not matter.
        assert_eq!(reversals(&[10.0, 11.0, 11.0, 10.0, 10.0, 11.0]), 2);
        // A limit cycle of period 2 samples.
        assert_eq!(reversals(&[10.0, 5.0, 10.0, 5.0, 10.0]), 3);
    }

    #[test]
    fn share_within_counts_the_band_inclusively() {
        let v = [7.5, 10.0, 12.5, 12.6, 5.0];
        assert!((share_within(&v, 10.0, 0.25) - 0.6).abs() < 1e-12);
        assert!(share_within(&[], 10.0, 0.25).abs() < f64::EPSILON);
    }

    #[test]
    fn settled_after_restarts_on_every_excursion_and_ignores_other_phases() {
        let t: Vec<f64> = (0..10).map(f64::from).collect();
        // Out of band before the event does not count; at 4 it is out, back at 5 and stays.
        let v = [50.0, 50.0, 10.0, 10.0, 4.0, 9.0, 10.0, 11.0, 50.0, 50.0];
        assert_eq!(settled_after(&t, &v, 2.0, 8.0, 10.0, 0.25), Some(3.0));
        // Never leaves: 0.
        assert_eq!(settled_after(&t, &v, 5.0, 8.0, 10.0, 0.25), Some(0.0));
        // Not within it at the end: never.
        assert_eq!(settled_after(&t, &v, 2.0, 10.0, 10.0, 0.25), None);
    }
}

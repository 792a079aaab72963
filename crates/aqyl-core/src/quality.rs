//! Quality of Information (QoI) cores, as CityPulse rates them.
//!
//! [`Rating`] is CityPulse's reward-and-punishment update of one metric: a ring buffer of
//! the last `w` pass/fail outcomes (pre-filled with passes) and a rated value that falls with
//! consecutive failures and recovers with passes. With `A` the passes among the `w − 1`
//! outcomes that stay in the buffer and `α` = 1 for a pass, 0 for a failure:
//!
//! ```text
//! r ← r − 2·(A/(w−1) − (A+α)/w),   rated = min(|r|, 1)
//! ```
//!
//! ```
//! use aqyl_core::quality::Rating;
//!
//! let mut age = Rating::new(5);
//! let rated: Vec<f64> = (0..4).map(|_| age.update(false)).collect();
//! assert_eq!(rated.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(), [0.6, 0.3, 0.1, 0.0]);
//! ```

use std::collections::VecDeque;

/// CityPulse's window for frequency and correctness.
pub const LONG_WINDOW: usize = 20;
/// CityPulse's window for age, latency and completeness.
pub const SHORT_WINDOW: usize = 5;

/// The reward-and-punishment rating of one metric of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    window: usize,
    outcomes: VecDeque<bool>,
    r: f64,
}

impl Rating {
    /// A rating over the last `window` outcomes (at least 2), starting fully trusted.
    pub fn new(window: usize) -> Self {
        let window = window.max(2);
        Self {
            window,
            outcomes: std::iter::repeat_n(true, window).collect(),
            r: 1.0,
        }
    }

    /// Records one outcome and returns the rated value in 0..=1.
    pub fn update(&mut self, pass: bool) -> f64 {
        self.outcomes.pop_front();
        let stay = self.outcomes.iter().filter(|p| **p).count() as f64;
        let w = self.window as f64;
        let alpha = if pass { 1.0 } else { 0.0 };
        self.r -= 2.0 * (stay / (w - 1.0) - (stay + alpha) / w);
        self.outcomes.push_back(pass);
        self.rated()
    }

    /// The current rated value, `min(|r|, 1)`.
    pub fn rated(&self) -> f64 {
        self.r.abs().min(1.0)
    }

    /// The window size.
    pub fn window(&self) -> usize {
        self.window
    }
}

/// Flat-line detection: a sensor whose value has not changed for `n` consecutive readings
/// is probably stuck (a frozen firmware, a cut wire reading a constant).
#[derive(Debug, Clone, PartialEq)]
pub struct FlatLine {
    n: usize,
    last: Option<f64>,
    run: usize,
}

impl FlatLine {
    /// Flags after `n` (at least 2) identical readings in a row.
    pub fn new(n: usize) -> Self {
        Self {
            n: n.max(2),
            last: None,
            run: 0,
        }
    }

    /// Adds a reading; true while the last `n` readings are identical.
    pub fn push(&mut self, value: f64) -> bool {
        if self.last == Some(value) {
            self.run += 1;
        } else {
            self.last = Some(value);
            self.run = 1;
        }
        self.run >= self.n
    }
}

/// Spike detection by robust z-score: how far a reading lies from the median of the previous
/// `window` readings, in units of their median absolute deviation (MAD), scaled so that it
/// matches a standard z-score for normal data (`0.6745·(x − median)/MAD`). Robust because a
/// few earlier spikes move neither the median nor the MAD.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    window: usize,
    threshold: f64,
    history: VecDeque<f64>,
}

impl Spike {
    /// A detector over the last `window` readings (at least 4) flagging |z| > `threshold`.
    pub fn new(window: usize, threshold: f64) -> Self {
        let window = window.max(4);
        Self {
            window,
            threshold,
            history: VecDeque::with_capacity(window),
        }
    }

    /// Adds a reading and returns its robust z-score against the readings before it (`None`
    /// until half the window is filled), and whether it is a spike.
    pub fn push(&mut self, value: f64) -> (Option<f64>, bool) {
        let z = (self.history.len() >= self.window / 2).then(|| {
            let mut sorted: Vec<f64> = self.history.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let median = median_sorted(&sorted);
            let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
            deviations.sort_by(f64::total_cmp);
            // A perfectly constant history has MAD 0; a floor keeps z finite.
            let mad = median_sorted(&deviations).max(1e-9 * median.abs().max(1.0));
            0.6745 * (value - median) / mad
        });
        if self.history.len() == self.window {
            self.history.pop_front();
        }
        self.history.push_back(value);
        (z, z.is_some_and(|z| z.abs() > self.threshold))
    }
}

fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round3(v: f64) -> f64 {
        (v * 1000.0).round() / 1000.0
    }

    #[test]
    fn consecutive_failures_follow_citypulse() {
        let mut short = Rating::new(SHORT_WINDOW);
        let got: Vec<f64> = (0..4).map(|_| round3(short.update(false))).collect();
        assert_eq!(got, [0.6, 0.3, 0.1, 0.0]);
        let mut long = Rating::new(LONG_WINDOW);
        let got: Vec<f64> = (0..4).map(|_| round3(long.update(false))).collect();
        assert_eq!(got, [0.9, 0.805, 0.716, 0.632]);
    }

    #[test]
    fn passes_keep_full_trust_and_recover_after_failures() {
        let mut r = Rating::new(SHORT_WINDOW);
        for _ in 0..10 {
            assert_eq!(r.update(true), 1.0);
        }
        for _ in 0..5 {
            r.update(false);
        }
        assert_eq!(round3(r.rated()), 0.0);
        // Each pass after a run of failures earns trust back, up to full again.
        let recovery: Vec<f64> = (0..5).map(|_| round3(r.update(true))).collect();
        assert!(recovery.windows(2).all(|w| w[1] >= w[0]), "{recovery:?}");
        assert!(recovery[0] > 0.0);
        assert_eq!(recovery[4], 1.0);
    }

    #[test]
    fn a_single_failure_among_passes_costs_less_with_a_longer_window() {
        let (mut short, mut long) = (Rating::new(SHORT_WINDOW), Rating::new(LONG_WINDOW));
        assert!(short.update(false) < long.update(false));
    }

    #[test]
    fn flat_lines_are_flagged_after_n_identical_readings() {
        let mut f = FlatLine::new(3);
        let got: Vec<bool> = [5.0, 5.0, 5.0, 5.0, 6.0, 6.0]
            .iter()
            .map(|v| f.push(*v))
            .collect();
        assert_eq!(got, [false, false, true, true, false, false]);
    }

    #[test]
    fn spikes_stand_out_from_the_median_and_mad() {
        let mut s = Spike::new(8, 5.0);
        // History 10, 11, 9, 10, 12, 10, 11, 9: median 10, MAD 1.
        for v in [10.0, 11.0, 9.0, 10.0, 12.0, 10.0, 11.0, 9.0] {
            assert!(!s.push(v).1);
        }
        // 0.6745 · (50 − 10) / 1 = 26.98: a spike. 12 is 1.35: not.
        let (z, spike) = s.push(50.0);
        assert!(spike && (z.unwrap() - 26.98).abs() < 1e-9);
        let (z, spike) = s.push(12.0);
        assert!(!spike, "{z:?}");
    }

    #[test]
    fn no_verdict_before_half_a_window() {
        let mut s = Spike::new(10, 3.0);
        // Half of 10 is 5: the first five readings get no verdict.
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            assert_eq!(s.push(v), (None, false));
        }
        assert!(s.push(1000.0).1);
    }
}

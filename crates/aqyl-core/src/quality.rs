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
}

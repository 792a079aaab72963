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

/// One metric's value in a quality report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metric {
    /// The measured value, in `unit`.
    pub absolute: f64,
    /// The reward-and-punishment rating, 0..=1.
    pub rated: f64,
    /// Unit of `absolute`.
    pub unit: &'static str,
}

/// What the quality of one reading is judged on; the dataflow fills it from an observation
/// (or from a rejected payload, for completeness and correctness).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Event time, Unix ms.
    pub event_time: u64,
    /// Wall-clock receive time, Unix ms.
    pub received_at: i64,
    /// Wall-clock time Aqyl finished processing it, Unix ms.
    pub processed_at: i64,
    /// Required fields expected.
    pub required: usize,
    /// Required fields present and not null/""/NA.
    pub present: usize,
    /// Fields checked for type and range.
    pub checked: usize,
    /// Of those, wrong (type error, or outside [min, max]).
    pub wrong: usize,
}

/// Settings of the five metrics of one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualitySettings {
    /// The stream's expected update interval, ms.
    pub expected_interval_ms: u64,
    /// Largest acceptable processing delay inside Aqyl, ms.
    pub max_latency_ms: u64,
    /// Rating window of frequency and correctness (CityPulse: 20).
    pub long_window: usize,
    /// Rating window of age, latency and completeness (CityPulse: 5).
    pub short_window: usize,
}

/// The five atomic metrics of one reading.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics5 {
    /// 1/Δt between consecutive event times (Hz); passes when 0 < Δt ≤ expected interval.
    pub frequency: Metric,
    /// Receive time − event time (s); passes when ≤ expected interval.
    pub age: Metric,
    /// Processing delay inside Aqyl (ms); passes when below the configured maximum.
    pub latency: Metric,
    /// Share of required fields present (0..1); passes when all are.
    pub completeness: Metric,
    /// 1 − wrong/checked (0..1); passes when nothing is wrong.
    pub correctness: Metric,
}

/// The five metrics of one stream (one sensor), as a sans-I/O state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamQuality {
    settings: QualitySettings,
    frequency: Rating,
    age: Rating,
    latency: Rating,
    completeness: Rating,
    correctness: Rating,
    last_event: Option<u64>,
    last_frequency: f64,
}

impl StreamQuality {
    /// A stream that has not reported yet (every rating starts at 1).
    pub fn new(settings: QualitySettings) -> Self {
        Self {
            settings,
            frequency: Rating::new(settings.long_window),
            age: Rating::new(settings.short_window),
            latency: Rating::new(settings.short_window),
            completeness: Rating::new(settings.short_window),
            correctness: Rating::new(settings.long_window),
            last_event: None,
            last_frequency: 0.0,
        }
    }

    /// Scores one reading (readings must come in event-time order per stream).
    pub fn observe(&mut self, r: &Reading) -> Metrics5 {
        let expected = self.settings.expected_interval_ms;
        let (freq_abs, freq_pass) = match self.last_event {
            // The first reading has nothing to compare with: no verdict, count it as a pass.
            None => (0.0, true),
            Some(last) => {
                let dt = r.event_time.saturating_sub(last);
                let hz = if dt == 0 { 0.0 } else { 1000.0 / dt as f64 };
                (hz, dt > 0 && dt <= expected)
            }
        };
        self.last_event = Some(r.event_time.max(self.last_event.unwrap_or(0)));
        self.last_frequency = freq_abs;
        let age_ms = (r.received_at - r.event_time as i64).max(0) as u64;
        let latency_ms = (r.processed_at - r.received_at).max(0) as u64;
        let completeness = if r.required == 0 {
            1.0
        } else {
            r.present as f64 / r.required as f64
        };
        let correctness = if r.checked == 0 {
            1.0
        } else {
            1.0 - r.wrong as f64 / r.checked as f64
        };
        Metrics5 {
            frequency: Metric {
                absolute: freq_abs,
                rated: self.frequency.update(freq_pass),
                unit: "Hz",
            },
            age: Metric {
                absolute: age_ms as f64 / 1000.0,
                rated: self.age.update(age_ms <= expected),
                unit: "s",
            },
            latency: Metric {
                absolute: latency_ms as f64,
                rated: self
                    .latency
                    .update(latency_ms < self.settings.max_latency_ms),
                unit: "ms",
            },
            completeness: Metric {
                absolute: completeness,
                rated: self.completeness.update(r.present >= r.required),
                unit: "1",
            },
            correctness: Metric {
                absolute: correctness,
                rated: self.correctness.update(r.wrong == 0),
                unit: "1",
            },
        }
    }

    /// The watchdog: when the stream has been silent for 1.05 × its expected interval since
    /// `since` (the last reading, or the last watchdog failure), counts a frequency failure and
    /// returns the new rating and the time of the next check. `None` while not overdue.
    pub fn watchdog(&mut self, since: u64, now: u64) -> Option<(f64, u64)> {
        let grace = self.settings.expected_interval_ms + self.settings.expected_interval_ms / 20;
        if now < since.saturating_add(grace) {
            return None;
        }
        Some((self.frequency.update(false), since + grace))
    }

    /// Event time of the latest reading.
    pub fn last_event(&self) -> Option<u64> {
        self.last_event
    }
}

/// Weights of the overall score (they sum to 1). Correctness and completeness weigh most,
/// because wrong or missing values mislead city services; frequency next, because gaps hide
/// events; age and latency least, because late data is still right.
pub const WEIGHTS: [(&str, f64); 5] = [
    ("frequency", 0.2),
    ("age", 0.1),
    ("latency", 0.1),
    ("completeness", 0.25),
    ("correctness", 0.35),
];

/// The overall score of a report: the weighted mean of the rated metrics, halved while the
/// stream is flat-lining or spiking (a stuck or erratic sensor is not trustworthy even when
/// every reading is on time and in range).
pub fn score(m: &Metrics5, flat_line: bool, spike: bool) -> f64 {
    let rated = [
        m.frequency.rated,
        m.age.rated,
        m.latency.rated,
        m.completeness.rated,
        m.correctness.rated,
    ];
    let base: f64 = rated
        .iter()
        .zip(WEIGHTS.iter())
        .map(|(r, (_, w))| r * w)
        .sum();
    if flat_line || spike {
        base * 0.5
    } else {
        base
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

    fn settings() -> QualitySettings {
        QualitySettings {
            expected_interval_ms: 300_000,
            max_latency_ms: 1_000,
            long_window: 20,
            short_window: 5,
        }
    }

    fn reading(t: u64) -> Reading {
        Reading {
            event_time: t,
            received_at: t as i64 + 2_000,
            processed_at: t as i64 + 2_010,
            required: 2,
            present: 2,
            checked: 4,
            wrong: 0,
        }
    }

    #[test]
    fn a_healthy_stream_scores_one() {
        let mut q = StreamQuality::new(settings());
        let mut last = None;
        for i in 0..30 {
            last = Some(q.observe(&reading(i * 300_000)));
        }
        let m = last.unwrap();
        assert_eq!(m.frequency.absolute, 1000.0 / 300_000.0);
        assert_eq!((m.age.absolute, m.latency.absolute), (2.0, 10.0));
        assert_eq!(score(&m, false, false), 1.0);
        assert_eq!(score(&m, true, false), 0.5);
    }

    #[test]
    fn each_metric_fails_on_its_own_cause() {
        let mut q = StreamQuality::new(settings());
        q.observe(&reading(0));
        // 10 minutes after the previous reading: frequency fails; an hour old: age fails;
        // 5 s inside Aqyl: latency fails; one required field missing; one of four wrong.
        let bad = Reading {
            event_time: 600_000,
            received_at: 4_200_000,
            processed_at: 4_205_000,
            required: 2,
            present: 1,
            checked: 4,
            wrong: 1,
        };
        let m = q.observe(&bad);
        assert_eq!(round3(m.frequency.rated), 0.9);
        assert_eq!(round3(m.age.rated), 0.6);
        assert_eq!(round3(m.latency.rated), 0.6);
        assert_eq!(
            (m.completeness.absolute, round3(m.completeness.rated)),
            (0.5, 0.6)
        );
        assert_eq!(
            (m.correctness.absolute, round3(m.correctness.rated)),
            (0.75, 0.9)
        );
    }

    #[test]
    fn the_watchdog_counts_silence_after_1_05_intervals() {
        let mut q = StreamQuality::new(settings());
        q.observe(&reading(0));
        assert_eq!(q.watchdog(0, 314_999), None, "5% grace");
        let (rated, next) = q.watchdog(0, 315_000).unwrap();
        assert_eq!((round3(rated), next), (0.9, 315_000));
        let (rated, _) = q.watchdog(next, 630_000).unwrap();
        assert_eq!(round3(rated), 0.805);
    }
}

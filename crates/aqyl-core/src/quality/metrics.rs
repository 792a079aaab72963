//! The five atomic metrics of a stream, rated as CityPulse does, and the detectors beyond
//! CityPulse (flat-line, spike).
//!
//! [`Rating`] is CityPulse's reward-and-punishment update of one metric: a ring buffer of
//! the last `w` pass/fail outcomes (pre-filled with passes) and a rated value that falls with
//! consecutive failures and recovers with passes. With `A` the passes among the `w − 1`
//! outcomes that stay in the buffer and `α` = 1 for a pass, 0 for a failure:
//!
//! ```text
//! r ← r − 2·(A/(w−1) − (A+α)/w),   rated = min(|r|, 1)
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

/// CityPulse's window for frequency and correctness.
pub const LONG_WINDOW: usize = 20;
/// CityPulse's window for age, latency and completeness.
pub const SHORT_WINDOW: usize = 5;

/// The longest rating window: the outcomes are the bits of one word.
pub const MAX_WINDOW: usize = 64;

/// The reward-and-punishment rating of one metric of one stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "RatingWire", into = "RatingWire")]
pub struct Rating {
    window: usize,
    /// The last `window` outcomes, the newest in bit 0 (1: a pass). Bits: five ratings a
    /// sensor, and no allocation for any of them.
    outcomes: u64,
    r: f64,
}

/// A [`Rating`] as checkpoints hold it (the outcomes oldest first).
#[derive(serde::Serialize, serde::Deserialize)]
struct RatingWire {
    window: usize,
    outcomes: VecDeque<bool>,
    r: f64,
}

impl From<RatingWire> for Rating {
    fn from(w: RatingWire) -> Self {
        let mut rating = Rating {
            window: w.outcomes.len().clamp(1, MAX_WINDOW),
            outcomes: w
                .outcomes
                .iter()
                .rev()
                .take(MAX_WINDOW)
                .enumerate()
                .fold(0, |bits, (i, pass)| bits | (u64::from(*pass) << i)),
            r: w.r,
        };
        rating.resize(w.window);
        rating
    }
}

impl From<Rating> for RatingWire {
    fn from(r: Rating) -> Self {
        RatingWire {
            window: r.window,
            outcomes: r.outcomes_oldest_first().collect(),
            r: r.r,
        }
    }
}

/// The lowest `n` bits.
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1 << n) - 1
    }
}

impl Rating {
    /// A rating over the last `window` outcomes (2 to [`MAX_WINDOW`]), starting fully
    /// trusted.
    pub fn new(window: usize) -> Self {
        let window = window.clamp(2, MAX_WINDOW);
        Self {
            window,
            outcomes: low_bits(window),
            r: 1.0,
        }
    }

    /// Records one outcome and returns the rated value in 0..=1.
    pub fn update(&mut self, pass: bool) -> f64 {
        // The oldest outcome leaves; `stay` counts the passes among the others.
        let stay = (self.outcomes & low_bits(self.window - 1)).count_ones() as f64;
        let w = self.window as f64;
        let alpha = if pass { 1.0 } else { 0.0 };
        self.r -= 2.0 * (stay / (w - 1.0) - (stay + alpha) / w);
        self.outcomes = ((self.outcomes << 1) | u64::from(pass)) & low_bits(self.window);
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

    /// The outcomes in the window, oldest first.
    fn outcomes_oldest_first(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.window).rev().map(|i| self.outcomes >> i & 1 == 1)
    }

    /// Changes the window to `window` (2 to [`MAX_WINDOW`]), keeping the rated value and the
    /// newest outcomes; a longer window is pre-filled with passes, as a new rating is.
    pub fn resize(&mut self, window: usize) {
        let window = window.clamp(2, MAX_WINDOW);
        let kept = self.outcomes & low_bits(window.min(self.window));
        self.outcomes = kept | (low_bits(window) & !low_bits(self.window));
        self.window = window;
    }
}

/// Flat-line detection: a sensor whose values have not changed for `n` consecutive readings
/// is probably stuck (frozen firmware, a cut wire reading a constant). Judged over the
/// fields that have varied at least once, so a field that is constant by nature
/// (`totalspaces`) neither triggers nor masks it.
///
/// A sensor type may name an **activity field** (its descriptor's `activity_field`, e.g. a
/// road's `vehicleCount`): a reading where it is 0 has nothing to measure, and a detector that
/// repeats its last speed over an empty road reports the road, not a fault. Such a reading is
/// never called stuck (the run still counts, so a stuck sensor is caught at its first reading
/// with activity again).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlatLine {
    n: usize,
    activity: Option<Arc<str>>,
    /// Per field: last value, run length, whether it ever changed.
    fields: Vec<(Arc<str>, f64, usize, bool)>,
}

impl FlatLine {
    /// Flags after `n` (at least 2) identical readings in a row.
    pub fn new(n: usize) -> Self {
        Self::with_activity(n, None)
    }

    /// As [`FlatLine::new`], with an activity field: readings where it is 0 are not flagged.
    pub fn with_activity(n: usize, activity: Option<Arc<str>>) -> Self {
        Self {
            n: n.max(2),
            activity,
            fields: Vec::new(),
        }
    }

    /// Changes the settings, keeping the runs counted so far.
    pub fn reconfigure(&mut self, n: usize, activity: Option<Arc<str>>) {
        self.n = n.max(2);
        self.activity = activity;
    }

    /// Whether `values` are exactly the last reading's.
    pub fn repeats(&self, values: &[(Arc<str>, f64)]) -> bool {
        !values.is_empty()
            && values.len() == self.fields.len()
            && values
                .iter()
                .all(|(n, v)| self.fields.iter().any(|f| f.0 == *n && f.1 == *v))
    }

    /// Adds a reading; true while every field that ever varied has repeated its value for
    /// the last `n` readings, unless the activity field reads 0 in this one.
    pub fn push(&mut self, values: &[(Arc<str>, f64)]) -> bool {
        for (name, v) in values {
            match self.fields.iter_mut().find(|f| f.0 == *name) {
                Some(f) if f.1 == *v => f.2 += 1,
                Some(f) => {
                    f.1 = *v;
                    f.2 = 1;
                    f.3 = true;
                }
                None => self.fields.push((name.clone(), *v, 1, false)),
            }
        }
        let idle = self
            .activity
            .as_ref()
            .is_some_and(|a| values.iter().any(|(n, v)| n == a && *v == 0.0));
        let varying = || self.fields.iter().filter(|f| f.3);
        !idle && varying().next().is_some() && varying().all(|f| f.2 >= self.n)
    }
}

/// Spike detection by robust z-score: how far a reading lies from the median of the previous
/// `window` readings, in units of their median absolute deviation (MAD), scaled to match a
/// standard z-score for normal data: `0.6745·(x − median)/MAD` (Iglewicz and Hoaglin's
/// modified z-score). Robust because a few earlier spikes move neither the median nor the MAD.
///
/// A sensor's noise and level do not vanish when its signal goes quiet (a road at night, when
/// a handful of cars make the window's MAD tiny), so two floors keep small wobbles of a quiet
/// signal from counting:
/// - the deviation unit is at least the sensor's typical MAD (an exponentially weighted mean
///   of the window MADs, weight 2% a reading, so about the last 50 readings), because the MAD
///   of a dozen readings is itself noisy and now and then comes out far too small;
/// - a spike must also move the value by at least half the sensor's typical level (the
///   largest window median magnitude seen, fading by 0.5% a reading).
///
/// An absurd value (a speed of 250 km/h on a 50 km/h road) clears both by far.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spike {
    window: usize,
    threshold: f64,
    history: VecDeque<f64>,
    /// Typical MAD and typical level (fading maxima).
    typical_mad: f64,
    typical_level: f64,
}

thread_local! {
    /// Scratch space for the spike detectors' medians, one per thread rather than one per
    /// detector: it spares an allocation per reading without costing every sensor's every
    /// field a second copy of its history.
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How much of the typical level fades with each reading.
const FADE: f64 = 0.005;
/// Weight of each window MAD in the typical MAD.
const MAD_WEIGHT: f64 = 0.02;

/// The verdict on one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeVerdict {
    /// Robust z-score against the history (`None` before a full window, or while the
    /// history has no spread at all).
    pub z: Option<f64>,
    /// Whether the reading jumps away from the history (|z| beyond the threshold and a move
    /// of at least half the typical level). Whether the jump is a spike (it comes back) or a
    /// shift (it stays) shows at the next reading: see [`Jump`].
    pub spike: bool,
    /// The jump, when the reading is one.
    pub jump: Option<Jump>,
}

/// A jump seen at one reading, judged at the next: a **spike** when the next reading is back
/// in the normal range before the jump (its own z-score against the same median and unit
/// within half the threshold), a **shift** when it is not (the signal moved: a congestion, or a
/// broken sensor; the neighbours tell which).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Jump {
    /// The jumping value.
    pub value: f64,
    /// The median before the jump.
    pub median: f64,
    /// The deviation unit before the jump.
    pub unit: f64,
    /// The threshold.
    pub threshold: f64,
    /// The jump's z-score.
    pub z: f64,
}

impl Jump {
    /// Whether `next` came back (the jump was a spike).
    pub fn came_back(&self, next: f64) -> bool {
        self.unit > 0.0 && (0.6745 * (next - self.median) / self.unit).abs() <= self.threshold / 2.0
    }
}

impl Spike {
    /// A detector over the last `window` readings (at least 4) flagging |z| > `threshold`.
    pub fn new(window: usize, threshold: f64) -> Self {
        let window = window.max(4);
        Self {
            window,
            threshold,
            history: VecDeque::with_capacity(window),
            typical_mad: 0.0,
            typical_level: 0.0,
        }
    }

    /// The window's median and MAD (`None` before a full window), sorting in the thread's
    /// scratch space.
    fn stats(&self) -> Option<(f64, f64)> {
        if self.history.len() < self.window {
            return None;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            scratch.extend(self.history.iter().copied());
            let median = median_in_place(scratch);
            for v in scratch.iter_mut() {
                *v = (*v - median).abs();
            }
            Some((median, median_in_place(scratch)))
        })
    }

    /// Judges `value` against the history without adding it.
    pub fn judge(&self, value: f64) -> SpikeVerdict {
        self.verdict(value, self.stats())
    }

    fn verdict(&self, value: f64, stats: Option<(f64, f64)>) -> SpikeVerdict {
        let Some((median, mad)) = stats else {
            return SpikeVerdict {
                z: None,
                spike: false,
                jump: None,
            };
        };
        let unit = mad.max(self.typical_mad);
        let z = (unit > 0.0).then(|| 0.6745 * (value - median) / unit);
        let level = median.abs().max(self.typical_level);
        let moved = (value - median).abs() >= level / 2.0;
        let spike = moved && z.is_some_and(|z| z.abs() > self.threshold);
        SpikeVerdict {
            z,
            spike,
            jump: z.filter(|_| spike).map(|z| Jump {
                value,
                median,
                unit,
                threshold: self.threshold,
                z,
            }),
        }
    }

    /// Judges a reading against the readings before it, then adds it to the history.
    pub fn push(&mut self, value: f64) -> SpikeVerdict {
        let stats = self.stats();
        let verdict = self.verdict(value, stats);
        if let Some((median, mad)) = stats {
            self.typical_mad = if self.typical_mad == 0.0 {
                mad
            } else {
                self.typical_mad + MAD_WEIGHT * (mad - self.typical_mad)
            };
            self.typical_level = median.abs().max(self.typical_level * (1.0 - FADE));
        }
        if self.history.len() == self.window {
            self.history.pop_front();
        }
        self.history.push_back(value);
        verdict
    }

    /// Starts the history again from `values` (after a shift: the old level says nothing
    /// about the new one, and would make every reading at the new level look like a jump
    /// until the window has turned over). Verdicts resume once the window is full again.
    pub fn rebase(&mut self, values: &[f64]) {
        self.history.clear();
        self.history.extend(values.iter().copied());
    }

    /// The threshold |z| above which a reading is a spike.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Changes the window (at least 4; a shorter one keeps the newest readings) and the
    /// threshold, keeping the history and the typical deviation and level.
    pub fn reconfigure(&mut self, window: usize, threshold: f64) {
        self.window = window.max(4);
        self.threshold = threshold;
        while self.history.len() > self.window {
            self.history.pop_front();
        }
    }
}

/// The median of `values` (reordered), by selection rather than a sort: the same value a
/// sort gives, in linear time (it is taken twice per field and reading).
fn median_in_place(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let (below, mid, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    if n % 2 == 1 {
        return mid;
    }
    // The largest of the lower half is the element a sort puts just before `mid`.
    let lower = below.iter().copied().max_by(f64::total_cmp).unwrap_or(mid);
    (lower + mid) / 2.0
}

#[cfg(test)]
fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// One metric's value in a quality report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    /// The measured value, in `unit`.
    pub absolute: f64,
    /// The reward-and-punishment rating, 0..=1.
    pub rated: f64,
    /// Unit of `absolute`.
    pub unit: Unit,
}

/// Units of the absolute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unit {
    /// Per second (frequency).
    #[serde(rename = "Hz")]
    Hertz,
    /// Seconds (age).
    #[serde(rename = "s")]
    Seconds,
    /// Milliseconds (latency).
    #[serde(rename = "ms")]
    Milliseconds,
    /// A share, 0..1 (completeness, correctness).
    #[serde(rename = "1")]
    Ratio,
}

impl Unit {
    /// As written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Hertz => "Hz",
            Unit::Seconds => "s",
            Unit::Milliseconds => "ms",
            Unit::Ratio => "1",
        }
    }
}

/// What one reading (or one unusable message) of a stream is judged on. A metric that cannot
/// be judged (`None`) keeps its rating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Event time, Unix ms, for a reading taken in event-time order (frequency is judged on
    /// the gap to the previous one).
    pub event_time: Option<u64>,
    /// How old the reading was when it arrived, ms.
    pub age_ms: Option<u64>,
    /// Processing delay inside Aqyl, ms.
    pub latency_ms: Option<u64>,
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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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

impl Metrics5 {
    /// The five metrics by name, in the order of the quality report.
    pub fn named(&self) -> [(&'static str, &Metric); 5] {
        [
            ("frequency", &self.frequency),
            ("age", &self.age),
            ("latency", &self.latency),
            ("completeness", &self.completeness),
            ("correctness", &self.correctness),
        ]
    }
}

fn metric(absolute: f64, rated: f64, unit: Unit) -> Metric {
    Metric {
        absolute,
        rated,
        unit,
    }
}

/// The five metrics of one stream (one sensor), as a sans-I/O state machine.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StreamQuality {
    settings: QualitySettings,
    frequency: Rating,
    age: Rating,
    latency: Rating,
    completeness: Rating,
    correctness: Rating,
    last_event: Option<u64>,
    last: Metrics5,
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
            last: Metrics5 {
                frequency: metric(0.0, 1.0, Unit::Hertz),
                age: metric(0.0, 1.0, Unit::Seconds),
                latency: metric(0.0, 1.0, Unit::Milliseconds),
                completeness: metric(1.0, 1.0, Unit::Ratio),
                correctness: metric(1.0, 1.0, Unit::Ratio),
            },
        }
    }

    /// Scores one reading (readings with an event time must come in event-time order).
    pub fn observe(&mut self, r: &Reading) -> Metrics5 {
        let expected = self.settings.expected_interval_ms;
        if let Some(t) = r.event_time {
            // The first reading has nothing to compare with: no verdict.
            if let Some(last) = self.last_event {
                let dt = t.saturating_sub(last);
                let hz = if dt == 0 { 0.0 } else { 1000.0 / dt as f64 };
                let rated = self.frequency.update(dt > 0 && dt <= expected);
                self.last.frequency = metric(hz, rated, Unit::Hertz);
            }
            self.last_event = Some(t.max(self.last_event.unwrap_or(0)));
        }
        if let Some(age) = r.age_ms {
            let rated = self.age.update(age <= expected);
            self.last.age = metric(age as f64 / 1000.0, rated, Unit::Seconds);
        }
        if let Some(latency) = r.latency_ms {
            let rated = self.latency.update(latency < self.settings.max_latency_ms);
            self.last.latency = metric(latency as f64, rated, Unit::Milliseconds);
        }
        let completeness = if r.required == 0 {
            1.0
        } else {
            r.present as f64 / r.required as f64
        };
        let rated = self.completeness.update(r.present >= r.required);
        self.last.completeness = metric(completeness, rated, Unit::Ratio);
        let correctness = if r.checked == 0 {
            1.0
        } else {
            1.0 - r.wrong as f64 / r.checked as f64
        };
        let rated = self.correctness.update(r.wrong == 0);
        self.last.correctness = metric(correctness, rated, Unit::Ratio);
        self.last
    }

    /// The watchdog: when the stream has been silent for 1.05 × its expected interval since
    /// `since` (the last reading, or the last watchdog failure), counts a frequency failure and
    /// returns the metrics and the time of the failure. `None` while not overdue.
    pub fn watchdog(&mut self, since: u64, now: u64) -> Option<(Metrics5, u64)> {
        let at = since.saturating_add(self.grace_ms());
        if now < at {
            return None;
        }
        let rated = self.frequency.update(false);
        let silent_for = at.saturating_sub(self.last_event.unwrap_or(since));
        self.last.frequency = metric(1000.0 / silent_for.max(1) as f64, rated, Unit::Hertz);
        Some((self.last, at))
    }

    /// 1.05 × the expected interval, ms: how long a silence passes before the watchdog bites.
    pub fn grace_ms(&self) -> u64 {
        self.settings.expected_interval_ms + self.settings.expected_interval_ms / 20
    }

    /// Event time of the latest reading.
    pub fn last_event(&self) -> Option<u64> {
        self.last_event
    }

    /// The metrics as they stand.
    pub fn current(&self) -> Metrics5 {
        self.last
    }

    /// Changes the settings, keeping the ratings (resized to the new windows).
    pub fn reconfigure(&mut self, settings: QualitySettings) {
        self.settings = settings;
        self.frequency.resize(settings.long_window);
        self.age.resize(settings.short_window);
        self.latency.resize(settings.short_window);
        self.completeness.resize(settings.short_window);
        self.correctness.resize(settings.long_window);
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

    /// Checkpoints hold a rating as they did when its outcomes were a queue of booleans.
    #[test]
    fn a_rating_is_checkpointed_as_its_outcomes_oldest_first() {
        let mut r = Rating::new(SHORT_WINDOW);
        r.update(false);
        r.update(true);
        let wire = serde_json::to_value(&r).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"window": 5, "outcomes": [true, true, true, false, true], "r": r.r})
        );
        let back: Rating = serde_json::from_value(wire).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.clone().update(false), r.clone().update(false));
    }

    #[test]
    fn a_resized_rating_keeps_its_value_and_newest_outcomes() {
        let mut r = Rating::new(SHORT_WINDOW);
        r.update(false);
        r.update(true);
        let rated = r.rated();
        let mut longer = r.clone();
        longer.resize(LONG_WINDOW);
        assert_eq!((longer.window(), longer.rated()), (LONG_WINDOW, rated));
        let outcomes: Vec<bool> = longer.outcomes_oldest_first().collect();
        assert_eq!(outcomes.len(), LONG_WINDOW);
        assert_eq!(
            outcomes.iter().rev().take(2).collect::<Vec<_>>(),
            [&true, &false]
        );
        assert!(
            outcomes[..LONG_WINDOW - 2].iter().all(|p| *p),
            "pre-filled with passes"
        );
        let mut shorter = r;
        shorter.resize(1);
        assert_eq!(shorter.window(), 2, "at least 2");
        assert_eq!(
            shorter.outcomes_oldest_first().collect::<Vec<_>>(),
            [false, true]
        );
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
        let reading = |count: f64| -> Vec<(Arc<str>, f64)> {
            vec![("count".into(), count), ("total".into(), 953.0)]
        };
        // `total` never varies: it neither flags nor masks. Nothing is flagged before a
        // field has varied at all.
        let got: Vec<bool> = [5.0, 5.0, 5.0, 6.0, 6.0, 6.0, 6.0, 7.0]
            .iter()
            .map(|v| f.push(&reading(*v)))
            .collect();
        assert_eq!(got, [false, false, false, false, false, true, true, false]);
    }

    #[test]
    fn an_empty_road_repeating_its_last_speed_is_not_stuck() {
        let reading = |speed: f64, count: f64| -> Vec<(Arc<str>, f64)> {
            vec![("avgSpeed".into(), speed), ("vehicleCount".into(), count)]
        };
        // Night: no vehicles, and the detector repeats its last speed for hours.
        let night: Vec<_> = [(48.0, 3.0), (52.0, 1.0)]
            .into_iter()
            .chain(std::iter::repeat_n((52.0, 0.0), 30))
            .map(|(s, c)| reading(s, c))
            .collect();
        let mut road = FlatLine::with_activity(3, Some("vehicleCount".into()));
        assert!(
            night.iter().all(|r| !road.push(r)),
            "an empty road is not stuck"
        );
        // Without the activity field the same night is a flat line: the rule is what spares it.
        let mut plain = FlatLine::new(3);
        assert!(night.iter().any(|r| plain.push(r)));
        // A stuck detector that still counts vehicles is caught as before.
        let mut stuck = FlatLine::with_activity(3, Some("vehicleCount".into()));
        let got: Vec<bool> = [(40.0, 7.0), (45.0, 9.0), (45.0, 9.0), (45.0, 9.0)]
            .iter()
            .map(|(s, c)| stuck.push(&reading(*s, *c)))
            .collect();
        assert_eq!(got, [false, false, false, true]);
    }

    #[test]
    fn spikes_stand_out_from_the_median_and_mad() {
        let mut s = Spike::new(8, 5.0);
        // History 10, 11, 9, 10, 12, 10, 11, 9: median 10, MAD 1.
        for v in [10.0, 11.0, 9.0, 10.0, 12.0, 10.0, 11.0, 9.0] {
            assert!(!s.push(v).spike);
        }
        // 0.6745 · (50 − 10) / 1 = 26.98: a spike. 12 is 1.35: not.
        let v = s.push(50.0);
        assert!(v.spike && (v.z.unwrap() - 26.98).abs() < 1e-9);
        let v = s.push(12.0);
        assert!(!v.spike, "{v:?}");
    }

    #[test]
    fn a_quiet_signal_keeps_its_daytime_noise_and_level() {
        let mut s = Spike::new(8, 6.0);
        // Daytime: counts around 20, spread 4.
        for v in [16.0, 24.0, 20.0, 18.0, 22.0, 20.0, 16.0, 24.0, 20.0, 21.0] {
            s.push(v);
        }
        // Night: almost nothing, MAD 0 or 1.
        for v in [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] {
            s.push(v);
        }
        assert!(!s.push(6.0).spike, "six cars at night are no spike");
        assert!(s.push(300.0).spike, "three hundred are");
        let mut constant = Spike::new(4, 6.0);
        for _ in 0..4 {
            constant.push(953.0);
        }
        assert_eq!(
            constant.judge(0.0).z,
            None,
            "no verdict from a constant history"
        );
    }

    #[test]
    fn no_verdict_before_a_full_window() {
        let mut s = Spike::new(10, 3.0);
        for v in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0] {
            assert_eq!(s.push(v).z, None);
        }
        assert!(s.push(1000.0).spike);
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
            event_time: Some(t),
            age_ms: Some(2_000),
            latency_ms: Some(10),
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
        assert!(m.named().iter().all(|(_, m)| m.rated == 1.0));
    }

    #[test]
    fn each_metric_fails_on_its_own_cause() {
        let mut q = StreamQuality::new(settings());
        q.observe(&reading(0));
        // 10 minutes after the previous reading: frequency fails; an hour old: age fails;
        // 5 s inside Aqyl: latency fails; one required field missing; one of four wrong.
        let bad = Reading {
            event_time: Some(600_000),
            age_ms: Some(3_600_000),
            latency_ms: Some(5_000),
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
        let (m, next) = q.watchdog(0, 315_000).unwrap();
        assert_eq!((round3(m.frequency.rated), next), (0.9, 315_000));
        let (m, _) = q.watchdog(next, 630_000).unwrap();
        assert_eq!(round3(m.frequency.rated), 0.805);
        // A metric that cannot be judged keeps its rating.
        let unknown = Reading {
            event_time: None,
            age_ms: None,
            latency_ms: None,
            ..reading(0)
        };
        assert_eq!(round3(q.observe(&unknown).frequency.rated), 0.805);
    }

    #[test]
    fn the_median_by_selection_is_the_median_of_the_sorted_values() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for n in 1..40 {
            for _ in 0..20 {
                let mut v: Vec<f64> = (0..n)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        ((rng % 1000) as f64 - 500.0) / 7.0
                    })
                    .collect();
                let mut sorted = v.clone();
                sorted.sort_unstable_by(f64::total_cmp);
                assert_eq!(
                    median_in_place(&mut v).to_bits(),
                    median_sorted(&sorted).to_bits()
                );
            }
        }
    }
}

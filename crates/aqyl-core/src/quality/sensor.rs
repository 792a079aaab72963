//! The quality state of one sensor: its five rated metrics, the watchdog, and the flat-line
//! and spike detectors over its values. Fed in event-time order; gives one [`Assessment`]
//! per reading, per unusable message and per missed reading.

use super::metrics::{FlatLine, Jump, Metrics5, QualitySettings, Reading, Spike, StreamQuality};
use super::score::Findings;
use crate::Reason;
use std::sync::Arc;

/// Settings of a sensor's quality scoring.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SensorSettings {
    /// The five metrics.
    pub metrics: QualitySettings,
    /// Identical readings in a row that count as stuck.
    pub flat_line: usize,
    /// The field whose 0 means nothing to measure: no flat line is called while it reads 0
    /// (see [`FlatLine`]).
    pub activity: Option<Arc<str>>,
    /// Readings of history for the spike detector.
    pub spike_window: usize,
    /// Robust z-score beyond which a value is a spike.
    pub spike_threshold: f64,
}

/// What came in for a sensor.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A decoded reading, taken in event-time order.
    Reading {
        /// How old it was when it arrived, ms.
        age_ms: u64,
        /// Processing delay inside Aqyl, ms (`None` when unknown: a replay from a file).
        latency_ms: Option<u64>,
        /// Its values.
        fields: &'a [(Arc<str>, f64)],
        /// Required fields of the sensor type (all present, or decoding would have failed).
        required: usize,
        /// Fields outside their range, one sentence each.
        incorrect: &'a [String],
    },
    /// A message of this sensor that could not be decoded.
    Rejected {
        /// Why.
        reason: Reason,
        /// Which field, what was expected, what came.
        detail: &'a str,
        /// Fields the sensor type declares.
        declared: usize,
        /// Processing delay inside Aqyl, ms (`None` when unknown).
        latency_ms: Option<u64>,
    },
    /// A reading that came after its window had closed.
    Late {
        /// How old it was when it arrived, ms.
        age_ms: u64,
        /// Processing delay inside Aqyl, ms (`None` when unknown).
        latency_ms: Option<u64>,
    },
}

/// The verdict on one reading (or message, or silence) of one sensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    /// Event time it is about, Unix ms.
    pub time: u64,
    /// The five metrics after this input.
    pub metrics: Metrics5,
    /// What was wrong with it.
    pub findings: Findings,
    /// Robust z-score of each field against the sensor's own history, for the neighbour
    /// check (empty when there is no verdict).
    pub z: Vec<(Arc<str>, f64)>,
}

/// One sensor's quality state (serializable, for checkpoints; its settings go with it, and
/// [`SensorQuality::reconfigure`] brings them up to date after a restore).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SensorQuality {
    settings: SensorSettings,
    stream: StreamQuality,
    flat: FlatLine,
    /// Per field: the spike detector and a jump of the previous reading awaiting its verdict.
    spikes: Vec<(Arc<str>, Spike, Option<Jump>)>,
    /// Since when the watchdog counts: the last reading or the last watchdog failure.
    silence_since: Option<u64>,
    /// Watchdog failures in a row.
    silent_ticks: usize,
}

impl SensorQuality {
    /// A sensor not heard from yet.
    pub fn new(settings: SensorSettings) -> Self {
        Self {
            stream: StreamQuality::new(settings.metrics),
            flat: FlatLine::with_activity(settings.flat_line, settings.activity.clone()),
            settings,
            spikes: Vec::new(),
            silence_since: None,
            silent_ticks: 0,
        }
    }

    /// Judges one input at event time `time` (for a rejected or late message: the time it
    /// is filed under, the stream's current time).
    pub fn judge(&mut self, time: u64, input: Input<'_>) -> Assessment {
        let mut findings = Findings::default();
        let mut z = Vec::new();
        let reading = match input {
            Input::Reading {
                age_ms,
                latency_ms,
                fields,
                required,
                incorrect,
            } => {
                self.arrived(time);
                findings.incorrect = incorrect.to_vec();
                // An incorrect reading stays out of the value histories.
                if incorrect.is_empty() {
                    findings.flat_line = self.flat.push(fields);
                    for (name, v) in fields {
                        let index = match self.spikes.iter().position(|s| s.0 == *name) {
                            Some(i) => i,
                            None => {
                                let spike = Spike::new(
                                    self.settings.spike_window,
                                    self.settings.spike_threshold,
                                );
                                self.spikes.push((name.clone(), spike, None));
                                self.spikes.len() - 1
                            }
                        };
                        let (_, detector, pending) = &mut self.spikes[index];
                        // The previous reading's jump: back again (a spike) or kept (a shift).
                        let mut shifted = None;
                        if let Some(jump) = pending.take() {
                            if jump.came_back(*v) {
                                findings.spikes.push((name.to_string(), jump.z));
                            } else {
                                findings.shifts.push((name.to_string(), jump.z));
                                shifted = Some(jump.value);
                            }
                        }
                        let verdict = detector.push(*v);
                        if let Some(s) = verdict.z {
                            z.push((name.clone(), s));
                        }
                        *pending = verdict.jump;
                        if let Some(before) = shifted {
                            // The new level is the history from now on.
                            detector.rebase(&[before, *v]);
                            *pending = None;
                        }
                    }
                }
                Reading {
                    event_time: Some(time),
                    age_ms: Some(age_ms),
                    latency_ms,
                    required,
                    present: required,
                    checked: fields.len(),
                    wrong: incorrect.len(),
                }
            }
            Input::Rejected {
                reason,
                detail,
                declared,
                latency_ms,
            } => {
                let declared = declared.max(1);
                let (present, wrong) = match reason {
                    Reason::WrongType => {
                        findings.incorrect.push(detail.to_string());
                        (declared, 1)
                    }
                    Reason::MissingField => {
                        findings.incomplete = Some(detail.to_string());
                        (declared - 1, 0)
                    }
                    _ => {
                        findings.incomplete = Some(format!("unusable message: {detail}"));
                        (0, 0)
                    }
                };
                Reading {
                    event_time: None,
                    age_ms: None,
                    latency_ms,
                    required: declared,
                    present,
                    checked: declared,
                    wrong,
                }
            }
            Input::Late { age_ms, latency_ms } => {
                findings.late = true;
                Reading {
                    event_time: None,
                    age_ms: Some(age_ms),
                    latency_ms,
                    required: 0,
                    present: 0,
                    checked: 0,
                    wrong: 0,
                }
            }
        };
        Assessment {
            time,
            metrics: self.stream.observe(&reading),
            findings,
            z,
        }
    }

    /// The watchdog at event time (or wall-clock time) `now`: an assessment for the next
    /// missed reading, if the sensor is overdue; call until `None`. It stops counting after
    /// a frequency window of failures in a row (the rating is at its floor by then), until the
    /// sensor reports again.
    pub fn watchdog(&mut self, now: u64) -> Option<Assessment> {
        let since = self.silence_since?;
        if self.silent_ticks >= self.settings.metrics.long_window {
            return None;
        }
        let (metrics, at) = self.stream.watchdog(since, now)?;
        self.silence_since = Some(at);
        self.silent_ticks += 1;
        Some(Assessment {
            time: at,
            metrics,
            findings: Findings {
                silent: true,
                ..Findings::default()
            },
            z: Vec::new(),
        })
    }

    /// Notes that a reading of event time `time` has arrived, before it is judged (live, a
    /// reading waits for the watermark before it is judged, but it proves the sensor alive at
    /// once): the watchdog counts silence from the newest reading.
    pub fn arrived(&mut self, time: u64) {
        if self.silence_since.is_none_or(|s| time > s) {
            self.silence_since = Some(time);
            self.silent_ticks = 0;
        }
    }

    /// Whether the sensor has not reported yet, or the watchdog has counted it silent since
    /// its last reading: its next reading shows it is back.
    pub fn missing(&self) -> bool {
        self.silence_since.is_none() || self.silent_ticks > 0
    }

    /// Whether a reading repeats the previous one exactly (same event time, same values): a
    /// re-delivery, which says nothing new about the sensor.
    pub fn is_repeat(&self, time: u64, fields: &[(Arc<str>, f64)]) -> bool {
        self.stream.last_event() == Some(time) && self.flat.repeats(fields)
    }

    /// The watchdog's period: 1.05 × the expected interval, ms.
    pub fn grace_ms(&self) -> u64 {
        self.stream.grace_ms()
    }

    /// When the watchdog would bite next, if the sensor has reported.
    pub fn next_check(&self) -> Option<u64> {
        (self.silent_ticks < self.settings.metrics.long_window)
            .then_some(self.silence_since?.saturating_add(self.stream.grace_ms()))
    }

    /// The settings it scores with.
    pub fn settings(&self) -> &SensorSettings {
        &self.settings
    }

    /// Scores with `settings` from now on, keeping what it has learnt (ratings, histories,
    /// the watchdog's count): for a state restored from a checkpoint taken under other
    /// settings. Ratings and histories are cut or pre-filled to the new windows. Returns
    /// whether anything changed.
    pub fn reconfigure(&mut self, settings: SensorSettings) -> bool {
        if self.settings == settings {
            return false;
        }
        self.stream.reconfigure(settings.metrics);
        self.flat
            .reconfigure(settings.flat_line, settings.activity.clone());
        for (_, spike, _) in &mut self.spikes {
            spike.reconfigure(settings.spike_window, settings.spike_threshold);
        }
        self.settings = settings;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn settings() -> SensorSettings {
        SensorSettings {
            metrics: QualitySettings {
                expected_interval_ms: 5 * MIN,
                max_latency_ms: 1_000,
                long_window: 20,
                short_window: 5,
            },
            flat_line: 3,
            activity: None,
            spike_window: 12,
            spike_threshold: 6.0,
        }
    }

    fn fields(speed: f64, count: f64) -> Vec<(Arc<str>, f64)> {
        vec![("avgSpeed".into(), speed), ("vehicleCount".into(), count)]
    }

    fn read(q: &mut SensorQuality, t: u64, f: &[(Arc<str>, f64)], bad: &[String]) -> Assessment {
        q.judge(
            t,
            Input::Reading {
                age_ms: 1_000,
                latency_ms: Some(5),
                fields: f,
                required: 2,
                incorrect: bad,
            },
        )
    }

    fn healthy(q: &mut SensorQuality, from: u64, n: u64) {
        for i in 0..n {
            let f = fields(50.0 + (i % 5) as f64, 10.0 + (i % 3) as f64);
            let a = read(q, from + i * 5 * MIN, &f, &[]);
            assert_eq!(super::super::score(&a.metrics, &a.findings), 1.0, "{a:?}");
        }
    }

    #[test]
    fn stuck_values_jumps_and_range_errors_are_findings() {
        let mut q = SensorQuality::new(settings());
        healthy(&mut q, 0, 20);
        let t = 20 * 5 * MIN;
        // Stuck: the third identical reading in a row.
        let stuck = fields(53.0, 11.0);
        assert!(!read(&mut q, t, &stuck, &[]).findings.flat_line);
        assert!(!read(&mut q, t + 5 * MIN, &stuck, &[]).findings.flat_line);
        assert!(read(&mut q, t + 10 * MIN, &stuck, &[]).findings.flat_line);
        // A jump that comes back at the next reading: a spike, told at that reading.
        let a = read(&mut q, t + 15 * MIN, &fields(280.0, 12.0), &[]);
        assert!(a.findings.spikes.is_empty());
        let a = read(&mut q, t + 20 * MIN, &fields(52.0, 11.0), &[]);
        assert_eq!(a.findings.spikes.len(), 1, "{:?}", a.findings);
        assert_eq!(a.findings.spikes[0].0, "avgSpeed");
        assert!(a.findings.shifts.is_empty());
        // Out of range: counted as incorrect, kept out of the histories.
        let bad = vec!["avgSpeed = -5 is below its minimum 0".to_string()];
        let a = read(&mut q, t + 25 * MIN, &fields(-5.0, 12.0), &bad);
        assert_eq!(a.findings.incorrect, bad);
        assert_eq!(a.metrics.correctness.absolute, 0.5);
        assert!(a.z.is_empty());
    }

    #[test]
    fn rejected_and_late_messages_cost_completeness_correctness_and_age() {
        let mut q = SensorQuality::new(settings());
        healthy(&mut q, 0, 10);
        let missing = q.judge(
            50 * MIN,
            Input::Rejected {
                reason: Reason::MissingField,
                detail: "field vehicleCount is missing",
                declared: 4,
                latency_ms: Some(3),
            },
        );
        assert_eq!(missing.metrics.completeness.absolute, 0.75);
        assert!((missing.metrics.completeness.rated - 0.6).abs() < 1e-9);
        assert!(missing.findings.incomplete.is_some());
        let wrong = q.judge(
            50 * MIN,
            Input::Rejected {
                reason: Reason::WrongType,
                detail: "field avgSpeed: expected a number, got \"fast\"",
                declared: 4,
                latency_ms: Some(3),
            },
        );
        assert_eq!(wrong.metrics.correctness.absolute, 0.75);
        assert!((wrong.metrics.correctness.rated - 0.9).abs() < 1e-9);
        let late = q.judge(
            50 * MIN,
            Input::Late {
                age_ms: 20 * MIN,
                latency_ms: Some(3),
            },
        );
        assert!(late.findings.late);
        assert!((late.metrics.age.rated - 0.6).abs() < 1e-9);
    }

    #[test]
    fn the_watchdog_reports_each_missed_reading_then_rests() {
        let mut q = SensorQuality::new(settings());
        assert_eq!(
            q.watchdog(u64::MAX),
            None,
            "a sensor never heard from is not watched"
        );
        healthy(&mut q, 0, 3); // last reading at 10 minutes
        assert_eq!(q.next_check(), Some(10 * MIN + 315_000));
        assert_eq!(q.watchdog(10 * MIN + 314_999), None);
        let a = q.watchdog(10 * MIN + 315_000).unwrap();
        assert!(a.findings.silent);
        assert_eq!(a.time, 10 * MIN + 315_000);
        assert!((a.metrics.frequency.rated - 0.9).abs() < 1e-9);
        // A day of silence: a frequency window of failures, then rest.
        let mut n = 1;
        while q.watchdog(10 * MIN + 24 * 60 * MIN).is_some() {
            n += 1;
        }
        assert_eq!(n, 20);
        assert_eq!(q.next_check(), None);
        // Back: the watchdog watches again.
        read(&mut q, 2 * 24 * 60 * MIN, &fields(50.0, 10.0), &[]);
        assert!(q.next_check().is_some());
    }

    #[test]
    fn reconfiguring_keeps_what_was_learnt_and_applies_the_new_settings() {
        let mut q = SensorQuality::new(settings());
        healthy(&mut q, 0, 20);
        let before = q.clone();
        assert!(
            !q.reconfigure(settings()),
            "the same settings change nothing"
        );
        assert_eq!(format!("{q:?}"), format!("{before:?}"));
        // Stuck for two readings: not yet a flat line with 3, one with 2.
        let t = 20 * 5 * MIN;
        let stuck = fields(53.0, 11.0);
        assert!(!read(&mut q, t, &stuck, &[]).findings.flat_line);
        let mut shorter = settings();
        shorter.flat_line = 2;
        shorter.metrics.expected_interval_ms = 10 * MIN;
        assert!(q.reconfigure(shorter.clone()));
        assert_eq!(q.settings(), &shorter);
        assert!(read(&mut q, t + 5 * MIN, &stuck, &[]).findings.flat_line);
        assert_eq!(q.grace_ms(), 10 * MIN + 30_000);
        // The ratings were kept: still fully trusted after twenty good readings.
        assert_eq!(q.stream.current().frequency.rated, 1.0);
    }
}

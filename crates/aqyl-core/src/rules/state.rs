//! Rule state machines and per-sensor derived values: thresholds with hysteresis and `for`
//! durations, rates of change, learned baselines, and stable incident ids.
//!
//! The state machines keep only what changes as readings come (they are checkpointed); a
//! rule's parameters (`for`, `within`) are passed on each step, so a rule changed in the
//! configuration applies to a restored state at once.

use serde::{Deserialize, Serialize};

/// Suffix of a derived field: `<field>_rate` is the field's change per minute of event time
/// since the sensor's previous reading (absent for its first reading), so rules can watch
/// rates of change: `avgSpeed_rate <= -5` (speed falling by 5 km/h a minute or faster).
pub const RATE_SUFFIX: &str = "_rate";

/// Suffix of a derived field: `<field>_z` is how unusual the reading is for this sensor, the
/// z-score of the value against an exponentially weighted baseline of the sensor's own past
/// readings ([`Baseline`]), so rules can flag anomalies: `avgSpeed_z <= -3`.
pub const Z_SUFFIX: &str = "_z";

/// A learned per-sensor baseline of one field: exponentially weighted mean and variance
/// (weight `alpha` per reading, about the last 1/alpha readings). Its z-score is absent until
/// `min_samples` readings were seen or while the variance is zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    mean: f64,
    var: f64,
    n: u64,
}

impl Baseline {
    /// The weight of each new reading (about the last 20 readings).
    pub const ALPHA: f64 = 0.05;
    /// Readings needed before a z-score is given.
    pub const MIN_SAMPLES: u64 = 12;

    /// A baseline starting at `first`.
    pub fn new(first: f64) -> Self {
        Self {
            mean: first,
            var: 0.0,
            n: 1,
        }
    }

    /// The z-score of `x` against the baseline as it stands.
    pub fn z(&self, x: f64) -> Option<f64> {
        (self.n >= Self::MIN_SAMPLES && self.var > 1e-12).then(|| (x - self.mean) / self.var.sqrt())
    }

    /// Learns a reading.
    pub fn learn(&mut self, x: f64) {
        let delta = x - self.mean;
        self.mean += Self::ALPHA * delta;
        self.var = (1.0 - Self::ALPHA) * (self.var + Self::ALPHA * delta * delta);
        self.n += 1;
    }
}

/// The change per minute of each field between two readings `(time ms, fields)`.
pub fn rate(
    previous: (u64, &[(std::sync::Arc<str>, f64)]),
    current: (u64, &[(std::sync::Arc<str>, f64)]),
    field: &str,
) -> Option<f64> {
    let dt = current.0.checked_sub(previous.0).filter(|dt| *dt > 0)? as f64 / 60_000.0;
    let value = |fields: &[(std::sync::Arc<str>, f64)]| {
        fields.iter().find(|(n, _)| &**n == field).map(|f| f.1)
    };
    Some((value(current.1)? - value(previous.1)?) / dt)
}

/// A lifecycle change of a threshold rule's incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The incident starts, at the event time its condition first held (not when `for` ran out).
    Start {
        /// Event time the enter condition first held, Unix ms.
        started_at: u64,
    },
    /// The incident ends.
    End {
        /// Event time it started.
        started_at: u64,
    },
}

/// A threshold rule on one subject: enter when `enter` has held for `for_ms` of event time,
/// leave when `exit` holds (hysteresis: between the two nothing changes). Readings must come
/// in event-time order (the dataflow orders them before the rule sees them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Event time the enter condition started holding, while it holds and no incident is on.
    pending_since: Option<u64>,
    /// Start time of the ongoing incident.
    active_since: Option<u64>,
}

impl Threshold {
    /// Feeds one reading: whether the enter and exit conditions hold at event time `t`, for a
    /// rule whose enter condition must hold `for_ms` before the incident starts.
    pub fn step(&mut self, for_ms: u64, t: u64, enter: bool, exit: bool) -> Option<Transition> {
        if let Some(started_at) = self.active_since {
            if exit {
                self.active_since = None;
                self.pending_since = None;
                return Some(Transition::End { started_at });
            }
            return None;
        }
        if !enter {
            self.pending_since = None;
            return None;
        }
        let since = *self.pending_since.get_or_insert(t);
        if t.saturating_sub(since) >= for_ms {
            self.active_since = Some(since);
            self.pending_since = None;
            return Some(Transition::Start { started_at: since });
        }
        None
    }

    /// Whether an incident is ongoing.
    pub fn is_active(&self) -> bool {
        self.active_since.is_some()
    }

    /// When the ongoing incident started, if one is on.
    pub fn active_since(&self) -> Option<u64> {
        self.active_since
    }
}

/// A sequence rule on one subject: `first`, then `then` within `within_ms` of event time,
/// with no `unless` in between. The incident starts at the reading where `then` completes the
/// sequence and ends when `exit` holds. Readings must come in event-time order.
///
/// On each reading the completion is checked first (against the latest earlier `first`), then
/// `unless` cancels a pending `first`, then `first` (re)arms: so one reading cannot be both
/// the first and the last step, and an `unless` on the completing reading does not count as
/// "in between".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    /// Event time of the latest reading where `first` held, while the sequence is armed.
    first_at: Option<u64>,
    /// Start time of the ongoing incident.
    active_since: Option<u64>,
}

impl Sequence {
    /// Feeds one reading: which of the conditions hold at event time `t`, for a sequence
    /// whose second step must follow the first within `within_ms`.
    pub fn step(
        &mut self,
        within_ms: u64,
        t: u64,
        first: bool,
        then: bool,
        unless: bool,
        exit: bool,
    ) -> Option<Transition> {
        if let Some(started_at) = self.active_since {
            if exit {
                self.active_since = None;
                // The ending reading may itself be the first step of the next sequence.
                if first && !unless {
                    self.first_at = Some(t);
                }
                return Some(Transition::End { started_at });
            }
            return None;
        }
        if self.first_at.is_some_and(|a| t < a || t - a > within_ms) {
            self.first_at = None;
        }
        if then && self.first_at.is_some_and(|a| a < t) {
            self.first_at = None;
            self.active_since = Some(t);
            return Some(Transition::Start { started_at: t });
        }
        if unless {
            self.first_at = None;
        }
        if first {
            self.first_at = Some(t);
        }
        None
    }

    /// Whether an incident is ongoing.
    pub fn is_active(&self) -> bool {
        self.active_since.is_some()
    }

    /// When the ongoing incident started, if one is on.
    pub fn active_since(&self) -> Option<u64> {
        self.active_since
    }
}

/// A stable incident id: the same rule, subject and start always give the same id, so a
/// replay or a re-delivery yields the same incidents (FNV-1a, hex).
pub fn incident_id(rule: &str, subject: &str, started_at: u64) -> String {
    let h = crate::fnv::fnv1a(
        rule.bytes()
            .chain([0xff])
            .chain(subject.bytes())
            .chain([0xff])
            .chain(started_at.to_le_bytes()),
    );
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_learns_normal_and_flags_the_unusual() {
        let mut b = Baseline::new(50.0);
        assert_eq!(b.z(80.0), None, "no verdict before MIN_SAMPLES");
        let mut rng = fastrand::Rng::with_seed(2);
        for _ in 0..100 {
            b.learn(50.0 + rng.f64() * 4.0 - 2.0);
        }
        assert!(b.z(51.0).unwrap().abs() < 2.0);
        assert!(b.z(20.0).unwrap() < -10.0);
    }

    #[test]
    fn rates_are_per_minute_of_event_time() {
        let a: Vec<(std::sync::Arc<str>, f64)> = vec![("speed".into(), 60.0)];
        let b: Vec<(std::sync::Arc<str>, f64)> = vec![("speed".into(), 40.0)];
        assert_eq!(rate((0, &a), (300_000, &b), "speed"), Some(-4.0));
        assert_eq!(rate((0, &a), (0, &b), "speed"), None, "no time passed");
        assert_eq!(rate((0, &a), (60_000, &b), "count"), None);
    }

    #[test]
    fn hysteresis_and_for_durations() {
        const FOR: u64 = 600_000; // 10 minutes
        let mut r = Threshold::default();
        assert_eq!(r.step(FOR, 0, true, false), None);
        assert_eq!(r.step(FOR, 300_000, true, false), None);
        assert_eq!(
            r.step(FOR, 600_000, true, false),
            Some(Transition::Start { started_at: 0 })
        );
        // Between the enter and exit conditions nothing changes.
        assert_eq!(r.step(FOR, 900_000, false, false), None);
        assert!(r.is_active());
        assert_eq!(
            r.step(FOR, 1_200_000, false, true),
            Some(Transition::End { started_at: 0 })
        );
        // A condition that drops before `for` runs out starts nothing.
        assert_eq!(r.step(FOR, 1_500_000, true, false), None);
        assert_eq!(r.step(FOR, 1_800_000, false, false), None);
        assert_eq!(r.step(FOR, 2_100_000, true, false), None);
        assert_eq!(
            r.step(FOR, 2_700_000, true, false),
            Some(Transition::Start {
                started_at: 2_100_000
            })
        );
    }

    #[test]
    fn incident_ids_are_stable_and_distinct() {
        assert_eq!(
            incident_id("congestion", "158324", 1),
            incident_id("congestion", "158324", 1)
        );
        assert_ne!(
            incident_id("congestion", "158324", 1),
            incident_id("congestion", "158324", 2)
        );
        assert_ne!(
            incident_id("congestion", "1583", 24),
            incident_id("congestion", "15832", 4)
        );
        assert_eq!(incident_id("a", "b", 0).len(), 16);
    }

    #[test]
    fn sequences_need_both_steps_in_order_within_the_time_and_nothing_between() {
        const MIN: u64 = 60_000;
        const WITHIN: u64 = 10 * MIN;
        let mut s = Sequence::default();
        // then without first: nothing.
        assert_eq!(s.step(WITHIN, 0, false, true, false, false), None);
        // first, then `then` 5 minutes later: start.
        assert_eq!(s.step(WITHIN, 5 * MIN, true, false, false, false), None);
        assert_eq!(
            s.step(WITHIN, 10 * MIN, false, true, false, false),
            Some(Transition::Start {
                started_at: 10 * MIN
            })
        );
        assert!(s.is_active());
        assert_eq!(
            s.step(WITHIN, 15 * MIN, true, true, false, false),
            None,
            "no restart while on"
        );
        assert_eq!(
            s.step(WITHIN, 20 * MIN, true, false, false, true),
            Some(Transition::End {
                started_at: 10 * MIN
            })
        );
        // The ending reading armed the next sequence.
        assert_eq!(
            s.step(WITHIN, 25 * MIN, false, true, false, false),
            Some(Transition::Start {
                started_at: 25 * MIN
            })
        );
        assert_eq!(
            s.step(WITHIN, 26 * MIN, false, false, false, true),
            Some(Transition::End {
                started_at: 25 * MIN
            })
        );
        // Too slow: `then` 11 minutes after `first`.
        assert_eq!(s.step(WITHIN, 30 * MIN, true, false, false, false), None);
        assert_eq!(s.step(WITHIN, 41 * MIN, false, true, false, false), None);
        // `unless` in between cancels.
        assert_eq!(s.step(WITHIN, 50 * MIN, true, false, false, false), None);
        assert_eq!(s.step(WITHIN, 52 * MIN, false, false, true, false), None);
        assert_eq!(s.step(WITHIN, 55 * MIN, false, true, false, false), None);
        // One reading is not both steps; the latest `first` counts.
        assert_eq!(s.step(WITHIN, 60 * MIN, true, true, false, false), None);
        assert_eq!(
            s.step(WITHIN, 61 * MIN, false, true, true, false),
            Some(Transition::Start {
                started_at: 61 * MIN
            }),
            "an unless on the completing reading is not in between"
        );
    }
}

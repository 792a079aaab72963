//! Fault injection: episodes that make a sensor misbehave, and their ground truth.
//!
//! Each sensor has its own [`FaultInjector`]. On every reading it either continues the open
//! episode, starts a scheduled one, or rolls each configured rate (the probability, per sensor
//! per reading, of starting an episode). One episode is open per sensor at a time. An episode
//! with a zero duration affects exactly one message; a longer one affects every reading whose
//! event time falls in `[start, start + duration)`.
//!
//! The injector only rewrites the payload and says what the delivery layer must do
//! ([`Effect`]); holding messages back or sending them twice happens in the scenario engine.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::payload::Payload;
use crate::sensors::{uniform, Params, Sensor, SensorType};
use crate::truth::FaultRecord;

/// The kinds of fault the simulator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The sensor's messages are lost (their `seq` numbers are skipped).
    Dropout,
    /// Measurements repeat the episode's first values.
    Stuck,
    /// One measurement takes an absurd but type-correct value.
    Spike,
    /// One measurement leaves its valid range (negative speed, more cars than spaces, ...).
    OutOfRange,
    /// One measurement field is left out.
    MissingField,
    /// The JSON is cut short and does not parse.
    Malformed,
    /// The same message is published twice.
    Duplicate,
    /// The message is held back and published `delay` later.
    Late,
    /// The message is published after the sensor's next message.
    OutOfOrder,
    /// The payload's timestamp is shifted by `skew`.
    ClockSkew,
}

impl FaultKind {
    /// All kinds.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Dropout,
        FaultKind::Stuck,
        FaultKind::Spike,
        FaultKind::OutOfRange,
        FaultKind::MissingField,
        FaultKind::Malformed,
        FaultKind::Duplicate,
        FaultKind::Late,
        FaultKind::OutOfOrder,
        FaultKind::ClockSkew,
    ];

    /// The snake_case name used on the command line, in scenarios and in the truth.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Dropout => "dropout",
            FaultKind::Stuck => "stuck",
            FaultKind::Spike => "spike",
            FaultKind::OutOfRange => "out_of_range",
            FaultKind::MissingField => "missing_field",
            FaultKind::Malformed => "malformed",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Late => "late",
            FaultKind::OutOfOrder => "out_of_order",
            FaultKind::ClockSkew => "clock_skew",
        }
    }

    /// How long a randomly started episode lasts unless configured: 30 minutes of dropout,
    /// an hour of stuck values or clock skew, a single message for the others.
    pub fn default_duration(self) -> Duration {
        match self {
            FaultKind::Dropout => Duration::minutes(30),
            FaultKind::Stuck | FaultKind::ClockSkew => Duration::hours(1),
            _ => Duration::zero(),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().replace('-', "_");
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == norm)
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
                Error::Invalid(format!(
                    "unknown fault {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Default hold-back of a late message.
pub const DEFAULT_DELAY: Duration = Duration::minutes(15);
/// Default clock skew (its sign is drawn at random for rate-started episodes).
pub const DEFAULT_SKEW: Duration = Duration::hours(1);

/// A random fault: per sensor and per reading, start an episode of `kind` with probability
/// `rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRate {
    /// Which fault.
    pub kind: FaultKind,
    /// Probability per sensor per reading, 0..=1.
    pub rate: f64,
    /// Episode length (zero: one message).
    pub duration: Duration,
    /// Hold-back for `late`.
    pub delay: Duration,
    /// Shift for `clock_skew`; `None` draws ±1 h.
    pub skew: Option<Duration>,
}

impl FaultRate {
    /// A rate with the kind's default duration, delay and skew.
    pub fn new(kind: FaultKind, rate: f64) -> Self {
        Self {
            kind,
            rate,
            duration: kind.default_duration(),
            delay: DEFAULT_DELAY,
            skew: None,
        }
    }
}

/// Parses `KIND=RATE[:DURATION]`, e.g. `stuck=0.01`, `dropout=0.002:1h`, `spike=0.05:0s`.
pub fn parse_fault_spec(spec: &str) -> Result<FaultRate> {
    let bad = |reason: &str| Error::FaultSpec {
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let (kind, rest) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected KIND=RATE[:DURATION], e.g. stuck=0.01:30m"))?;
    let kind: FaultKind = kind.parse().map_err(|e: Error| bad(&e.to_string()))?;
    let (rate, duration) = match rest.split_once(':') {
        Some((r, d)) => (r, Some(d)),
        None => (rest, None),
    };
    let rate: f64 = rate
        .trim()
        .parse()
        .map_err(|_| bad("the rate must be a number between 0 and 1"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(bad(
            "the rate must be between 0 and 1 (a probability per sensor per reading)",
        ));
    }
    let mut out = FaultRate::new(kind, rate);
    if let Some(d) = duration {
        out.duration = crate::time::parse_duration(d).map_err(|e| bad(&e.to_string()))?;
    }
    Ok(out)
}

/// A scripted fault on one sensor over `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledFault {
    /// Which fault.
    pub kind: FaultKind,
    /// Index of the sensor in the city.
    pub sensor: usize,
    /// First event time affected.
    pub start: DateTime<Utc>,
    /// End of the affected interval (exclusive).
    pub end: DateTime<Utc>,
    /// Hold-back for `late`.
    pub delay: Duration,
    /// Shift for `clock_skew`.
    pub skew: Duration,
}

/// What the delivery layer must do with a message after the injector has seen it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Effect {
    /// Do not publish it.
    pub drop: bool,
    /// Publish it twice.
    pub duplicate: bool,
    /// Cut the encoded payload at this fraction of its length.
    pub truncate: Option<f64>,
    /// Publish it this much later (event time).
    pub delay: Option<Duration>,
    /// Publish it after the sensor's next message.
    pub out_of_order: bool,
}

#[derive(Debug, Clone)]
struct Episode {
    kind: FaultKind,
    /// Affects readings before this time; `None`: only the first one.
    until: Option<DateTime<Utc>>,
    origin: &'static str,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    messages: u64,
    field: Option<&'static str>,
    stuck: Option<Vec<(&'static str, Value)>>,
    skew: Duration,
    delay: Duration,
}

impl Episode {
    fn record(&self, sensor: &Sensor) -> Option<FaultRecord> {
        Some(FaultRecord {
            kind: self.kind.as_str().to_owned(),
            sensor: sensor.id.clone(),
            sensor_type: sensor.kind.as_str().to_owned(),
            start: self.first?,
            end: self.last?,
            messages: self.messages,
            origin: self.origin.to_owned(),
            field: self.field.map(str::to_owned),
            skew_s: (self.kind == FaultKind::ClockSkew).then(|| self.skew.num_seconds()),
            delay_s: (self.kind == FaultKind::Late).then(|| self.delay.num_seconds()),
        })
    }
}

/// The fault state of one sensor.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    rng: fastrand::Rng,
    active: Option<Episode>,
}

impl FaultInjector {
    /// A fresh injector with its own random stream (independent of the sensor's values).
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            active: None,
        }
    }

    /// Applies faults to the reading at event time `t`: rewrites `payload` in place and
    /// returns what delivery must do, plus the truth records of episodes that ended.
    pub fn apply(
        &mut self,
        sensor: &Sensor,
        t: DateTime<Utc>,
        payload: &mut Payload,
        rates: &[FaultRate],
        scheduled: &[ScheduledFault],
        closed: &mut Vec<FaultRecord>,
    ) -> Effect {
        if let Some(ep) = &self.active {
            if ep.until.is_none_or(|u| t >= u) {
                closed.extend(self.active.take().and_then(|ep| ep.record(sensor)));
            }
        }
        if self.active.is_none() {
            self.active = self.start_episode(sensor, t, rates, scheduled);
        }
        let Some(mut ep) = self.active.take() else {
            return Effect::default();
        };
        let effect = self.tamper(sensor, t, payload, &mut ep);
        ep.first.get_or_insert(t);
        ep.last = Some(t);
        ep.messages += 1;
        if ep.until.is_none() {
            closed.extend(ep.record(sensor));
        } else {
            self.active = Some(ep);
        }
        effect
    }

    /// Closes the open episode at the end of the run.
    pub fn finish(&mut self, sensor: &Sensor) -> Option<FaultRecord> {
        self.active.take().and_then(|ep| ep.record(sensor))
    }

    fn start_episode(
        &mut self,
        sensor: &Sensor,
        t: DateTime<Utc>,
        rates: &[FaultRate],
        scheduled: &[ScheduledFault],
    ) -> Option<Episode> {
        let new = |kind, until, origin, delay, skew| Episode {
            kind,
            until,
            origin,
            first: None,
            last: None,
            messages: 0,
            field: None,
            stuck: None,
            skew,
            delay,
        };
        if let Some(s) = scheduled
            .iter()
            .find(|s| s.sensor == sensor.index && s.start <= t && t < s.end)
        {
            return Some(new(s.kind, Some(s.end), "schedule", s.delay, s.skew));
        }
        for r in rates {
            // Always draw, so one rate's outcome does not shift the stream of the others.
            if self.rng.f64() < r.rate {
                let until = (r.duration > Duration::zero()).then(|| t + r.duration);
                let skew = r.skew.unwrap_or(if self.rng.bool() {
                    DEFAULT_SKEW
                } else {
                    -DEFAULT_SKEW
                });
                return Some(new(r.kind, until, "rate", r.delay, skew));
            }
        }
        None
    }

    fn tamper(
        &mut self,
        sensor: &Sensor,
        t: DateTime<Utc>,
        payload: &mut Payload,
        ep: &mut Episode,
    ) -> Effect {
        let kind = sensor.kind;
        let fields = kind.measurement_fields();
        let rng = &mut self.rng;
        if matches!(
            ep.kind,
            FaultKind::Spike | FaultKind::OutOfRange | FaultKind::MissingField
        ) && ep.field.is_none()
        {
            ep.field = Some(match (ep.kind, kind) {
                // The fields whose misbehaviour a consumer's range checks are written for.
                (FaultKind::Spike, SensorType::Traffic) => "vehicleCount",
                (FaultKind::OutOfRange, SensorType::Traffic) => "avgSpeed",
                (FaultKind::Spike | FaultKind::OutOfRange, SensorType::Weather) => {
                    if ep.kind == FaultKind::Spike {
                        "tempm"
                    } else {
                        "hum"
                    }
                }
                _ => fields[rng.usize(..fields.len())],
            });
        }
        let mut effect = Effect::default();
        let Some(f) = payload.fields_mut() else {
            return effect;
        };
        match ep.kind {
            FaultKind::Dropout => effect.drop = true,
            FaultKind::Stuck => match &ep.stuck {
                None => {
                    ep.stuck = Some(
                        fields
                            .iter()
                            .filter_map(|k| Some((*k, f.get(k)?.clone())))
                            .collect(),
                    )
                }
                Some(values) => {
                    for (k, v) in values {
                        f.set(k, v.clone());
                    }
                }
            },
            FaultKind::Spike => {
                let field = ep.field.unwrap_or(fields[0]);
                f.set(field, spike_value(kind, field, rng));
            }
            FaultKind::OutOfRange => {
                let field = ep.field.unwrap_or(fields[0]);
                f.set(field, out_of_range_value(sensor, field, rng));
            }
            FaultKind::MissingField => {
                f.remove(ep.field.unwrap_or(fields[0]));
            }
            FaultKind::Malformed => effect.truncate = Some(uniform(rng, 0.2, 0.8)),
            FaultKind::Duplicate => effect.duplicate = true,
            FaultKind::Late => effect.delay = Some(ep.delay),
            FaultKind::OutOfOrder => effect.out_of_order = true,
            FaultKind::ClockSkew => f.set(kind.time_field(), kind.time_value(t + ep.skew)),
        }
        effect
    }
}

fn spike_value(kind: SensorType, field: &str, rng: &mut fastrand::Rng) -> Value {
    match (kind, field) {
        (SensorType::Traffic, "avgSpeed") => Value::from(rng.i64(200..=300)),
        (SensorType::Traffic, _) => Value::from(rng.i64(250..=600)),
        // A full garage emptying between two readings.
        (SensorType::Parking, _) => Value::from(0),
        (SensorType::Pollution, _) => Value::from(rng.i64(400..=500)),
        (SensorType::Weather, "hum") => Value::from(rng.i64(0..=5)),
        (SensorType::Weather, "tempm") => Value::from(rng.i64(45..=60) as f64 + 0.5),
        (SensorType::Weather, _) => Value::from(rng.i64(150..=250) as f64 + 0.5),
        (SensorType::Noise, _) => Value::from(rng.i64(130..=150) as f64 + 0.5),
    }
}

fn out_of_range_value(sensor: &Sensor, field: &str, rng: &mut fastrand::Rng) -> Value {
    match (&sensor.params, field) {
        (Params::Parking { total, .. }, _) => Value::from(total + rng.i64(1..=200)),
        (Params::Weather { .. }, "hum") => Value::from(rng.i64(101..=150)),
        (Params::Weather { .. }, "tempm") => Value::from(-(rng.i64(80..=120) as f64) - 0.5),
        (Params::Noise { .. }, _) => Value::from(-(rng.i64(10..=50) as f64) - 0.5),
        _ => Value::from(-rng.i64(1..=50)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::{reading, City, CityConfig, Conditions, SensorState};
    use crate::time::parse_time;

    #[test]
    fn specs_parse_with_defaults_and_reject_nonsense() -> Result<()> {
        let r = parse_fault_spec("stuck=0.01")?;
        assert_eq!(
            (r.kind, r.rate, r.duration),
            (FaultKind::Stuck, 0.01, Duration::hours(1))
        );
        let r = parse_fault_spec("out-of-range=0.5:10m")?;
        assert_eq!(
            (r.kind, r.duration),
            (FaultKind::OutOfRange, Duration::minutes(10))
        );
        assert!(parse_fault_spec("stuck").is_err());
        assert!(parse_fault_spec("stuck=2").is_err());
        assert!(parse_fault_spec("wobble=0.1").is_err());
        assert!(parse_fault_spec("stuck=0.1:soon").is_err());
        Ok(())
    }

    fn run(
        kind: FaultKind,
        rate: f64,
        seed: u64,
    ) -> Result<(Vec<Effect>, Vec<FaultRecord>, Vec<Payload>)> {
        let city = City::generate(
            &CityConfig {
                sensors: 1,
                areas: 1,
                types: vec![SensorType::Traffic],
            },
            1,
        );
        let s = &city.sensors[0];
        let mut st = SensorState::new(s, 1);
        let mut inj = FaultInjector::new(seed);
        let rates = [FaultRate::new(kind, rate)];
        let t0 = parse_time("2014-08-01T00:00:00")?;
        let (mut effects, mut closed, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..288 {
            let t = t0 + Duration::minutes(5 * i);
            let mut p = reading(s, &mut st, t, Conditions::default());
            effects.push(inj.apply(s, t, &mut p, &rates, &[], &mut closed));
            payloads.push(p);
        }
        closed.extend(inj.finish(s));
        Ok((effects, closed, payloads))
    }

    #[test]
    fn the_fault_schedule_is_deterministic_per_seed() -> Result<()> {
        let a = run(FaultKind::Dropout, 0.05, 3)?;
        let b = run(FaultKind::Dropout, 0.05, 3)?;
        let c = run(FaultKind::Dropout, 0.05, 4)?;
        assert_eq!(a.1, b.1);
        assert_eq!(a.0, b.0);
        assert_ne!(a.1, c.1);
        assert!(!a.1.is_empty());
        Ok(())
    }

    #[test]
    fn truth_counts_exactly_the_dropped_messages() -> Result<()> {
        let (effects, closed, _) = run(FaultKind::Dropout, 0.05, 9)?;
        let dropped = effects.iter().filter(|e| e.drop).count() as u64;
        assert_eq!(closed.iter().map(|r| r.messages).sum::<u64>(), dropped);
        for r in &closed {
            // 30-minute episodes of 5-minute readings.
            assert!(
                r.messages <= 6 && r.end - r.start <= Duration::minutes(25),
                "{r:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn stuck_repeats_the_first_values_and_out_of_range_goes_negative() -> Result<()> {
        let city = City::generate(
            &CityConfig {
                sensors: 1,
                areas: 1,
                types: vec![SensorType::Traffic],
            },
            1,
        );
        let s = &city.sensors[0];
        let mut st = SensorState::new(s, 1);
        let mut inj = FaultInjector::new(1);
        let t0 = parse_time("2014-08-01T06:00:00")?;
        let sched = |kind| ScheduledFault {
            kind,
            sensor: 0,
            start: t0,
            end: t0 + Duration::hours(1),
            delay: DEFAULT_DELAY,
            skew: DEFAULT_SKEW,
        };
        let mut closed = Vec::new();
        let mut seen = Vec::new();
        for i in 0..12 {
            let t = t0 + Duration::minutes(5 * i);
            let mut p = reading(s, &mut st, t, Conditions::default());
            inj.apply(s, t, &mut p, &[], &[sched(FaultKind::Stuck)], &mut closed);
            let f = p.fields().cloned().unwrap_or_default();
            seen.push((f.get("avgSpeed").cloned(), f.get("vehicleCount").cloned()));
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        assert_eq!(inj.finish(s).map(|r| r.messages), Some(12));

        let t = t0 + Duration::hours(2);
        let mut p = reading(s, &mut st, t, Conditions::default());
        let one = ScheduledFault {
            start: t,
            end: t + Duration::minutes(1),
            ..sched(FaultKind::OutOfRange)
        };
        inj.apply(s, t, &mut p, &[], &[one], &mut closed);
        assert!(p
            .fields()
            .and_then(|f| f.get_f64("avgSpeed"))
            .is_some_and(|v| v < 0.0));
        Ok(())
    }
}

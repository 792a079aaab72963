//! The scenario engine: turns a city, scripted incidents and faults into an ordered stream of
//! messages plus the ground truth, without any I/O.
//!
//! Sensors are ticked in event-time order (ties by sensor index), so the stream is a pure
//! function of the configuration and the seed. Each message carries a `due` time: the
//! simulated time at which it should be published. `due` equals the event time except for
//! late messages (held back by their delay) and out-of-order ones (sent after the sensor's
//! next message). Messages come out in `due` order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use chrono::{DateTime, Duration, Utc};

use crate::error::{Error, Result};
use crate::faults::{FaultInjector, FaultRate, ScheduledFault};
use crate::payload::{encode, Payload, Trace};
use crate::scenario::{FaultPlan, Incident, IncidentKind, Scenario};
use crate::sensors::{
    first_tick, mix, next_interval, reading, City, CityConfig, Conditions, SensorState, SensorType,
};
use crate::truth::{IncidentRecord, TruthRecord};

/// Everything that determines a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Sensors and areas.
    pub city: CityConfig,
    /// First event time.
    pub start: DateTime<Utc>,
    /// Simulated length of the run.
    pub duration: Duration,
    /// Random seed: same seed, same messages, same truth.
    pub seed: u64,
    /// Random faults.
    pub rates: Vec<FaultRate>,
    /// Scripted incidents.
    pub incidents: Vec<Incident>,
    /// Scheduled faults.
    pub faults: Vec<FaultPlan>,
}

impl SimConfig {
    /// A run of `city` from `start` for `duration`, with no faults or incidents.
    pub fn new(city: CityConfig, start: DateTime<Utc>, duration: Duration, seed: u64) -> Self {
        Self {
            city,
            start,
            duration,
            seed,
            rates: Vec::new(),
            incidents: Vec::new(),
            faults: Vec::new(),
        }
    }

    /// Adds a scenario's fault rates, incidents and scheduled faults.
    pub fn with_scenario(mut self, scenario: &Scenario) -> Self {
        self.rates.extend(scenario.rates.iter().cloned());
        self.incidents.extend(scenario.incidents.iter().cloned());
        self.faults.extend(scenario.faults.iter().cloned());
        self
    }

    /// End of the run (exclusive).
    pub fn end(&self) -> DateTime<Utc> {
        self.start + self.duration
    }
}

/// One message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// MQTT topic.
    pub topic: String,
    /// Index of the sensor in the city.
    pub sensor: usize,
    /// Sensor type.
    pub sensor_type: SensorType,
    /// Per-sensor sequence number of the reading (readings lost to dropouts leave gaps).
    pub seq: u64,
    /// Event time of the reading.
    pub event_time: DateTime<Utc>,
    /// Simulated time at which to publish.
    pub due: DateTime<Utc>,
    /// Body.
    pub payload: Payload,
    /// Cut the encoded body to this fraction (malformed fault).
    pub truncate: Option<f64>,
}

impl Message {
    /// Encodes the body; `sent_at` (Unix ms) adds the `seq`/`sent_at` trace fields.
    pub fn encode(&self, sent_at: Option<u64>) -> Vec<u8> {
        encode(
            &self.payload,
            sent_at.map(|sent_at| Trace {
                seq: self.seq,
                sent_at,
            }),
            self.truncate,
        )
    }
}

/// Which incidents touch one sensor.
#[derive(Debug, Clone, Default)]
struct SensorIncidents(Vec<(IncidentKind, DateTime<Utc>, DateTime<Utc>)>);

impl SensorIncidents {
    fn active(&self, kind: IncidentKind, t: DateTime<Utc>) -> bool {
        self.0
            .iter()
            .any(|(k, s, e)| *k == kind && *s <= t && t < *e)
    }
}

/// The running simulation: an iterator of [`Message`]s in publish order.
#[derive(Debug)]
pub struct Simulation {
    city: City,
    config: SimConfig,
    states: Vec<SensorState>,
    injectors: Vec<FaultInjector>,
    incidents: Vec<SensorIncidents>,
    scheduled: Vec<Vec<ScheduledFault>>,
    ticks: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    held: BTreeMap<(DateTime<Utc>, u64), Message>,
    swap: Vec<Option<Message>>,
    ready: VecDeque<Message>,
    truth: Vec<TruthRecord>,
    order: u64,
    finished: bool,
}

impl Simulation {
    /// Lays out the city and checks incidents and scheduled faults against it.
    pub fn new(config: SimConfig) -> Result<Simulation> {
        if config.duration <= Duration::zero() {
            return Err(Error::Invalid("the duration must be positive".into()));
        }
        if config.city.sensors == 0 || config.city.types.is_empty() {
            return Err(Error::Invalid(
                "nothing to simulate: set at least one sensor and one type".into(),
            ));
        }
        let city = City::generate(&config.city, config.seed);
        let n = city.sensors.len();
        let mut incidents = vec![SensorIncidents::default(); n];
        let mut truth = Vec::new();
        let end = config.end();
        for inc in &config.incidents {
            if !config.city.types.contains(&inc.sensor_type) {
                return Err(Error::Invalid(format!(
                    "{}: the {} incident needs {} sensors, which this run does not simulate",
                    inc.origin,
                    inc.kind.as_str(),
                    inc.sensor_type
                )));
            }
            let sensors: Vec<usize> = match inc.kind {
                IncidentKind::Congestion => {
                    if !city.areas.contains(&inc.subject) {
                        return Err(Error::Invalid(format!(
                            "{}: area {:?} does not exist; this city has area-1 .. area-{}",
                            inc.origin,
                            inc.subject,
                            city.areas.len()
                        )));
                    }
                    city.sensors
                        .iter()
                        .filter(|s| {
                            s.area == inc.subject
                                && matches!(
                                    s.kind,
                                    SensorType::Traffic | SensorType::Pollution | SensorType::Noise
                                )
                        })
                        .map(|s| s.index)
                        .collect()
                }
                IncidentKind::ParkingFull | IncidentKind::Outage => {
                    let s = city.find(inc.sensor_type, &inc.subject).ok_or_else(|| {
                        Error::Invalid(format!(
                            "{}: there is no {} sensor {:?}{}",
                            inc.origin,
                            inc.sensor_type,
                            inc.subject,
                            id_hint(&city, inc.sensor_type)
                        ))
                    })?;
                    vec![s.index]
                }
            };
            let start = inc.start.max(config.start);
            let stop = inc.end.min(end);
            if stop <= start {
                return Err(Error::Invalid(format!(
                    "{}: the {} incident lies outside the simulated time {} .. {}",
                    inc.origin,
                    inc.kind.as_str(),
                    crate::time::rfc3339(config.start),
                    crate::time::rfc3339(end)
                )));
            }
            for &i in &sensors {
                incidents[i].0.push((inc.kind, start, stop));
            }
            let mut ids: Vec<String> = sensors
                .iter()
                .map(|&i| &city.sensors[i])
                .filter(|s| s.kind == inc.sensor_type)
                .map(|s| s.id.clone())
                .collect();
            ids.sort();
            truth.push(TruthRecord::Incident(IncidentRecord {
                kind: inc.kind.as_str().to_owned(),
                subject: inc.subject.clone(),
                sensor_type: inc.sensor_type.as_str().to_owned(),
                sensors: ids,
                start,
                end: stop,
            }));
        }
        let mut scheduled = vec![Vec::new(); n];
        for f in &config.faults {
            let targets: Vec<usize> = match (&f.sensor, &f.area) {
                (Some(id), _) => vec![
                    city.find(f.sensor_type, id)
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "{}: there is no {} sensor {id:?}{}",
                                f.origin,
                                f.sensor_type,
                                id_hint(&city, f.sensor_type)
                            ))
                        })?
                        .index,
                ],
                (None, Some(area)) => city.in_area(f.sensor_type, area).map(|s| s.index).collect(),
                (None, None) => Vec::new(),
            };
            if targets.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: the fault matches no {} sensor",
                    f.origin, f.sensor_type
                )));
            }
            for i in targets {
                scheduled[i].push(ScheduledFault {
                    kind: f.kind,
                    sensor: i,
                    start: f.start,
                    end: f.end,
                    delay: f.delay,
                    skew: f.skew,
                });
            }
        }
        let mut states: Vec<SensorState> = city
            .sensors
            .iter()
            .map(|s| SensorState::new(s, config.seed))
            .collect();
        let injectors = city
            .sensors
            .iter()
            .map(|s| FaultInjector::new(mix(config.seed, 4_000_000 + s.index as u64)))
            .collect();
        let mut ticks = BinaryHeap::new();
        for (s, st) in city.sensors.iter().zip(states.iter_mut()) {
            ticks.push(Reverse((first_tick(s, st, config.start), s.index)));
        }
        Ok(Simulation {
            swap: vec![None; n],
            city,
            config,
            states,
            injectors,
            incidents,
            scheduled,
            ticks,
            held: BTreeMap::new(),
            ready: VecDeque::new(),
            truth,
            order: 0,
            finished: false,
        })
    }

    /// The simulated city.
    pub fn city(&self) -> &City {
        &self.city
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Truth records produced since the last call (incidents first, then fault episodes as
    /// they end). Call again after the iterator is exhausted to get the last episodes.
    pub fn take_truth(&mut self) -> Vec<TruthRecord> {
        std::mem::take(&mut self.truth)
    }

    /// Runs the whole simulation in memory.
    pub fn generate(config: SimConfig) -> Result<(Vec<Message>, Vec<TruthRecord>)> {
        let mut sim = Simulation::new(config)?;
        let messages: Vec<Message> = sim.by_ref().collect();
        Ok((messages, sim.take_truth()))
    }

    fn tick(&mut self, t: DateTime<Utc>, i: usize) {
        let sensor = &self.city.sensors[i];
        let state = &mut self.states[i];
        let next = t + next_interval(sensor, state);
        self.ticks.push(Reverse((next, i)));
        let inc = &self.incidents[i];
        let cond = Conditions {
            congested: inc.active(IncidentKind::Congestion, t),
            full: inc.active(IncidentKind::ParkingFull, t),
        };
        let mut payload = reading(sensor, state, t, cond);
        if inc.active(IncidentKind::Outage, t) {
            // The sensor is off: no reading, no sequence number, no fault.
            return;
        }
        let seq = state.seq;
        state.seq += 1;
        let mut closed = Vec::new();
        let effect = self.injectors[i].apply(
            sensor,
            t,
            &mut payload,
            &self.config.rates,
            &self.scheduled[i],
            &mut closed,
        );
        self.truth
            .extend(closed.into_iter().map(TruthRecord::Fault));
        if effect.drop {
            return;
        }
        let msg = Message {
            topic: sensor.topic(),
            sensor: i,
            sensor_type: sensor.kind,
            seq,
            event_time: t,
            due: t,
            payload,
            truncate: effect.truncate,
        };
        if let Some(delay) = effect.delay {
            let due = t + delay;
            self.order += 1;
            self.held.insert((due, self.order), Message { due, ..msg });
        } else if effect.out_of_order {
            if let Some(prev) = self.swap[i].replace(msg) {
                self.ready.push_back(prev);
            }
        } else {
            if effect.duplicate {
                self.ready.push_back(msg.clone());
            }
            self.ready.push_back(msg);
            if let Some(prev) = self.swap[i].take() {
                self.ready.push_back(Message { due: t, ..prev });
            }
        }
    }

    fn finish(&mut self) {
        for s in &self.city.sensors {
            if let Some(r) = self.injectors[s.index].finish(s) {
                self.truth.push(TruthRecord::Fault(r));
            }
        }
        let end = self.config.end();
        for slot in &mut self.swap {
            if let Some(m) = slot.take() {
                self.order += 1;
                self.held
                    .insert((end, self.order), Message { due: end, ..m });
            }
        }
        self.ready
            .extend(std::mem::take(&mut self.held).into_values());
        self.finished = true;
    }
}

fn id_hint(city: &City, kind: SensorType) -> String {
    let ids: Vec<&str> = city
        .sensors
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.id.as_str())
        .take(4)
        .collect();
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (ids look like {} ...)", ids.join(", "))
    }
}

impl Iterator for Simulation {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(m);
            }
            if self.finished {
                return None;
            }
            let end = self.config.end();
            let gen = self
                .ticks
                .peek()
                .map(|Reverse((t, _))| *t)
                .filter(|t| *t < end);
            let release = self.held.first_key_value().map(|((t, _), _)| *t);
            match (gen, release) {
                (None, _) => self.finish(),
                (Some(g), Some(r)) if r <= g => {
                    if let Some((_, m)) = self.held.pop_first() {
                        self.ready.push_back(m);
                    }
                }
                (Some(_), _) => {
                    if let Some(Reverse((t, i))) = self.ticks.pop() {
                        self.tick(t, i);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultKind, DEFAULT_DELAY, DEFAULT_SKEW};
    use crate::time::parse_time;
    use std::collections::{BTreeSet, HashMap};

    fn base(seed: u64) -> Result<SimConfig> {
        Ok(SimConfig::new(
            CityConfig {
                sensors: 6,
                areas: 3,
                types: SensorType::ALL.to_vec(),
            },
            parse_time("2014-08-01T00:00:00")?,
            Duration::days(1),
            seed,
        ))
    }

    fn incident(
        kind: IncidentKind,
        subject: &str,
        sensor_type: SensorType,
        start: &str,
        end: &str,
    ) -> Result<Incident> {
        Ok(Incident {
            kind,
            subject: subject.into(),
            sensor_type,
            start: parse_time(start)?,
            end: parse_time(end)?,
            origin: "test".into(),
        })
    }

    fn congested(m: &Message) -> bool {
        let f = m.payload.fields();
        let speed = f.and_then(|f| f.get_f64("avgSpeed")).unwrap_or(f64::MAX);
        let count = f.and_then(|f| f.get_f64("vehicleCount")).unwrap_or(0.0);
        speed <= 35.0 && count >= 10.0
    }

    fn scenario(seed: u64) -> Result<SimConfig> {
        let mut c = base(seed)?;
        c.incidents.push(incident(
            IncidentKind::Congestion,
            "area-2",
            SensorType::Traffic,
            "2014-08-01T08:00:00",
            "2014-08-01T09:30:00",
        )?);
        c.incidents.push(incident(
            IncidentKind::ParkingFull,
            "BRUUNS",
            SensorType::Parking,
            "2014-08-01T12:00:00",
            "2014-08-01T15:00:00",
        )?);
        c.incidents.push(incident(
            IncidentKind::Outage,
            "158324",
            SensorType::Traffic,
            "2014-08-01T03:00:00",
            "2014-08-01T04:00:00",
        )?);
        for kind in FaultKind::ALL {
            c.rates.push(crate::faults::FaultRate::new(kind, 0.004));
        }
        Ok(c)
    }

    #[test]
    fn same_seed_same_messages_and_truth() -> Result<()> {
        let (a, ta) = Simulation::generate(scenario(5)?)?;
        let (b, tb) = Simulation::generate(scenario(5)?)?;
        let (c, _) = Simulation::generate(scenario(6)?)?;
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        assert_ne!(a, c);
        let bytes = |ms: &[Message]| ms.iter().map(|m| m.encode(None)).collect::<Vec<_>>();
        assert_eq!(bytes(&a), bytes(&b));
        Ok(())
    }

    #[test]
    fn traffic_outside_incidents_never_meets_the_congestion_condition() -> Result<()> {
        for seed in 0..4 {
            let mut c = scenario(seed)?;
            c.rates.clear();
            c.city.sensors = 20;
            let (msgs, _) = Simulation::generate(c.clone())?;
            let inc = &c.incidents[0];
            let mut inside = 0;
            for m in msgs.iter().filter(|m| m.sensor_type == SensorType::Traffic) {
                let sim_area = m.sensor % c.city.areas == 1;
                let in_incident = sim_area && inc.start <= m.event_time && m.event_time < inc.end;
                assert_eq!(congested(m), in_incident, "seed {seed}: {m:?}");
                inside += usize::from(in_incident);
            }
            assert!(inside > 0);
        }
        Ok(())
    }

    #[test]
    fn parking_is_full_only_during_the_incident() -> Result<()> {
        let mut c = scenario(1)?;
        c.rates.clear();
        let (msgs, _) = Simulation::generate(c.clone())?;
        let inc = &c.incidents[1];
        for m in msgs.iter().filter(|m| m.sensor_type == SensorType::Parking) {
            let f = m.payload.fields().cloned().unwrap_or_default();
            let occ =
                f.get_f64("vehiclecount").unwrap_or(0.0) / f.get_f64("totalspaces").unwrap_or(1.0);
            let during =
                m.topic.ends_with("/BRUUNS") && inc.start <= m.event_time && m.event_time < inc.end;
            if during {
                assert!(occ >= 0.9, "{occ}");
            } else {
                assert!(occ < 0.85, "{occ}");
            }
        }
        Ok(())
    }

    /// Everything the truth claims can be seen in the generated stream, and vice versa.
    #[test]
    fn ground_truth_matches_what_was_generated() -> Result<()> {
        let c = scenario(11)?;
        let (msgs, truth) = Simulation::generate(c.clone())?;
        let sim = Simulation::new(c.clone())?;
        let city = sim.city();
        let by_topic = |kind: &str, id: &str| format!("city/{kind}/{id}");
        let mut faults_seen = BTreeSet::new();
        for rec in &truth {
            match rec {
                TruthRecord::Incident(i) if i.kind == "outage" => {
                    let topic = by_topic(&i.sensor_type, &i.subject);
                    assert!(!msgs.iter().any(|m| m.topic == topic
                        && i.start <= m.event_time
                        && m.event_time < i.end));
                    assert!(msgs.iter().any(|m| m.topic == topic));
                }
                TruthRecord::Incident(i) => {
                    assert!(!i.sensors.is_empty(), "{i:?}");
                }
                TruthRecord::Fault(f) => {
                    faults_seen.insert(f.kind.clone());
                    let topic = by_topic(&f.sensor_type, &f.sensor);
                    let affected: Vec<&Message> = msgs
                        .iter()
                        .filter(|m| {
                            m.topic == topic && f.start <= m.event_time && m.event_time <= f.end
                        })
                        .collect();
                    match f.kind.as_str() {
                        "dropout" => assert!(affected.is_empty(), "{f:?}"),
                        "duplicate" => assert_eq!(affected.len() as u64, 2 * f.messages, "{f:?}"),
                        "malformed" => {
                            assert_eq!(affected.len() as u64, f.messages);
                            for m in affected {
                                assert!(serde_json::from_slice::<serde_json::Value>(
                                    &m.encode(None)
                                )
                                .is_err());
                            }
                        }
                        "late" => {
                            for m in affected {
                                assert_eq!(m.due - m.event_time, DEFAULT_DELAY);
                            }
                        }
                        "missing_field" => {
                            let field = f.field.clone().unwrap_or_default();
                            assert!(affected.iter().all(|m| m
                                .payload
                                .fields()
                                .is_some_and(|x| x.get(&field).is_none())));
                        }
                        "clock_skew" => {
                            let kind: SensorType = f.sensor_type.parse()?;
                            for m in affected {
                                let shown = m
                                    .payload
                                    .fields()
                                    .and_then(|x| x.get(kind.time_field()).cloned());
                                let skewed = kind.time_value(
                                    m.event_time + Duration::seconds(f.skew_s.unwrap_or(0)),
                                );
                                assert_eq!(shown, Some(skewed));
                            }
                        }
                        _ => assert_eq!(affected.len() as u64, f.messages, "{f:?}"),
                    }
                }
            }
        }
        assert!(faults_seen.len() >= 6, "{faults_seen:?}");
        // Sequence numbers: one per reading, gaps only where a dropout was recorded.
        let mut seqs: HashMap<&str, BTreeSet<u64>> = HashMap::new();
        for m in &msgs {
            seqs.entry(m.topic.as_str()).or_default().insert(m.seq);
        }
        let dropped: u64 = truth
            .iter()
            .filter_map(|r| match r {
                TruthRecord::Fault(f) if f.kind == "dropout" => Some(f.messages),
                _ => None,
            })
            .sum();
        let gaps: u64 = seqs
            .values()
            .map(|s| s.last().map_or(0, |l| l + 1) - s.len() as u64)
            .sum();
        // A dropout at the very end of a stream leaves no visible gap, hence <=.
        assert!(gaps <= dropped && dropped > 0);
        assert_eq!(city.sensors.len(), 30);
        Ok(())
    }

    #[test]
    fn messages_come_out_in_due_order_and_late_ones_after_their_delay() -> Result<()> {
        let mut c = base(2)?;
        c.faults.push(FaultPlan {
            kind: FaultKind::Late,
            sensor_type: SensorType::Traffic,
            sensor: Some("158325".into()),
            area: None,
            start: parse_time("2014-08-01T10:00:00")?,
            end: parse_time("2014-08-01T10:05:00")?,
            delay: Duration::minutes(20),
            skew: DEFAULT_SKEW,
            origin: "test".into(),
        });
        let (msgs, truth) = Simulation::generate(c)?;
        assert!(msgs.windows(2).all(|w| w[0].due <= w[1].due));
        let late: Vec<_> = msgs.iter().filter(|m| m.due != m.event_time).collect();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].due - late[0].event_time, Duration::minutes(20));
        assert!(
            matches!(&truth[..], [TruthRecord::Fault(f)] if f.kind == "late" && f.delay_s == Some(1200))
        );
        Ok(())
    }

    #[test]
    fn unknown_names_in_a_scenario_are_errors() -> Result<()> {
        let mut c = base(1)?;
        c.incidents.push(incident(
            IncidentKind::Congestion,
            "area-9",
            SensorType::Traffic,
            "2014-08-01T08:00:00",
            "2014-08-01T09:00:00",
        )?);
        let err = Simulation::new(c)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("area-9") && err.contains("area-3"), "{err}");
        Ok(())
    }
}

//! `AdaptiveSax`: SensorSAX per sensor and field, CityPulse's adaptive variant of SAX.
//!
//! SensorSAX needs each sensor's values in event-time order, but records arrive in any order
//! within the allowed lateness. So the operator buffers them by event time and feeds the state
//! machines ([`aqyl_core::windows::sax::SensorSax`]) only once the frontier has passed their time,
//! when no earlier record can come. A sensor silent (in event time) past its type's
//! `silence_horizon` has its open window flushed and its state released, which bounds memory
//! when sensors come and go; the end of input flushes everything.
//!
//! Its state (the buffer and the state machines) is registered as `sax/sensor`.

use crate::ordered::EventTimeBuffer;
use crate::state::OperatorStates;
use crate::SharedRegistry;
use aqyl_core::ingest::descriptor::SensorSaxSpec;
use aqyl_core::metrics::Metrics;
use aqyl_core::windows::sax::{SaxEmission, SensorSax};
use aqyl_core::{Aggregate as AggregateRecord, Observation, Scope};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// One sensor field's state machine and the event time of its latest value.
#[derive(Serialize, Deserialize)]
struct Machine {
    sax: SensorSax,
    last_seen: u64,
}

/// (sensor type, sensor id, field).
type Key = (Arc<str>, Arc<str>, Arc<str>);

/// What an `AdaptiveSax` keeps between activations (and in checkpoints).
#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Observations waiting for the frontier.
    pending: EventTimeBuffer,
    /// The state machines, per sensor and field.
    machines: HashMap<Key, Machine>,
}

fn record(key: &Key, spec: &SensorSaxSpec, e: SaxEmission) -> AggregateRecord {
    AggregateRecord {
        sensor_type: key.0.clone(),
        scope: Scope::Sensor,
        subject: key.1.to_string(),
        field: key.2.clone(),
        window: spec.label.clone(),
        start: e.start_ms,
        end: e.end_ms,
        stats: e.stats,
        sax: Some(e.word),
        sax_code: Some(e.code),
    }
}

/// SensorSAX words of the observations whose sensor type has `[sensor_sax]`.
pub trait AdaptiveSax<'scope> {
    /// Emits one aggregate (window tag `sensorsax`, start/end = first/last value's event
    /// time, statistics, `sax`, `sax_code`) per adaptive window. Its state is registered in
    /// `states` as `sax/sensor`.
    fn adaptive_sax(
        self,
        registry: SharedRegistry,
        metrics: Arc<Metrics>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, AggregateRecord>;
}

impl<'scope> AdaptiveSax<'scope> for StreamVec<'scope, u64, Observation> {
    fn adaptive_sax(
        self,
        registry: SharedRegistry,
        metrics: Arc<Metrics>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, AggregateRecord> {
        let state = states.register::<State>("sax/sensor");
        let exchange =
            Exchange::new(|o: &Observation| crate::stable_hash(&[&o.sensor_type, &o.sensor_id]));
        self.unary_frontier::<CapacityContainerBuilder<Vec<AggregateRecord>>, _, _, _>(
            states.counted(exchange),
            "AdaptiveSax",
            move |capability, _info| {
                // Follows the input frontier; after a restore it starts from 0 again and
                // catches up at the first activation.
                let mut cap = Some(capability);
                move |(input, frontier), output| {
                    let mut state = state.borrow_mut();
                    let State { pending, machines } = &mut *state;
                    let current = registry.load();
                    let registry = &**current;
                    input.for_each(|_cap, data| {
                        for obs in data.drain(..) {
                            if registry
                                .get(&obs.sensor_type)
                                .is_some_and(|t| t.sensor_sax.is_some())
                            {
                                pending.push(obs);
                            }
                        }
                    });
                    if cap.is_none() {
                        return;
                    }
                    let now = frontier.frontier().iter().min().copied();
                    let mut out = Vec::new();
                    // Feed, in event-time order, everything the frontier has passed.
                    while let Some((_, same_time)) = pending.next_ready(now) {
                        for obs in same_time {
                            let Some(spec) = registry
                                .get(&obs.sensor_type)
                                .and_then(|t| t.sensor_sax.as_ref())
                            else {
                                continue;
                            };
                            for (field, value) in &obs.fields {
                                if !spec.applies_to(field) {
                                    continue;
                                }
                                let key: Key = (
                                    obs.sensor_type.clone(),
                                    obs.sensor_id.clone(),
                                    field.clone(),
                                );
                                let machine = match machines.get_mut(&key) {
                                    Some(m) => m,
                                    None => {
                                        let Ok(sax) = SensorSax::new(
                                            spec.params,
                                            spec.min_window_ms,
                                            spec.max_window_ms,
                                            spec.sensitivity,
                                        ) else {
                                            continue;
                                        };
                                        machines
                                            .entry(key.clone())
                                            .or_insert(Machine { sax, last_seen: 0 })
                                    }
                                };
                                machine.last_seen = obs.event_time;
                                if let Some(e) = machine.sax.push(obs.event_time, *value) {
                                    out.push(record(&key, spec, e));
                                }
                            }
                        }
                    }
                    // Release sensors silent past their horizon (all of them at the end).
                    machines.retain(|key, m| {
                        let Some(spec) = registry.get(&key.0).and_then(|t| t.sensor_sax.as_ref())
                        else {
                            return false;
                        };
                        let silent = now.is_none_or(|n| {
                            m.last_seen.saturating_add(spec.silence_horizon_ms) < n
                        });
                        if silent {
                            if let Some(e) = m.sax.flush() {
                                out.push(record(key, spec, e));
                            }
                        }
                        !silent
                    });
                    metrics.windows_closed.fetch_add(out.len() as u64, Relaxed);
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{build, same_across_a_checkpoint, Step};
    use aqyl_core::ingest::decode::Registry;
    use aqyl_core::ingest::descriptor::SensorType;
    use std::path::Path;

    const MIN: u64 = 60_000;

    fn obs(sensor: &str, minute: u64, speed: f64) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: sensor.into(),
            area: None,
            event_time: minute * MIN,
            received_at: 0,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), speed)],
            arrival: Default::default(),
        }
    }

    #[test]
    fn sensor_sax_goes_on_mid_window_after_a_checkpoint() {
        let ty = SensorType::from_toml(
            Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n\
             [sensor_sax]\nmin_window = \"5m\"\nmax_window = \"10m\"\nsensitivity = 5.0\n",
        )
        .unwrap();
        let registry = crate::shared(Registry::new(vec![ty]));
        let op = build(move |s, states| {
            s.adaptive_sax(registry.clone(), Arc::new(Metrics::default()), states)
        });
        // s1 is calm, then turns volatile at minute 13; s2 reports rarely. At the cut (input at
        // minute 7) s1's window [0, 6] and s2's [2, 2] are open, and minute 9 is buffered.
        let calm = [50.0, 51.0, 49.0, 50.0, 52.0, 50.0, 51.0, 50.0, 49.0, 51.0];
        let mut first: Vec<Observation> = (0..7).map(|m| obs("s1", m, calm[m as usize])).collect();
        first.push(obs("s1", 9, 50.0));
        first.push(obs("s2", 2, 30.0));
        let mut second: Vec<Observation> = vec![obs("s1", 7, 50.0), obs("s1", 8, 51.0)];
        second.extend((10..13).map(|m| obs("s1", m, calm[(m % 10) as usize])));
        second.extend([
            obs("s1", 13, 90.0),
            obs("s1", 14, 20.0),
            obs("s2", 15, 31.0),
        ]);
        second.extend((15..30).map(|m| obs("s1", m, 40.0 + (m % 3) as f64)));
        let out = same_across_a_checkpoint(
            op,
            vec![Step::Send(first), Step::Advance(7 * MIN)],
            vec![Step::Send(second), Step::Advance(40 * MIN)],
        );
        let windows: Vec<(&str, u64, u64, u64)> = out
            .iter()
            .map(|a| {
                (
                    a.subject.as_str(),
                    a.start / MIN,
                    a.end / MIN,
                    a.stats.count,
                )
            })
            .collect();
        // s1's first window spans the cut (max window: minute 10 starts the next one).
        assert!(windows.contains(&("s1", 0, 9, 10)), "{windows:?}");
        assert!(windows.contains(&("s2", 2, 2, 1)), "{windows:?}");
    }
}

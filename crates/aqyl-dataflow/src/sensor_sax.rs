//! `AdaptiveSax`: SensorSAX per sensor and field, CityPulse's adaptive variant of SAX.
//!
//! SensorSAX needs each sensor's values in event-time order, but records arrive in any order
//! within the allowed lateness. So the operator buffers them by event time and feeds the state
//! machines ([`aqyl_core::sax::SensorSax`]) only once the frontier has passed their time,
//! when no earlier record can come. A sensor silent (in event time) past its type's
//! `silence_horizon` has its open window flushed and its state released, which bounds memory
//! when sensors come and go; the end of input flushes everything.

use crate::SharedRegistry;
use aqyl_core::descriptor::SensorSaxSpec;
use aqyl_core::metrics::Metrics;
use aqyl_core::sax::{SaxEmission, SensorSax};
use aqyl_core::{Aggregate as AggregateRecord, Observation, Scope};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// One sensor field's state machine and the event time of its latest value.
struct Machine {
    sax: SensorSax,
    last_seen: u64,
}

type Key = (Arc<str>, String, Arc<str>);

fn record(key: &Key, spec: &SensorSaxSpec, e: SaxEmission) -> AggregateRecord {
    AggregateRecord {
        sensor_type: key.0.clone(),
        scope: Scope::Sensor,
        subject: key.1.clone(),
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
    /// time, statistics, `sax`, `sax_code`) per adaptive window.
    fn adaptive_sax(
        self,
        registry: SharedRegistry,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, AggregateRecord>;
}

impl<'scope> AdaptiveSax<'scope> for StreamVec<'scope, u64, Observation> {
    fn adaptive_sax(
        self,
        registry: SharedRegistry,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, AggregateRecord> {
        let exchange =
            Exchange::new(|o: &Observation| crate::stable_hash(&[&o.sensor_type, &o.sensor_id]));
        self.unary_frontier::<CapacityContainerBuilder<Vec<AggregateRecord>>, _, _, _>(
            exchange,
            "AdaptiveSax",
            move |capability, _info| {
                let mut cap = Some(capability);
                let mut pending = crate::ordered::EventTimeBuffer::default();
                let mut machines: HashMap<Key, Machine> = HashMap::new();
                move |(input, frontier), output| {
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

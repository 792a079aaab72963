//! `Aggregate`: per sensor and field, event-time tumbling windows closed by the frontier.
//!
//! Observations are exchanged by sensor, so all of a sensor's values meet on one worker. A
//! window `[start, end)` stays open while the input frontier could still deliver a record
//! with an earlier event time; records are sent at the watermark, which is never later than
//! their event time, so once the frontier reaches `end` no record for the window can come.
//! The operator holds a capability at `end` per open window and emits there.

use aqyl_core::metrics::Metrics;
use aqyl_core::window::{Tumbling, WindowStats};
use aqyl_core::{Aggregate as AggregateRecord, Observation};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// Values of one window: sensor type → sensor id → (field, values). Nested maps let an
/// observation be filed by borrowed names, so the hot path clones nothing but `Arc`s.
type Groups = HashMap<Arc<str>, HashMap<String, Vec<(Arc<str>, Vec<f64>)>>>;

/// Windowed statistics of a stream of observations.
pub trait Aggregate<'scope> {
    /// Tumbling windows of `window`, labelled `label` in the output; counts closed windows.
    fn aggregate(
        self,
        window: Tumbling,
        label: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, AggregateRecord>;
}

impl<'scope> Aggregate<'scope> for StreamVec<'scope, u64, Observation> {
    fn aggregate(
        self,
        window: Tumbling,
        label: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, AggregateRecord> {
        let exchange =
            Exchange::new(|o: &Observation| crate::stable_hash(&[&o.sensor_type, &o.sensor_id]));
        self.unary_frontier::<CapacityContainerBuilder<Vec<AggregateRecord>>, _, _, _>(
            exchange,
            "Aggregate",
            move |_capability, _info| {
                let mut open: BTreeMap<u64, (Capability<u64>, Groups)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for obs in data.drain(..) {
                            let (_, end) = window.assign(obs.event_time);
                            let (_, groups) = open.entry(end).or_insert_with(|| {
                                (cap.delayed(&end, output.output_index()), HashMap::new())
                            });
                            let by_id = match groups.get_mut(&obs.sensor_type) {
                                Some(m) => m,
                                None => groups.entry(obs.sensor_type.clone()).or_default(),
                            };
                            let fields = match by_id.get_mut(obs.sensor_id.as_str()) {
                                Some(f) => f,
                                None => by_id.entry(obs.sensor_id).or_default(),
                            };
                            for (field, value) in obs.fields {
                                match fields.iter_mut().find(|(f, _)| *f == field) {
                                    Some((_, values)) => values.push(value),
                                    None => fields.push((field, vec![value])),
                                }
                            }
                        }
                    });
                    while let Some(entry) = open.first_entry() {
                        if frontier.less_than(entry.key()) {
                            break;
                        }
                        let (end, (cap, groups)) = entry.remove_entry();
                        let mut session = output.session(&cap);
                        for (sensor_type, by_id) in groups {
                            for (sensor_id, fields) in by_id {
                                for (field, mut values) in fields {
                                    if let Some(stats) = WindowStats::compute(&mut values) {
                                        metrics.windows_closed.fetch_add(1, Relaxed);
                                        session.give(AggregateRecord {
                                            sensor_type: sensor_type.clone(),
                                            sensor_id: sensor_id.clone(),
                                            field,
                                            window: label.clone(),
                                            start: end - window.size_ms(),
                                            end,
                                            stats,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            },
        )
    }
}

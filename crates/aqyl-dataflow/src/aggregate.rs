//! `Aggregate`: per sensor (or per area) and field, event-time windows (tumbling or sliding,
//! several sizes per sensor type) closed by the frontier, with statistics and optional SAX.
//!
//! Observations are exchanged by subject (sensor, or area for roll-ups), so all of a
//! subject's values meet on one worker. A
//! window `[start, end)` stays open while the input frontier could still deliver a record
//! with an earlier event time; records are sent at the watermark, which is never later than
//! their event time, so once the frontier reaches `end` no record for the window can come.
//! The operator holds one capability per open window end and emits there.

use aqyl_core::decode::Registry;
use aqyl_core::metrics::Metrics;
use aqyl_core::sax::{sax_code, sax_word};
use aqyl_core::window::{WindowSpec, WindowStats};
use aqyl_core::{Aggregate as AggregateRecord, Observation, Scope};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// The values of one field of one sensor in one window: (event time, value).
struct Series {
    field: Arc<str>,
    /// Index of the window spec among the sensor type's windows.
    spec: usize,
    values: Vec<(u64, f64)>,
}

/// The subject an observation is aggregated under in `scope`; `None` leaves it out (an
/// observation without an area has no area roll-up).
fn subject(obs: &Observation, scope: Scope) -> Option<&str> {
    match scope {
        Scope::Sensor => Some(&obs.sensor_id),
        Scope::Area => obs.area.as_deref(),
    }
}

/// Values of the windows ending at one instant: sensor type → subject → series. Nested maps
/// let an observation be filed by borrowed names, so the hot path clones nothing but `Arc`s.
type Groups = HashMap<Arc<str>, HashMap<String, Vec<Series>>>;

/// The windows of a sensor type: its own, or the pipeline's default.
fn specs_of<'a>(
    registry: &'a Registry,
    default: &'a [WindowSpec],
    sensor_type: &str,
) -> &'a [WindowSpec] {
    match registry.get(sensor_type) {
        Some(t) if !t.windows.is_empty() => &t.windows,
        _ => default,
    }
}

/// The statistics (and SAX word) of one closed series.
fn close(series: &mut Series, spec: &WindowSpec) -> Option<(WindowStats, Option<(String, u64)>)> {
    // Time order (ties by value) makes SAX well defined and the output order-independent.
    series
        .values
        .sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let in_time_order: Vec<f64> = series.values.iter().map(|v| v.1).collect();
    let sax = spec.sax.as_ref().and_then(|params| {
        let word = sax_word(&in_time_order, params)?;
        let code = sax_code(&word, params.alphabet()).ok()?;
        Some((word, code))
    });
    let mut sorted = in_time_order;
    WindowStats::compute(&mut sorted).map(|stats| (stats, sax))
}

/// Windowed statistics of a stream of observations.
pub trait Aggregate<'scope> {
    /// Computes every window of each observation's sensor type (`default` for types that
    /// declare none) per subject of `scope`; counts closed windows in `metrics`.
    fn aggregate(
        self,
        scope: Scope,
        registry: Arc<Registry>,
        default: WindowSpec,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, AggregateRecord>;
}

impl<'scope> Aggregate<'scope> for StreamVec<'scope, u64, Observation> {
    fn aggregate(
        self,
        scope: Scope,
        registry: Arc<Registry>,
        default: WindowSpec,
        metrics: Arc<Metrics>,
    ) -> StreamVec<'scope, u64, AggregateRecord> {
        let exchange = Exchange::new(move |o: &Observation| {
            crate::stable_hash(&[&o.sensor_type, subject(o, scope).unwrap_or("")])
        });
        let default = vec![default];
        self.unary_frontier::<CapacityContainerBuilder<Vec<AggregateRecord>>, _, _, _>(
            exchange,
            "Aggregate",
            move |_capability, _info| {
                let mut open: BTreeMap<u64, (Capability<u64>, Groups)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for obs in data.drain(..) {
                            let Some(subject) = subject(&obs, scope) else {
                                continue;
                            };
                            let specs = specs_of(&registry, &default, &obs.sensor_type);
                            for (index, spec) in specs.iter().enumerate() {
                                for end in spec.ends(obs.event_time) {
                                    let (_, groups) = open.entry(end).or_insert_with(|| {
                                        (cap.delayed(&end, output.output_index()), HashMap::new())
                                    });
                                    let by_id = match groups.get_mut(&obs.sensor_type) {
                                        Some(m) => m,
                                        None => groups.entry(obs.sensor_type.clone()).or_default(),
                                    };
                                    let series = match by_id.get_mut(subject) {
                                        Some(s) => s,
                                        None => by_id.entry(subject.to_string()).or_default(),
                                    };
                                    for (field, value) in &obs.fields {
                                        if !spec.applies_to(field) {
                                            continue;
                                        }
                                        let point = (obs.event_time, *value);
                                        match series
                                            .iter_mut()
                                            .find(|s| s.spec == index && s.field == *field)
                                        {
                                            Some(s) => s.values.push(point),
                                            None => series.push(Series {
                                                field: field.clone(),
                                                spec: index,
                                                values: vec![point],
                                            }),
                                        }
                                    }
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
                            let specs = specs_of(&registry, &default, &sensor_type);
                            for (subject, all) in by_id {
                                for mut series in all {
                                    let Some(spec) = specs.get(series.spec) else {
                                        continue;
                                    };
                                    let Some((stats, sax)) = close(&mut series, spec) else {
                                        continue;
                                    };
                                    metrics.windows_closed.fetch_add(1, Relaxed);
                                    let (sax, sax_code) =
                                        sax.map_or((None, None), |(w, c)| (Some(w), Some(c)));
                                    session.give(AggregateRecord {
                                        sensor_type: sensor_type.clone(),
                                        scope,
                                        subject: subject.clone(),
                                        field: series.field,
                                        window: spec.label().clone(),
                                        start: end - spec.size_ms(),
                                        end,
                                        stats,
                                        sax,
                                        sax_code,
                                    });
                                }
                            }
                        }
                    }
                }
            },
        )
    }
}

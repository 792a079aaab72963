//! `Aggregate`: per sensor (or per area) and field, event-time windows (tumbling or sliding,
//! several sizes per sensor type) closed by the frontier, with statistics and optional SAX.
//!
//! Observations are exchanged by subject (sensor, or area for roll-ups), so all of a
//! subject's values meet on one worker. A
//! window `[start, end)` stays open while the input frontier could still deliver a record
//! with an earlier event time; records are sent at the watermark, which is never later than
//! their event time, so once the frontier reaches `end` no record for the window can come.
//! The operator holds one capability per open window end and emits there.

use crate::state::OperatorStates;
use crate::SharedRegistry;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::metrics::Metrics;
use aqyl_core::windows::sax::{sax_code, sax_word};
use aqyl_core::windows::window::{WindowSpec, WindowStats};
use aqyl_core::{Aggregate as AggregateRecord, Observation, Scope};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// The values of one field of one sensor in one window: (event time, value).
#[derive(Serialize, Deserialize)]
struct Series {
    field: Arc<str>,
    /// The window it belongs to (kept, so a descriptor reload cannot relabel open windows).
    spec: WindowSpec,
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

/// What an `Aggregate` keeps between activations (and in checkpoints).
#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Open windows by end.
    open: BTreeMap<u64, Groups>,
    /// Closed windows kept for late updates (only with an update horizon), by end.
    closed: BTreeMap<u64, Groups>,
}

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
fn close(
    values: &mut [(u64, f64)],
    spec: &WindowSpec,
) -> Option<(WindowStats, Option<(String, u64)>)> {
    // Time order (ties by value) makes SAX well defined and the output order-independent.
    values.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let in_time_order: Vec<f64> = values.iter().map(|v| v.1).collect();
    let sax = spec.sax.as_ref().and_then(|params| {
        let word = sax_word(&in_time_order, params)?;
        let code = sax_code(&word, params.alphabet()).ok()?;
        Some((word, code))
    });
    let mut sorted = in_time_order;
    WindowStats::compute(&mut sorted).map(|stats| (stats, sax))
}

/// Files the fields of `obs` that `spec` covers into `groups`.
fn file(groups: &mut Groups, obs: &Observation, subject: &str, spec: &WindowSpec) {
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
            .find(|s| s.field == *field && s.spec == *spec)
        {
            Some(s) => s.values.push(point),
            None => series.push(Series {
                field: field.clone(),
                spec: spec.clone(),
                values: vec![point],
            }),
        }
    }
}

/// The aggregate record of one closed series, or `None` for an empty one.
fn record(
    sensor_type: &Arc<str>,
    scope: Scope,
    subject: &str,
    series: &mut Series,
    end: u64,
) -> Option<AggregateRecord> {
    let Series {
        field,
        spec,
        values,
    } = series;
    let (stats, sax) = close(values, spec)?;
    let (sax, sax_code) = sax.map_or((None, None), |(w, c)| (Some(w), Some(c)));
    Some(AggregateRecord {
        sensor_type: sensor_type.clone(),
        scope,
        subject: subject.to_string(),
        field: field.clone(),
        window: spec.label().clone(),
        start: end - spec.size_ms(),
        end,
        stats,
        sax,
        sax_code,
    })
}

/// Windowed statistics of a stream of observations.
pub trait Aggregate<'scope> {
    /// Computes every window of each observation's sensor type (`default` for types that
    /// declare none) per subject of `scope`; counts closed windows in `metrics`. With
    /// `update_horizon_ms`, closed windows are kept that long, and a late record for one of
    /// them re-emits it corrected (same series and end, so the store overwrites it). Its
    /// state is registered in `states` as `aggregate/<scope>`.
    fn aggregate(
        self,
        scope: Scope,
        registry: SharedRegistry,
        default: WindowSpec,
        update_horizon_ms: Option<u64>,
        metrics: Arc<Metrics>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, AggregateRecord>;
}

impl<'scope> Aggregate<'scope> for StreamVec<'scope, u64, Observation> {
    fn aggregate(
        self,
        scope: Scope,
        shared_registry: SharedRegistry,
        default: WindowSpec,
        update_horizon_ms: Option<u64>,
        metrics: Arc<Metrics>,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, AggregateRecord> {
        let state = states.register::<State>(&format!("aggregate/{}", scope.tag()));
        let exchange = Exchange::new(move |o: &Observation| {
            crate::stable_hash(&[&o.sensor_type, subject(o, scope).unwrap_or("")])
        });
        let default = vec![default];
        self.unary_frontier::<CapacityContainerBuilder<Vec<AggregateRecord>>, _, _, _>(
            states.counted(exchange),
            "Aggregate",
            move |capability, _info| {
                // One capability per open window end (restored windows get theirs here).
                let mut caps: BTreeMap<u64, Capability<u64>> = (state.borrow().open.keys())
                    .map(|end| (*end, capability.delayed(end)))
                    .collect();
                move |(input, frontier), output| {
                    let mut state = state.borrow_mut();
                    let State { open, closed } = &mut *state;
                    // The current sensor types (descriptors may be reloaded while running).
                    let registry = shared_registry.load();
                    input.for_each(|cap, data| {
                        // Records are sent at the watermark: a totally ordered, single time.
                        let Some(&at) = cap.least() else { return };
                        for obs in data.drain(..) {
                            let Some(subject) = subject(&obs, scope) else {
                                continue;
                            };
                            let specs = specs_of(&registry, &default, &obs.sensor_type);
                            for spec in specs {
                                for end in spec.ends(obs.event_time) {
                                    if let Some(groups) = open.get_mut(&end) {
                                        file(groups, &obs, subject, spec);
                                    } else if end > at {
                                        caps.insert(end, cap.delayed(&end, output.output_index()));
                                        let groups = open.entry(end).or_default();
                                        file(groups, &obs, subject, spec);
                                    } else if update_horizon_ms.is_some() {
                                        // A late record for a closed window: correct it and
                                        // emit it again, now.
                                        let groups = closed.entry(end).or_default();
                                        file(groups, &obs, subject, spec);
                                        let Some(series) = groups
                                            .get_mut(&obs.sensor_type)
                                            .and_then(|m| m.get_mut(subject))
                                        else {
                                            continue;
                                        };
                                        let now = cap.delayed(&at, output.output_index());
                                        let mut session = output.session(&now);
                                        for s in series.iter_mut().filter(|s| {
                                            s.spec == *spec
                                                && obs.fields.iter().any(|f| f.0 == s.field)
                                        }) {
                                            if let Some(r) =
                                                record(&obs.sensor_type, scope, subject, s, end)
                                            {
                                                session.give(r);
                                            }
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
                        let (end, mut groups) = entry.remove_entry();
                        let Some(cap) = caps.remove(&end) else {
                            continue;
                        };
                        let mut session = output.session(&cap);
                        for (sensor_type, by_id) in groups.iter_mut() {
                            for (subject, all) in by_id.iter_mut() {
                                for series in all.iter_mut() {
                                    if let Some(r) =
                                        record(sensor_type, scope, subject, series, end)
                                    {
                                        metrics.windows_closed.fetch_add(1, Relaxed);
                                        session.give(r);
                                    }
                                }
                            }
                        }
                        if update_horizon_ms.is_some() {
                            closed.insert(end, groups);
                        }
                    }
                    if let Some(horizon) = update_horizon_ms {
                        while let Some(entry) = closed.first_entry() {
                            if frontier.less_than(&entry.key().saturating_add(horizon)) {
                                break;
                            }
                            entry.remove();
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;
    use timely::dataflow::operators::{Inspect, Probe};
    use timely::dataflow::{InputHandleVec, ProbeHandle};

    fn obs(t: u64, v: f64) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: "s1".into(),
            area: None,
            event_time: t,
            received_at: 0,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), v)],
            arrival: Default::default(),
        }
    }

    /// Drives the operator by hand: a window closes, then a late record for it arrives.
    fn run(update_horizon_ms: Option<u64>) -> Vec<(u64, AggregateRecord)> {
        timely::execute_directly(move |worker| {
            let seen = Rc::new(RefCell::new(Vec::new()));
            let mut input = InputHandleVec::<u64, Observation>::new();
            let probe = ProbeHandle::new();
            let registry = crate::shared(Registry::default());
            let default = WindowSpec::tumbling(Duration::from_secs(300));
            let sink = seen.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                input
                    .to_stream(scope)
                    .aggregate(
                        Scope::Sensor,
                        registry,
                        default,
                        update_horizon_ms,
                        Arc::new(Metrics::default()),
                        &OperatorStates::default(),
                    )
                    .inspect_core(move |event| {
                        if let Ok((stamp, data)) = event {
                            let t = stamp.least().copied().unwrap_or_default();
                            sink.borrow_mut()
                                .extend(data.iter().map(|a| (t, a.clone())));
                        }
                    })
                    .probe_with(&probe);
            });
            input.send(obs(1_000, 10.0));
            input.send(obs(2_000, 20.0));
            input.advance_to(400_000); // the window [0, 300 000) closes
            while probe.less_than(input.time()) {
                worker.step();
            }
            input.send(obs(3_000, 60.0)); // late: its window has closed
            input.advance_to(500_000);
            while probe.less_than(input.time()) {
                worker.step();
            }
            let got = seen.borrow().clone();
            got
        })
    }

    #[test]
    fn a_late_record_re_emits_its_closed_window_corrected() {
        let got = run(Some(3_600_000));
        let means: Vec<(u64, u64, f64)> =
            got.iter().map(|(t, a)| (*t, a.end, a.stats.mean)).collect();
        // First at the window end, then again (same end, so the store overwrites) at the
        // time the late record came in, with the late value included: (10 + 20 + 60) / 3.
        assert_eq!(
            means,
            vec![(300_000, 300_000, 15.0), (400_000, 300_000, 30.0)]
        );
    }

    #[test]
    fn without_a_horizon_closed_windows_are_not_kept() {
        let got = run(None);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.stats.count, 2);
    }
}

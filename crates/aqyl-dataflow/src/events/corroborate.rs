//! `Corroborate`: confirms incidents under way with reports near them in space and event time
//! (the `[[corroborate]]` sections of the rule files), giving an `update` of the incident
//! whose values carry `corroborated: true`, the report's id and its distance
//! (`events/corroborate`).
//!
//! Reports and incidents are few (people report by hand, incidents are rare), so both go to
//! one worker, which keeps the reports of the last `within` of event time and the incidents
//! until they end (both bounded, see [`aqyl_core::rules::corroborate`]). An incident's position
//! is its sensor's in the sensor registry; area incidents have none and are not confirmed.
//! They are matched in the order they reach that worker: a report and an incident match
//! whichever comes first, as long as the incident has not ended when the report arrives.

use crate::state::OperatorStates;
use crate::SharedRegistry;
use aqyl_core::rules::corroborate::{CorroborateRule, Corroborator, Sighting};
use aqyl_core::{Event, Observation};
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// Confirms incidents with reports (see the module).
pub trait Corroborate<'scope> {
    /// The `update`s of the incidents of `self` that the reports among `readings` confirm
    /// under `rules`, with incident positions from `registry`. Its state is registered in
    /// `states` as `events/corroborate`.
    fn corroborate(
        self,
        readings: StreamVec<'scope, u64, Observation>,
        rules: Arc<Vec<CorroborateRule>>,
        registry: SharedRegistry,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event>;
}

/// A reading of a report type, as the corroborator keeps it (reports without a position
/// cannot be placed and are passed over).
fn sighting(o: &Observation) -> Option<Sighting> {
    Some(Sighting {
        id: o.sensor_id.to_string(),
        sensor_type: o.sensor_type.to_string(),
        category: o.area.as_deref().map(str::to_string),
        position: o.location?,
        time: o.event_time,
    })
}

impl<'scope> Corroborate<'scope> for StreamVec<'scope, u64, Event> {
    fn corroborate(
        self,
        readings: StreamVec<'scope, u64, Observation>,
        rules: Arc<Vec<CorroborateRule>>,
        registry: SharedRegistry,
        states: &OperatorStates,
    ) -> StreamVec<'scope, u64, Event> {
        let state = states.register::<Corroborator>("events/corroborate");
        let report_types: Vec<Arc<str>> = rules.iter().map(|r| Arc::from(&*r.reports)).collect();
        let event_types: Vec<String> = rules.iter().flat_map(|r| r.event_types.clone()).collect();
        // Only the reports and the incidents they may confirm travel to the one worker.
        let reports =
            crate::quality::keep::keep(readings, states, "CorroborateReports", move |o| {
                report_types.contains(&o.sensor_type)
            });
        let incidents =
            crate::quality::keep::keep(self, states, "CorroborateIncidents", move |e| {
                event_types.contains(&e.event_type)
            });
        incidents.binary_frontier::<_, CapacityContainerBuilder<Vec<Event>>, _, _, _, _>(
            reports,
            states.counted(Exchange::new(|_: &Event| 0)),
            states.counted(Exchange::new(|_: &Observation| 0)),
            "Corroborate",
            move |capability, _info| {
                let mut cap = Some(capability);
                move |(incidents, frontier1), (reports, frontier2), output| {
                    let mut state = state.borrow_mut();
                    let mut out = Vec::new();
                    let registry = registry.load();
                    incidents.for_each(|_, data| {
                        for e in data.drain(..) {
                            let position = registry
                                .get(&e.sensor_type)
                                .and_then(|t| t.registry.as_ref())
                                .and_then(|r| r.get(&e.subject))
                                .map(|info| (info.lat, info.lon));
                            out.extend(state.incident(&rules, &e, position));
                        }
                    });
                    reports.for_each(|_, data| {
                        for s in data.iter().filter_map(sighting) {
                            out.extend(state.report(&rules, s));
                        }
                        data.clear();
                    });
                    if cap.is_none() {
                        return;
                    }
                    let now = [frontier1.frontier().first(), frontier2.frontier().first()]
                        .into_iter()
                        .flatten()
                        .min()
                        .copied();
                    if let Some(now) = now {
                        state.expire(&rules, now);
                    }
                    crate::ordered::emit_and_follow(&mut cap, now, out, output);
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::MIN;
    use crate::state::testing::{build, same_across_a_checkpoint, Step};
    use aqyl_core::EventState;
    use std::path::Path;
    use timely::dataflow::channels::pact::Pipeline;

    /// What `pick` takes of the test's input, through a counted channel.
    fn split<'s, T: Clone + 'static>(
        s: StreamVec<'s, u64, In>,
        states: &OperatorStates,
        name: &str,
        pick: fn(In) -> Option<T>,
    ) -> StreamVec<'s, u64, T> {
        s.unary::<CapacityContainerBuilder<Vec<T>>, _, _, _>(
            states.counted(Pipeline),
            name,
            move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut picked: Vec<T> = data.drain(..).filter_map(pick).collect();
                        if !picked.is_empty() {
                            output.session(&cap).give_container(&mut picked);
                        }
                    });
                }
            },
        )
    }

    /// The test's one input: incidents and readings.
    #[derive(Clone, Debug)]
    enum In {
        Incident(Event),
        Reading(Observation),
    }

    fn registry() -> SharedRegistry {
        use aqyl_core::ingest::descriptor::SensorType;
        use aqyl_core::ingest::sensor_registry::SensorRegistry;
        let mut traffic = SensorType::from_toml(
            Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n",
        )
        .unwrap();
        let places = SensorRegistry::parse(Path::new("reg.csv"), "158324,56.15,10.2,grid-1\n");
        traffic.registry = Some(Arc::new(places.unwrap()));
        crate::shared(aqyl_core::ingest::decode::Registry::new(vec![traffic]))
    }

    fn rules() -> Arc<Vec<CorroborateRule>> {
        let text = "[[corroborate]]\nname = \"reported\"\nevent_types = [\"congestion\"]\nreports = \"citizen_report\"\ncategories = [\"traffic\"]\nmax_distance_m = 500\nwithin = \"15m\"\n";
        Arc::new(
            aqyl_core::rules::corroborate::parse(
                Path::new("r.toml"),
                text,
                &["traffic", "citizen_report"],
            )
            .unwrap(),
        )
    }

    fn congestion(state: EventState, minute: u64) -> In {
        In::Incident(Event {
            id: "inc".into(),
            event_type: "congestion".into(),
            subject: "158324".into(),
            sensor_type: "traffic".into(),
            area: None,
            state,
            level: "warning".into(),
            started_at: 10 * MIN,
            time: minute * MIN,
            rule: "congestion".into(),
            message: "Congestion".into(),
            values: vec![("avgSpeed".into(), 20.0)],
            extra: Vec::new(),
        })
    }

    fn report(id: &str, minute: u64, lat: f64) -> In {
        In::Reading(Observation {
            sensor_type: "citizen_report".into(),
            sensor_id: id.into(),
            area: Some("traffic".into()),
            event_time: minute * MIN,
            received_at: 0,
            time_from_receive: false,
            location: Some((lat, 10.2)),
            fields: vec![("lat".into(), lat)],
            arrival: Default::default(),
        })
    }

    #[test]
    fn an_incident_under_way_at_a_checkpoint_is_confirmed_after_it() {
        let (rules, registry) = (rules(), registry());
        let op = build(move |s, states| {
            let incidents = split(s.clone(), states, "Incidents", |i| match i {
                In::Incident(e) => Some(e),
                In::Reading(_) => None,
            });
            let readings = split(s, states, "Readings", |i| match i {
                In::Reading(o) => Some(o),
                In::Incident(_) => None,
            });
            incidents.corroborate(readings, rules.clone(), registry.clone(), states)
        });
        let first = vec![
            Step::Advance(10 * MIN),
            Step::Send(vec![congestion(EventState::Start, 10)]),
            Step::Advance(11 * MIN),
        ];
        let second = vec![
            // 1.1 km away, then 300 m away, then the end, then a report too late.
            Step::Send(vec![report("far", 12, 56.16)]),
            Step::Advance(12 * MIN),
            Step::Send(vec![report("near", 13, 56.1527)]),
            Step::Advance(13 * MIN),
            Step::Send(vec![congestion(EventState::End, 14)]),
            Step::Advance(14 * MIN),
            Step::Send(vec![report("after", 15, 56.1527)]),
            Step::Advance(15 * MIN),
        ];
        let out = same_across_a_checkpoint(op, first, second);
        assert_eq!(out.len(), 1, "{out:?}");
        let (u, json) = (&out[0], out[0].to_json());
        assert_eq!((u.state, u.id.as_str()), (EventState::Update, "inc"));
        assert!(json.contains("\"corroborated\":true"), "{json}");
        assert!(json.contains("\"report_id\":\"near\""), "{json}");
    }
}

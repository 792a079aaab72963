//! Event-time order for per-sensor state machines (SensorSAX, event rules): observations are
//! held by event time and released once the frontier has passed them, when no earlier one can
//! still come. Ties in event time are released in a fixed order (sensor, then values), not in
//! arrival order, so results do not depend on scheduling.

use aqyl_core::Observation;
use std::collections::BTreeMap;

/// Observations waiting for the frontier (part of its operator's checkpointed state).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EventTimeBuffer {
    pending: BTreeMap<u64, Vec<Observation>>,
}

impl EventTimeBuffer {
    /// Holds an observation until the frontier passes its event time.
    pub fn push(&mut self, obs: Observation) {
        self.pending.entry(obs.event_time).or_default().push(obs);
    }

    /// The earliest instant's observations, if the frontier `now` has passed it (`None`: the
    /// input has ended, everything is ready).
    pub fn next_ready(&mut self, now: Option<u64>) -> Option<(u64, Vec<Observation>)> {
        let (t, mut same_time) = pop_ready(&mut self.pending, now)?;
        same_time.sort_by(|a, b| {
            (&a.sensor_id, &a.fields)
                .partial_cmp(&(&b.sensor_id, &b.fields))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        Some((t, same_time))
    }
}

/// Takes the earliest entry of a buffer keyed by time, if the frontier `now` has passed it
/// (`None`: the input has ended, everything is ready). Event-time operators drain their
/// buffers with it, in time order.
pub fn pop_ready<V>(pending: &mut BTreeMap<u64, V>, now: Option<u64>) -> Option<(u64, V)> {
    let entry = pending.first_entry()?;
    if now.is_some_and(|n| *entry.key() >= n) {
        return None;
    }
    Some(entry.remove_entry())
}

/// The usual end of an event-time operator's activation: gives `out` at the held capability,
/// then moves the capability up to the input frontier `now`, or drops it once the input has
/// ended (`None`), which lets the frontier downstream run out.
pub fn emit_and_follow<T: Clone + 'static>(
    cap: &mut Option<timely::dataflow::operators::Capability<u64>>,
    now: Option<u64>,
    out: Vec<T>,
    output: &mut timely::dataflow::operators::generic::OutputBuilderSession<
        '_,
        u64,
        timely::container::CapacityContainerBuilder<Vec<T>>,
    >,
) {
    let Some(held) = cap.as_mut() else { return };
    if !out.is_empty() {
        output.session(&*held).give_iterator(out.into_iter());
    }
    match now {
        Some(n) => held.downgrade(&n),
        None => *cap = None,
    }
}

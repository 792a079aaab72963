//! Event rules in the dataflow, one operator per file:
//!
//! - [`DetectEvents`] (`detect.rs`): the reading rules of `config/rules/` per sensor, and the
//!   `per = "area"` rules per area;
//! - [`WindowEvents`] (`window.rs`): the rules over closed windows (`window = "<label>"`);
//! - [`AreaEvents`] (`area.rs`): area incidents, at least k of an area's sensors in an
//!   incident of a sensor rule;
//! - [`Corroborate`] (`corroborate.rs`): incidents confirmed by reports near them
//!   (`[[corroborate]]`), on one worker.
//!
//! With `pipeline.rule_timing = "arrival"` (the default) a reading newer than everything its
//! sensor has sent is judged the moment it arrives, so an incident's message leaves within
//! milliseconds instead of `allowed_lateness` later. A sensor's readings reach one worker in
//! the order its topic delivered them (ingest routes by topic, the exchange keeps per-sender
//! order), so the result depends neither on the number of workers nor on batching. A reading
//! older than its sensor's newest is not judged (taking the state machines back in time would
//! mean taking back messages operators have already seen); it still counts in windows and
//! quality, and in `aqyl_rules_out_of_order_total`. An exact re-delivery changes nothing.
//!
//! With `rule_timing = "watermark"`, readings are buffered by event time and judged once the
//! watermark has passed them: any arrival order within the lateness gives the same incidents.
//!
//! Absence rules notice a silence when the watermark passes it (replays, deterministic) and,
//! live, also by the wall clock (about once a second), like the quality watchdog.
//!
//! Each operator's state (what its rules have learned, ongoing incidents included, and what
//! waits for the frontier) is registered for checkpoints: `events/sensor`,
//! `events/area_silence`, `events/window`, `events/area` and `events/corroborate`. The rules are not part of it: a
//! restored state is matched to the rules of the configuration by rule name, and the state of
//! a rule that is gone is dropped.

mod area;
mod corroborate;
mod detect;
mod window;

pub use area::AreaEvents;
pub use corroborate::Corroborate;
pub use detect::DetectEvents;
pub use window::WindowEvents;

/// How the rule operators follow time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Reading rules judge each reading on arrival (`rule_timing = "arrival"`), not once the
    /// watermark has passed it.
    pub on_arrival: bool,
    /// Running live: absence rules also follow the wall clock, and (with `on_arrival`) area
    /// rules count sensor incidents as they arrive.
    pub live: bool,
    /// State of subjects silent this long (event-time ms) is released (`pipeline.state_ttl`).
    pub state_ttl_ms: Option<u64>,
}

impl Timing {
    /// The timing of a pipeline.
    pub fn of(spec: &crate::PipelineSpec) -> Self {
        Self {
            on_arrival: spec.rule_timing == aqyl_core::config::RuleTiming::Arrival,
            live: spec.live(),
            state_ttl_ms: spec.state_ttl.map(|d| d.as_millis() as u64),
        }
    }

    /// Whether it is time to release stale state at `now` (sweeping at most every eighth of
    /// the TTL, so it costs nothing per reading), and what is stale: silent since before the
    /// returned instant.
    pub fn sweep(&self, last_sweep: &mut u64, now: u64) -> Option<u64> {
        let ttl = self.state_ttl_ms?;
        if now < last_sweep.saturating_add(ttl / 8) || now < ttl {
            return None;
        }
        *last_sweep = now;
        Some(now - ttl)
    }
}

/// What the tests of the event operators share: a sensor type with one field, readings and
/// lifecycle messages in minutes.
#[cfg(test)]
mod testing {
    use super::Timing;
    use aqyl_core::ingest::descriptor::SensorType;
    use aqyl_core::rules::{parse_rules, Rule};
    use aqyl_core::{Event, Observation};
    use std::path::Path;
    use std::sync::Arc;

    pub(super) const MIN: u64 = 60_000;

    /// Not live, judged once the watermark has passed (readings wait in the buffer).
    pub(super) const BY_WATERMARK: Timing = Timing {
        on_arrival: false,
        live: false,
        state_ttl_ms: None,
    };

    pub(super) fn rules(text: &str) -> Arc<Vec<Rule>> {
        let ty = SensorType::from_toml(
            Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n",
        )
        .unwrap();
        Arc::new(parse_rules(Path::new("r.toml"), text, &[ty]).unwrap())
    }

    pub(super) fn obs(sensor: &str, area: &str, minute: u64, speed: f64) -> Observation {
        Observation {
            sensor_type: "traffic".into(),
            sensor_id: sensor.into(),
            area: Some(area.into()),
            event_time: minute * MIN,
            received_at: 0,
            time_from_receive: false,
            location: None,
            fields: vec![("avgSpeed".into(), speed)],
            arrival: Default::default(),
        }
    }

    /// (rule, subject, state, started at, time), minutes.
    pub(super) fn lifecycle(out: &[Event]) -> Vec<(&str, &str, &str, u64, u64)> {
        out.iter()
            .map(|e| {
                let (started, time) = (e.started_at / MIN, e.time / MIN);
                (
                    e.rule.as_str(),
                    e.subject.as_str(),
                    e.state.as_str(),
                    started,
                    time,
                )
            })
            .collect()
    }
}

//! `[pipeline]`: the dataflow's settings, most of them about windows and time (window size,
//! allowed lateness, the idle timeout of the watermark, the late-data policy). Also here, as
//! they are part of the same section: the number of workers (`aqyl-dataflow`) and when the
//! rules judge a reading ([`RuleTiming`]). Re-exported from [`crate::config`].

use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// `[pipeline]`: the dataflow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Timely worker threads.
    #[serde(default = "default_workers")]
    pub workers: Spanned<usize>,
    /// Tumbling window size.
    #[serde(default = "default_window", deserialize_with = "spanned_duration")]
    pub window: Spanned<Duration>,
    /// How far behind the newest event time a record may arrive and still count.
    #[serde(
        default = "default_lateness",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub allowed_lateness: Duration,
    /// After this much wall-clock silence the watermark advances with the wall clock, so
    /// windows close even when sensors stop. `"0s"` disables it (replays).
    #[serde(
        default = "default_idle",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub idle_timeout: Duration,
    /// What happens to a record older than the watermark: `drop` (count and dead-letter it)
    /// or `update` (add it to its closed window and emit the corrected window again, which
    /// overwrites the same series and timestamp in the store).
    #[serde(default)]
    pub late: LatePolicy,
    /// With `late = "update"`: how long after a window closed a late record may still
    /// correct it; older ones are dropped. Closed windows are kept this long.
    #[serde(
        default = "default_update_horizon",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub update_horizon: Duration,
    /// When reading rules judge a reading: `arrival` (at once, in each sensor's order; live
    /// incidents within milliseconds) or `watermark` (once the watermark has passed it, in
    /// event-time order whatever the arrival order; incidents `allowed_lateness` later).
    #[serde(default)]
    pub rule_timing: RuleTiming,
    /// Per-sensor state (rule state machines, learned baselines, quality ratings and
    /// trackers) of a sensor silent this long in event time is released, so sensors that come
    /// and go do not grow memory for ever; an ongoing incident keeps its sensor's rule state.
    /// A sensor that comes back starts afresh. `"0s"`: never released.
    #[serde(
        default = "default_state_ttl",
        deserialize_with = "crate::duration::deserialize"
    )]
    pub state_ttl: Duration,
}

/// When reading rules judge a reading (`pipeline.rule_timing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleTiming {
    /// On arrival: a reading newer than everything its sensor has sent is judged at once; an
    /// older one is not judged by the rules (it still counts in windows and quality), and is
    /// counted in `aqyl_rules_out_of_order_total`.
    #[default]
    Arrival,
    /// Once the watermark passes the reading, in event-time order: every arrival order
    /// within the allowed lateness gives the same incidents, `allowed_lateness` later.
    Watermark,
}

/// The late-data policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Count and dead-letter late records (reason `late`).
    #[default]
    Drop,
    /// Correct and re-emit the closed window, within `update_horizon`.
    Update,
}

fn default_update_horizon() -> Duration {
    Duration::from_secs(3600)
}

fn spanned_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Spanned<Duration>, D::Error> {
    let s: Spanned<String> = Spanned::deserialize(d)?;
    let span = s.span();
    crate::duration::parse(s.get_ref())
        .map(|v| Spanned::new(span, v))
        .map_err(serde::de::Error::custom)
}

fn default_workers() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
fn default_window() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(300))
}
fn default_lateness() -> Duration {
    Duration::from_secs(600)
}
fn default_state_ttl() -> Duration {
    Duration::from_secs(86_400)
}

fn default_idle() -> Duration {
    Duration::from_secs(30)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            window: default_window(),
            allowed_lateness: default_lateness(),
            idle_timeout: default_idle(),
            late: LatePolicy::Drop,
            update_horizon: default_update_horizon(),
            rule_timing: RuleTiming::Arrival,
            state_ttl: default_state_ttl(),
        }
    }
}

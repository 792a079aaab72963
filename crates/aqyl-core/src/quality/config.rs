//! `[quality]`: the settings of Quality of Information scoring. Re-exported from
//! [`crate::config`].

use serde::Deserialize;
use std::time::Duration;

/// `[quality]`: Quality of Information scoring of every sensor stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Score every stream (reports, roll-ups, quality incidents).
    pub enabled: bool,
    /// A sensor whose score stays below this for more than `alert_after` starts a `quality`
    /// incident.
    pub threshold: f64,
    /// The incident ends once the score has stayed at or above `threshold + recover_margin`
    /// for more than `alert_after`.
    pub recover_margin: f64,
    /// How long the score must stay below `threshold` to start an incident (or at or above
    /// `threshold + recover_margin` to end it), in expected intervals of the sensor's type:
    /// every report from the first low one to the current one low, spanning more than this.
    /// Reports are readings, unusable or late messages and watchdog failures (one per missed
    /// interval, 1.05 intervals apart), so with 1 a sensor reporting every interval needs
    /// three low readings in a row, and a silent one two missed intervals. `0`: at once.
    pub alert_after: f64,
    /// Processing delay inside Aqyl above which latency fails.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub max_latency: Duration,
    /// Rating window of frequency and correctness (CityPulse: 20).
    pub long_window: usize,
    /// Rating window of age, latency and completeness (CityPulse: 5).
    pub short_window: usize,
    /// Identical readings in a row that count as a stuck sensor.
    pub flat_line: usize,
    /// Readings of history the spike detector compares against.
    pub spike_window: usize,
    /// Robust z-score beyond which a value is a spike.
    pub spike_threshold: f64,
    /// Keep readings that fail correctness (a value outside its range) out of aggregates and
    /// event rules; they are still scored and counted (`aqyl_quality_excluded_total`).
    pub exclude_incorrect: bool,
    /// Which clock the watchdog and the age metric follow: `auto` (wall clock when the
    /// pipeline runs live, i.e. `pipeline.idle_timeout` is set; event time for replays),
    /// `wall` or `event`.
    pub clock: QualityClock,
}

/// The clock of the watchdog and the age metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityClock {
    /// Wall clock live, event time in replays.
    #[default]
    Auto,
    /// The wall clock.
    Wall,
    /// Event time.
    Event,
}

impl QualityConfig {
    /// Whether the watchdog and age follow the wall clock, for a pipeline that runs `live`
    /// (an idle timeout is set) or replays.
    pub fn wall_clock(&self, live: bool) -> bool {
        match self.clock {
            QualityClock::Wall => true,
            QualityClock::Event => false,
            QualityClock::Auto => live,
        }
    }
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.6,
            recover_margin: 0.1,
            alert_after: 1.0,
            max_latency: Duration::from_secs(1),
            long_window: crate::quality::LONG_WINDOW,
            short_window: crate::quality::SHORT_WINDOW,
            flat_line: 3,
            spike_window: 12,
            spike_threshold: 8.0,
            exclude_incorrect: true,
            clock: QualityClock::Auto,
        }
    }
}

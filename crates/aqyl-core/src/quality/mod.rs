//! Quality of Information (QoI): how far to trust each sensor.
//!
//! - [`metrics`]: CityPulse's five atomic metrics (frequency, age, latency, completeness,
//!   correctness) with the reward-and-punishment [`Rating`], and the flat-line and spike
//!   detectors.
//! - [`sensor`]: one sensor's state, giving an [`Assessment`] per reading, per unusable
//!   message and per missed reading (the watchdog).
//! - [`neighbours`]: plausibility against the other sensors of the area.
//! - [`feed`]: a silence against the other sensors of the type (a feed outage or a silent
//!   sensor).
//! - [`score`]: the overall score and its documented weights.
//! - [`report`]: what goes out (reports, roll-ups, and incidents with hysteresis).
//! - [`config`]: the `[quality]` section.
//!
//! All pure: the dataflow's `ScoreQuality` operator feeds them in event-time order.
//!
//! ```
//! use aqyl_core::quality::Rating;
//!
//! let mut age = Rating::new(5);
//! let rated: Vec<f64> = (0..4).map(|_| age.update(false)).collect();
//! assert_eq!(rated.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(), [0.6, 0.3, 0.1, 0.0]);
//! ```

pub mod config;
pub mod feed;
pub mod metrics;
pub mod neighbours;
pub mod report;
pub mod score;
pub mod sensor;

pub use feed::Feed;
pub use metrics::{
    FlatLine, Jump, Metric, Metrics5, QualitySettings, Rating, Reading, Spike, SpikeVerdict,
    StreamQuality, Unit, LONG_WINDOW, SHORT_WINDOW,
};
pub use neighbours::{agreement, Neighbourhood};
pub use report::{
    Alarm, AlarmSettings, QualityRecord, QualityReport, QualityRollup, Rollups, QUALITY_EVENT,
};
pub use score::{score, Findings, Neighbours, PENALTY, WEIGHTS};
pub use sensor::{Assessment, Input, SensorQuality, SensorSettings};

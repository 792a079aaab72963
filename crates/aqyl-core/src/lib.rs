//! Aqyl's types and pure cores.
//!
//! Everything here is free of I/O: decoding a payload into an [`Observation`], assigning
//! event-time windows and computing their statistics, tracking the watermark, encoding line
//! protocol with safe escaping, and loading/validating configuration text. The MQTT edge, the
//! timely dataflow and the sinks only move data between these functions, which is what makes
//! them testable against hand-worked references.
//!
//! ```
//! use aqyl_core::window::{WindowSpec, WindowStats};
//! use std::time::Duration;
//!
//! let w = WindowSpec::tumbling(Duration::from_secs(300));
//! assert_eq!(w.ends(1_000).collect::<Vec<_>>(), [300_000]); // the window [0, 5 min)
//! let stats = WindowStats::compute(&mut [3.0, 1.0, 2.0]).unwrap();
//! assert_eq!((stats.count, stats.mean, stats.min, stats.max), (3, 2.0, 1.0, 3.0));
//! ```

pub mod aggregate;
pub mod config;
pub mod deadletter;
pub mod decode;
pub mod dedup;
pub mod descriptor;
pub mod duration;
pub mod error;
pub mod event;
pub mod fnv;
pub mod formats;
pub mod line_protocol;
pub mod metrics;
pub mod observation;
pub mod quality;
pub mod rules;
pub mod sax;
pub mod sensor_registry;
pub mod units;
pub mod watermark;
pub mod window;

pub use aggregate::{Aggregate, Scope};
pub use deadletter::{DeadLetter, Reason};
pub use error::{ConfigError, ConfigErrors};
pub use event::{Event, EventState};
pub use observation::{Arrival, Observation, RawMessage};

//! Windows and time: event-time windows and their statistics, SAX words, the aggregates they
//! give out, and the watermark that closes them.
//!
//! - [`window`]: which window a timestamp falls in, and the statistics of a closed window.
//! - [`sax`]: SAX and SensorSAX (symbolic aggregate approximation), as CityPulse computes them.
//! - [`aggregate`]: a closed window's result for one sensor (or area) and field, and its
//!   encodings (JSON, MQTT topic, a line in the store).
//! - [`watermark`]: how far event time has certainly progressed.
//! - [`config`]: the `[pipeline]` section.

pub mod aggregate;
pub mod config;
pub mod sax;
pub mod watermark;
pub mod window;

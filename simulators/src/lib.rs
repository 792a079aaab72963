//! `aqyl-sim`: a city of simulated sensors for Aqyl.
//!
//! The library holds the sans-I/O cores — daily [`patterns`], the city's [`sensors`] and
//! their [`payload`]s, [`faults`], the [`scenario`] file, the [`simulation`] engine and its
//! ground [`truth`], CSV [`replay`], load-test [`stats`] and the detection [`score`]r, with
//! event-[`time`] helpers — and the MQTT edge ([`mqtt`] connections, paced [`publish`]ing and
//! the [`load`] test) that the `aqyl-sim` binary wires together.
//!
//! ```
//! use aqyl_sim::sensors::{CityConfig, SensorType};
//! use aqyl_sim::simulation::{SimConfig, Simulation};
//!
//! let start = aqyl_sim::time::parse_time("2014-08-01T00:00:00").unwrap();
//! let city = CityConfig { sensors: 2, areas: 1, types: vec![SensorType::Traffic] };
//! let config = SimConfig::new(city, start, chrono::Duration::hours(1), 42);
//! let (messages, truth) = Simulation::generate(config).unwrap();
//! assert_eq!(messages.len(), 2 * 12); // two segments, one row every 5 minutes
//! assert!(truth.is_empty());
//! assert_eq!(messages[0].topic, "city/traffic/158324");
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod faults;
pub mod load;
pub mod mqtt;
pub mod patterns;
pub mod payload;
pub mod publish;
pub mod replay;
pub mod scenario;
pub mod score;
pub mod sensors;
pub mod simulation;
pub mod stats;
pub mod time;
pub mod truth;

pub use error::{Error, Result};

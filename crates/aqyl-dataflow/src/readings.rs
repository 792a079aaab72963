//! `Readings`: a worker's inputs of readings, one per kind of consumer, each fed only the
//! readings that consumer uses.
//!
//! A timely stream read by several operators hands each of them a copy of every batch, and
//! each operator's exchange then moves its copy to the worker that owns the subject. Most
//! readings matter to few operators (a reading without an area has no area roll-up; a sensor
//! type no rule watches gives no incident; few types have SensorSAX), so copying and
//! exchanging every reading for every operator was most of the dataflow's allocation. Here
//! the ingest decides once per reading which inputs take it, cloning it only for those.
//! The decisions depend on the reading and on the current registry (a descriptor reload that
//! adds an area registry or SensorSAX takes effect from the next reading), so every operator
//! is still built and receives exactly the readings it would have kept.

use crate::feed::Feed;
use aqyl_core::ingest::decode::Registry;
use aqyl_core::rules::{Input, Rule};
use aqyl_core::Observation;
use std::sync::Arc;
use timely::dataflow::{Scope, StreamVec};

/// The streams of [`Readings`], one per consumer.
pub struct Streams<'scope> {
    /// Every reading: windows per sensor, quality scoring.
    pub all: StreamVec<'scope, u64, Observation>,
    /// Readings with an area: area roll-ups and per-area rules.
    pub areas: StreamVec<'scope, u64, Observation>,
    /// Readings of sensor types that a reading rule watches.
    pub rules: StreamVec<'scope, u64, Observation>,
    /// Readings of sensor types with `[sensor_sax]`.
    pub sax: StreamVec<'scope, u64, Observation>,
}

/// A worker's inputs of readings (see the module doc).
pub struct Readings {
    all: Feed<Observation>,
    areas: Feed<Observation>,
    rules: Feed<Observation>,
    sax: Feed<Observation>,
    /// Sensor types some reading rule watches (rules are fixed for the dataflow's life).
    ruled: Vec<Arc<str>>,
}

impl Readings {
    /// The inputs and their streams, at input time 0.
    pub fn new<'scope>(scope: &Scope<'scope, u64>, rules: &[Rule]) -> (Self, Streams<'scope>) {
        let (all, all_stream) = Feed::new(scope);
        let (areas, areas_stream) = Feed::new(scope);
        let (ruled_feed, rules_stream) = Feed::new(scope);
        let (sax, sax_stream) = Feed::new(scope);
        let mut ruled: Vec<Arc<str>> = rules
            .iter()
            .filter(|r| r.input() == Input::Readings)
            .map(|r| Arc::from(&*r.sensor_type))
            .collect();
        ruled.sort();
        ruled.dedup();
        let readings = Self {
            all,
            areas,
            rules: ruled_feed,
            sax,
            ruled,
        };
        let streams = Streams {
            all: all_stream,
            areas: areas_stream,
            rules: rules_stream,
            sax: sax_stream,
        };
        (readings, streams)
    }

    /// Sends `obs` to every input whose consumers use it.
    pub fn send(&mut self, obs: Observation, registry: &Registry) {
        if obs.area.is_some() {
            self.areas.send(obs.clone());
        }
        if self.ruled.iter().any(|t| **t == *obs.sensor_type) {
            self.rules.send(obs.clone());
        }
        if registry
            .get(&obs.sensor_type)
            .is_some_and(|t| t.sensor_sax.is_some())
        {
            self.sax.send(obs.clone());
        }
        self.all.send(obs);
    }

    /// The current input time (`u64::MAX` once closed).
    pub fn time(&self) -> u64 {
        self.all.time()
    }

    /// Flushes every input, then promises no more readings before `time`.
    pub fn advance_to(&mut self, time: u64) {
        for feed in self.feeds() {
            feed.advance_to(time);
        }
    }

    /// Flushes and ends every input.
    pub fn close(&mut self) {
        for feed in self.feeds() {
            feed.close();
        }
    }

    fn feeds(&mut self) -> [&mut Feed<Observation>; 4] {
        [
            &mut self.all,
            &mut self.areas,
            &mut self.rules,
            &mut self.sax,
        ]
    }
}

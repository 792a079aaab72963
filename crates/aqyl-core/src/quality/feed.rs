//! Silence against the feed: a sensor that stops reporting is a fault when it stops alone,
//! and an outage of the feed (the city's collector, a gateway, the network) when most of the
//! sensors of its type stop with it. In the CityPulse Aarhus traffic data nearly every gap of
//! two or more readings is shared by dozens of segments at the same minutes: one broken
//! collector, not fifty broken detectors.
//!
//! [`Feed`] follows the sensors of one type through two kinds of event: *heard* (a reading
//! after a silence, or a sensor's first) and *silent* (a watchdog failure, one per missed
//! expected interval). At a time `t`, a sensor whose latest event is *heard* is reporting; one
//! whose latest event is a watchdog failure is silent, unless its watchdog had already rested
//! (after a frequency window of failures) before the sensor judged here stopped: a sensor long
//! dead excuses nothing and is left out, as is one that has not reported yet. A silence is shared
//! ([`Neighbours::Agree`]) when at least half of the other sensors left in (and at least one)
//! are silent at the same time, or when at least [`CO_SILENT`] others are silent with a
//! silence that began within one grace period of this one's (a gateway serving a district:
//! independent sensors seldom stop in the same few minutes, and a common cause is not the
//! sensor's fault). Otherwise it is the sensor's own ([`Neighbours::Disagree`]).

use super::score::Neighbours;
use std::collections::{BTreeMap, VecDeque};

/// Other sensors that must have stopped within one grace period of a sensor, and still be
/// silent, for its silence to be a shared outage however many sensors the type has.
pub const CO_SILENT: usize = 2;

/// The sensors of one type, for telling a feed outage from a silent sensor.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Feed {
    /// Sensor → its latest events, in time order: (time, a watchdog failure?).
    sensors: BTreeMap<String, VecDeque<(u64, bool)>>,
}

impl Feed {
    /// Notes that `sensor` reported at `time` after a silence (or for the first time).
    pub fn heard(&mut self, sensor: &str, time: u64) {
        self.record(sensor, time, false);
    }

    /// Notes a watchdog failure of `sensor` at `time`.
    pub fn silent(&mut self, sensor: &str, time: u64) {
        self.record(sensor, time, true);
    }

    fn record(&mut self, sensor: &str, time: u64, silent: bool) {
        let events = match self.sensors.get_mut(sensor) {
            Some(e) => e,
            None => self.sensors.entry(sensor.to_string()).or_default(),
        };
        // Events come nearly in time order; keep them sorted whatever the order.
        let at = events.partition_point(|e| *e <= (time, silent));
        if at > 0 && events[at - 1] == (time, silent) {
            return;
        }
        events.insert(at, (time, silent));
    }

    /// Forgets what no verdict at `cutoff` or later needs: each sensor's events before its
    /// latest reading at or before `cutoff` (that reading, and the failures after it, tell
    /// whether it is silent and since when). Call it as the frontier moves on, with a cutoff a
    /// frequency window of failures (and a little) before the oldest failure still to judge.
    pub fn forget_before(&mut self, cutoff: u64) {
        for events in self.sensors.values_mut() {
            if let Some(i) = events.iter().rposition(|e| !e.1 && e.0 <= cutoff) {
                events.drain(..i);
            }
        }
    }

    /// Forgets every sensor whose newest news (a reading after a silence, a keep-alive, or a
    /// watchdog failure) is older than `before` (`pipeline.state_ttl`: a sensor silent that
    /// long is gone from the city); returns how many. A sensor still reporting must be heard
    /// of now and then for this (the scorer says so at least every quarter of the TTL), as
    /// its watchdog says nothing while it reports. A forgotten sensor that reports again is
    /// heard of as a new one.
    pub fn forget_sensors(&mut self, before: u64) -> usize {
        let n = self.sensors.len();
        self.sensors
            .retain(|_, events| events.back().is_some_and(|e| e.0 >= before));
        n - self.sensors.len()
    }

    /// The sensors it follows.
    pub fn sensors(&self) -> usize {
        self.sensors.len()
    }

    /// Whether the silence of `sensor` at `time` is shared by the other sensors of the type;
    /// `grace` is the watchdog's period (1.05 expected intervals), ms.
    pub fn verdict(&self, sensor: &str, time: u64, grace: u64) -> Neighbours {
        let own_start = self
            .sensors
            .get(sensor)
            .and_then(|e| silence_start(e, time))
            .unwrap_or(time);
        let (mut reporting, mut silent, mut together) = (0usize, 0usize, 0usize);
        for (other, events) in &self.sensors {
            if other == sensor {
                continue;
            }
            let latest = events.iter().rev().find(|e| e.0 <= time);
            match latest {
                Some((_, false)) => reporting += 1,
                // Still failing when this sensor stopped (its silence's first failure came
                // one grace period after that).
                Some((t, true)) if t.saturating_add(grace) >= own_start => {
                    silent += 1;
                    if silence_start(events, time).is_some_and(|s| s.abs_diff(own_start) <= grace) {
                        together += 1;
                        if together >= CO_SILENT {
                            // Shared, whatever the others: in an outage of thousands of
                            // sensors, each silence is judged by the first few, not by all.
                            return Neighbours::Agree;
                        }
                    }
                }
                _ => {}
            }
        }
        if reporting + silent == 0 {
            Neighbours::Unchecked
        } else if (silent >= 1 && 2 * silent >= reporting + silent) || together >= CO_SILENT {
            Neighbours::Agree
        } else {
            Neighbours::Disagree
        }
    }
}

/// The first watchdog failure of the silence a sensor is in at `time` (after its latest
/// reading up to then), if it is silent.
fn silence_start(events: &VecDeque<(u64, bool)>, time: u64) -> Option<u64> {
    let upto = events.partition_point(|e| e.0 <= time);
    let heard = events
        .range(..upto)
        .rposition(|e| !e.1)
        .map_or(0, |i| i + 1);
    events.range(heard..upto).next().map(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: u64 = 300_000;
    const GRACE: u64 = 315_000;

    #[test]
    fn a_silence_most_of_the_type_shares_is_the_feed() {
        let mut feed = Feed::default();
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            feed.heard(s, i as u64 * 1000);
        }
        // Alone: "a" misses a reading while the others report.
        feed.silent("a", I + GRACE);
        assert_eq!(feed.verdict("a", I + GRACE, GRACE), Neighbours::Disagree);
        // The collector goes down: everyone's watchdog bites within an interval.
        let down = 10 * I;
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            feed.heard(s, down - 4 * I);
            for k in 1..=3 {
                feed.silent(s, down + i as u64 * 60_000 + k * GRACE);
            }
        }
        assert_eq!(
            feed.verdict("a", down + 2 * GRACE, GRACE),
            Neighbours::Agree,
            "b, c and d are silent too"
        );
        // "b" is back: c and d, two of three, are still silent.
        let t = down + 3 * GRACE;
        feed.heard("b", t);
        assert_eq!(feed.verdict("a", t + 1, GRACE), Neighbours::Agree);
        // "c" is back too: "a" and "d" alone are not the feed.
        feed.heard("c", t + 1);
        assert_eq!(feed.verdict("a", t + 1, GRACE), Neighbours::Disagree);
    }

    #[test]
    fn a_district_that_stops_together_is_an_outage_a_lone_sensor_is_not() {
        let mut feed = Feed::default();
        let ids: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        for id in &ids {
            feed.heard(id, 0);
        }
        // s0, s1 and s2 stop within a minute of each other at 10 intervals; the rest report.
        for (i, id) in ids[..3].iter().enumerate() {
            for k in 1..=20 {
                feed.silent(id, 10 * I + i as u64 * 60_000 + k * GRACE);
            }
        }
        let t = 10 * I + 2 * GRACE + 120_000;
        assert_eq!(feed.verdict("s0", t, GRACE), Neighbours::Agree);
        // s9 stops an hour later, alone: s0..s2 are still silent, but since long before.
        for k in 1..=2 {
            feed.silent("s9", 22 * I + k * GRACE);
        }
        assert_eq!(
            feed.verdict("s9", 22 * I + 2 * GRACE, GRACE),
            Neighbours::Disagree
        );
    }

    #[test]
    fn a_long_dead_neighbour_or_a_lone_sensor_excuses_nothing() {
        let mut feed = Feed::default();
        assert_eq!(feed.verdict("a", 0, GRACE), Neighbours::Unchecked);
        feed.heard("a", 0);
        feed.heard("b", 0);
        // "b" died long ago: its watchdog rests after its last failure.
        feed.silent("b", GRACE);
        let later = 100 * I;
        feed.silent("a", later);
        assert_eq!(
            feed.verdict("a", later, GRACE),
            Neighbours::Unchecked,
            "no one else to compare with"
        );
        // Only events up to the time judged count: "b" coming back later changes nothing.
        feed.heard("b", later + 1);
        assert_eq!(feed.verdict("a", later, GRACE), Neighbours::Unchecked);
        assert_eq!(feed.verdict("a", later + 1, GRACE), Neighbours::Disagree);
    }

    #[test]
    fn sensors_silent_past_the_ttl_are_forgotten() {
        let mut feed = Feed::default();
        for i in 0..100 {
            feed.heard(&format!("gone{i}"), 0);
            feed.silent(&format!("gone{i}"), GRACE);
        }
        feed.heard("steady", 0);
        // A keep-alive: the steady sensor is heard of while it reports.
        feed.heard("steady", 40 * I);
        feed.heard("back", 0);
        assert_eq!(feed.sensors(), 102);
        assert_eq!(feed.forget_sensors(0), 0, "nothing is older than 0");
        assert_eq!(feed.forget_sensors(30 * I), 101);
        assert_eq!(feed.sensors(), 1);
        // One that comes back is new: it is reporting, and that is all that is known.
        feed.heard("back", 45 * I);
        feed.silent("steady", 46 * I);
        assert_eq!(feed.verdict("steady", 46 * I, GRACE), Neighbours::Disagree);
    }

    #[test]
    fn forgetting_the_past_keeps_every_verdict_from_the_cutoff_on() {
        // However far ahead the news runs (a replay's frontier may leap hours at once), the
        // verdicts from the cutoff on are those of the full history.
        let mut full = Feed::default();
        for s in ["a", "b", "c"] {
            full.heard(s, 0);
        }
        for k in 1..=20 {
            full.silent("a", 10 * I + k * GRACE);
            full.silent("b", 10 * I + 60_000 + k * GRACE);
        }
        full.heard("a", 40 * I);
        full.heard("b", 40 * I);
        for k in 1..=3 {
            full.silent("c", 50 * I + k * GRACE);
        }
        let mut pruned = Feed {
            sensors: full.sensors.clone(),
        };
        let cutoff = 10 * I + 5 * GRACE;
        pruned.forget_before(cutoff);
        for t in (cutoff..60 * I).step_by(50_000) {
            for s in ["a", "b", "c"] {
                assert_eq!(
                    pruned.verdict(s, t, GRACE),
                    full.verdict(s, t, GRACE),
                    "{s} at {t}"
                );
            }
        }
        assert_eq!(
            full.verdict("a", 10 * I + 3 * GRACE, GRACE),
            Neighbours::Agree
        );
        pruned.forget_before(45 * I);
        assert!(pruned.sensors.values().all(|e| e.len() <= 4));
    }
}

//! Plausibility against neighbours: a sudden change in one sensor's values is a fault when it
//! alone shows it, and a real event when the other sensors of its type in its area show it
//! too (a congestion slows every segment of a district; a broken detector only its own).
//!
//! A shift is confirmed one reading after its jump, and the neighbours' own jumps may come a
//! reading earlier or later, so the evidence is every neighbour reading from two expected
//! intervals before to half an interval after (`window` is half the expected interval): its
//! z-scores and the shifts it confirmed. The assessments of one area are held until the
//! frontier has passed `time + window`, when every neighbour reading of that span is in.

use super::score::Neighbours;
use super::sensor::Assessment;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How far back (in `window`s, half expected intervals) neighbour evidence counts.
const LOOKBACK: u64 = 4;

/// A reading's robust z-score per field.
type ZScores = [(Arc<str>, f64)];

/// Whether the neighbours' z-scores share a sensor's shifts: for each shifted field, at least
/// half of the neighbours (and at least one) moved the same way by at least half the
/// threshold. `neighbours` holds each neighbour's z-scores near the same time.
pub fn agreement(shifts: &[(String, f64)], neighbours: &[&ZScores], threshold: f64) -> Neighbours {
    if shifts.is_empty() || neighbours.is_empty() {
        return Neighbours::Unchecked;
    }
    let shared = shifts.iter().all(|(field, z)| {
        let agreeing = neighbours
            .iter()
            .filter(|n| {
                n.iter().any(|(f, nz)| {
                    **f == **field && nz.signum() == z.signum() && nz.abs() >= threshold / 2.0
                })
            })
            .count();
        agreeing >= 1 && 2 * agreeing >= neighbours.len()
    });
    if shared {
        Neighbours::Agree
    } else {
        Neighbours::Disagree
    }
}

/// The assessments of one area's sensors of one type, waiting for their neighbours. What it
/// holds of a sensor is gone once the frontier is five windows (two and a half expected
/// intervals) past its newest assessment: nothing of a silent sensor outlives its silence
/// for long, whatever `pipeline.state_ttl` is.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Neighbourhood {
    /// Time → (sensor id, the assessment until released, its evidence for the others: its
    /// z-scores and confirmed shifts).
    by_time: BTreeMap<u64, Vec<Held>>,
}

/// One held assessment.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Held {
    sensor: Arc<str>,
    assessment: Option<Assessment>,
    evidence: Vec<(Arc<str>, f64)>,
}

impl Neighbourhood {
    /// Holds an assessment.
    pub fn push(&mut self, sensor: Arc<str>, a: Assessment) {
        let mut evidence = a.z.clone();
        evidence.extend(
            a.findings
                .shifts
                .iter()
                .map(|(f, z)| (Arc::from(f.as_str()), *z)),
        );
        self.by_time.entry(a.time).or_default().push(Held {
            sensor,
            assessment: Some(a),
            evidence,
        });
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    /// The sensors it holds anything of (an assessment, or evidence for the others).
    pub fn sensors(&self) -> usize {
        let mut ids: Vec<&str> = self
            .by_time
            .values()
            .flatten()
            .map(|h| &*h.sensor)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Releases, in time order, every assessment whose neighbours are all in (the frontier
    /// `now` has passed `time + window`; `None`: the input has ended), with its neighbour
    /// verdict; forgets what can no longer be anyone's neighbour.
    pub fn ready(
        &mut self,
        now: Option<u64>,
        window: u64,
        threshold: f64,
    ) -> Vec<(Arc<str>, Assessment)> {
        let done = |t: u64| now.is_none_or(|n| t.saturating_add(window) < n);
        let mut out = Vec::new();
        let times: Vec<u64> = self
            .by_time
            .keys()
            .copied()
            .take_while(|t| done(*t))
            .collect();
        for t in times {
            let Some(entries) = self.by_time.get(&t) else {
                continue;
            };
            let mut verdicts = Vec::new();
            for (i, held) in entries.iter().enumerate() {
                let Some(a) = &held.assessment else {
                    continue;
                };
                if a.findings.shifts.is_empty() {
                    verdicts.push((i, Neighbours::Unchecked));
                    continue;
                }
                // Each other sensor's evidence over the span.
                let mut evidence: BTreeMap<&str, Vec<(Arc<str>, f64)>> = BTreeMap::new();
                for (_, others) in self
                    .by_time
                    .range(t.saturating_sub(LOOKBACK * window)..=t.saturating_add(window))
                {
                    for other in others {
                        if other.sensor == held.sensor || other.evidence.is_empty() {
                            continue;
                        }
                        evidence
                            .entry(&other.sensor)
                            .or_default()
                            .extend(other.evidence.iter().cloned());
                    }
                }
                let zs: Vec<&ZScores> = evidence.values().map(Vec::as_slice).collect();
                verdicts.push((i, agreement(&a.findings.shifts, &zs, threshold)));
            }
            if let Some(entries) = self.by_time.get_mut(&t) {
                for (i, verdict) in verdicts {
                    let held = &mut entries[i];
                    if let Some(mut a) = held.assessment.take() {
                        a.findings.neighbours = verdict;
                        out.push((held.sensor.clone(), a));
                    }
                }
            }
        }
        // An entry is evidence for entries up to `LOOKBACK·window` later, released once the
        // frontier passes their time + `window`.
        while let Some(entry) = self.by_time.first_entry() {
            let t = *entry.key();
            let needed = now.is_some_and(|n| t.saturating_add((LOOKBACK + 1) * window) >= n);
            if needed || entry.get().iter().any(|e| e.assessment.is_some()) {
                break;
            }
            entry.remove();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::score::Findings;
    use super::*;

    fn assessment(t: u64, z: f64, threshold: f64) -> Assessment {
        let shifts = if z.abs() > threshold {
            vec![("avgSpeed".to_string(), z)]
        } else {
            Vec::new()
        };
        Assessment {
            time: t,
            metrics: super::super::metrics::StreamQuality::new(
                super::super::metrics::QualitySettings {
                    expected_interval_ms: 300_000,
                    max_latency_ms: 1000,
                    long_window: 20,
                    short_window: 5,
                },
            )
            .current(),
            findings: Findings {
                shifts,
                ..Findings::default()
            },
            z: vec![(Arc::from("avgSpeed"), z)],
        }
    }

    #[test]
    fn a_jump_shared_by_the_area_is_an_event_one_alone_is_a_fault() {
        let mut n = Neighbourhood::default();
        // At t = 1000: all three sensors drop hard (a real congestion).
        for s in ["a", "b", "c"] {
            n.push(s.into(), assessment(1000, -9.0, 6.0));
        }
        // At t = 5000: only "b" jumps; "a" and "c" are calm.
        n.push("a".into(), assessment(5000, 0.3, 6.0));
        n.push("b".into(), assessment(5000, 12.0, 6.0));
        n.push("c".into(), assessment(5050, -0.2, 6.0));
        assert!(
            n.ready(Some(1100), 100, 6.0).is_empty(),
            "neighbours may still come"
        );
        let first = n.ready(Some(1101), 100, 6.0);
        assert_eq!(first.len(), 3);
        assert!(first
            .iter()
            .all(|(_, a)| a.findings.neighbours == Neighbours::Agree));
        let rest = n.ready(None, 100, 6.0);
        let b = rest.iter().find(|(s, _)| &**s == "b").unwrap();
        assert_eq!(b.1.findings.neighbours, Neighbours::Disagree);
        let a = rest.iter().find(|(s, _)| &**s == "a").unwrap();
        assert_eq!(
            a.1.findings.neighbours,
            Neighbours::Unchecked,
            "no jump, no check"
        );
        assert!(n.is_empty());
    }

    #[test]
    fn without_neighbours_nothing_can_be_told() {
        assert_eq!(
            agreement(&[("x".into(), 9.0)], &[], 6.0),
            Neighbours::Unchecked
        );
        let up: Vec<(Arc<str>, f64)> = vec![("x".into(), 4.0)];
        let down: Vec<(Arc<str>, f64)> = vec![("x".into(), -4.0)];
        assert_eq!(
            agreement(&[("x".into(), 9.0)], &[&up, &down], 6.0),
            Neighbours::Agree,
            "half the neighbours agree"
        );
        assert_eq!(
            agreement(&[("x".into(), 9.0)], &[&down, &down, &up], 6.0),
            Neighbours::Disagree
        );
    }
}

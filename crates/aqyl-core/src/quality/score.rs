//! The overall score of a reading: how far a city service should trust it.

use super::metrics::Metrics5;

/// Weights of the rated metrics in the overall score (they sum to 1). Correctness and
/// completeness weigh most, because wrong or missing values mislead city services; frequency
/// next, because gaps hide events; age and latency least, because late data is still right.
pub const WEIGHTS: [(&str, f64); 5] = [
    ("frequency", 0.2),
    ("age", 0.1),
    ("latency", 0.1),
    ("completeness", 0.25),
    ("correctness", 0.35),
];

/// Each finding about the current reading halves the score.
pub const PENALTY: f64 = 0.5;

/// Whether a sudden shift of the sensor's values is shared by its neighbours (same type,
/// same area), or whether a silence is shared by the other sensors of its type (the feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Neighbours {
    /// Nothing to check: no sudden shift, or no neighbours reporting (the shift is given
    /// the benefit of the doubt; a silence is the sensor's own).
    #[default]
    Unchecked,
    /// A sudden shift that the neighbours share: a real event, not a fault. For a silence:
    /// most sensors of its type went silent too, an outage of the feed, not of this sensor.
    Agree,
    /// A sudden shift (or a silence) that the neighbours do not share: the sensor alone
    /// deviates.
    Disagree,
}

/// What was found wrong with the current reading (or silence) beyond the rated metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Findings {
    /// No reading for 1.05 × the expected interval (the watchdog).
    pub silent: bool,
    /// The message came after its window had closed.
    pub late: bool,
    /// Fields outside their range, or of the wrong type, one sentence each.
    pub incorrect: Vec<String>,
    /// Why the reading was incomplete (missing field, unreadable payload).
    pub incomplete: Option<String>,
    /// The values have not changed for the configured number of readings.
    pub flat_line: bool,
    /// Fields whose previous value jumped and came back (robust z-score beyond the threshold,
    /// then back at least halfway), with the jump's z-score: a spike is a fault.
    pub spikes: Vec<(String, f64)>,
    /// Fields whose previous value jumped and stayed, with the jump's z-score: a real change
    /// or a fault, which the neighbours tell.
    pub shifts: Vec<(String, f64)>,
    /// The neighbour check of the shifts, or of the silence.
    pub neighbours: Neighbours,
}

impl Findings {
    /// The findings that cost trust, each as a short phrase for messages.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lone_silence() {
            out.push("silent for more than 1.05 expected intervals".to_string());
        }
        if self.late {
            out.push("arrived after its window closed".to_string());
        }
        out.extend(self.incorrect.iter().cloned());
        if let Some(why) = &self.incomplete {
            out.push(why.clone());
        }
        if self.flat_line {
            out.push("values stuck".to_string());
        }
        let fields = |list: &[(String, f64)]| {
            list.iter()
                .map(|(f, z)| format!("{f} (z = {z:.1})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.spikes.is_empty() {
            out.push(format!("spike in {}", fields(&self.spikes)));
        }
        if !self.shifts.is_empty() && self.neighbours == Neighbours::Disagree {
            out.push(format!(
                "sudden shift in {} that its neighbours do not show",
                fields(&self.shifts)
            ));
        }
        out
    }

    /// A silence that costs trust: not shared by most sensors of the type.
    pub fn lone_silence(&self) -> bool {
        self.silent && self.neighbours != Neighbours::Agree
    }
}

/// The overall score: the weighted mean of the rated metrics, halved for each finding about
/// the current reading (silent while the rest of its type reports, late, incorrect,
/// incomplete, stuck, a spike, a shift its neighbours do not share). A silence the whole feed
/// shares costs only its frequency rating: the sensor is not to blame. The rated metrics are CityPulse's slow-moving reputation of the stream; the
/// findings make one bad reading show at once, so a consumer can drop that reading.
pub fn score(m: &Metrics5, findings: &Findings) -> f64 {
    let rated = [
        m.frequency.rated,
        m.age.rated,
        m.latency.rated,
        m.completeness.rated,
        m.correctness.rated,
    ];
    let base: f64 = rated
        .iter()
        .zip(WEIGHTS.iter())
        .map(|(r, (_, w))| r * w)
        .sum();
    let lone_shift = !findings.shifts.is_empty() && findings.neighbours == Neighbours::Disagree;
    let count = [
        findings.lone_silence(),
        findings.late,
        !findings.incorrect.is_empty(),
        findings.incomplete.is_some(),
        findings.flat_line,
        !findings.spikes.is_empty(),
        lone_shift,
    ]
    .iter()
    .filter(|f| **f)
    .count();
    base * PENALTY.powi(count as i32)
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{Metric, Metrics5};
    use super::*;

    fn all(rated: f64) -> Metrics5 {
        let m = Metric {
            absolute: 0.0,
            rated,
            unit: super::super::metrics::Unit::Ratio,
        };
        Metrics5 {
            frequency: m,
            age: m,
            latency: m,
            completeness: m,
            correctness: m,
        }
    }

    #[test]
    fn weights_sum_to_one_and_findings_halve_the_score() {
        assert!((WEIGHTS.iter().map(|w| w.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(score(&all(1.0), &Findings::default()), 1.0);
        let stuck = Findings {
            flat_line: true,
            ..Findings::default()
        };
        assert_eq!(score(&all(1.0), &stuck), 0.5);
        let both = Findings {
            flat_line: true,
            silent: true,
            ..Findings::default()
        };
        assert_eq!(score(&all(0.8), &both), 0.2);
        assert_eq!(both.problems().len(), 2);
    }

    #[test]
    fn a_silence_the_whole_feed_shares_costs_nothing_beyond_the_rating() {
        let silent = |neighbours| Findings {
            silent: true,
            neighbours,
            ..Findings::default()
        };
        assert_eq!(score(&all(1.0), &silent(Neighbours::Unchecked)), 0.5);
        assert_eq!(score(&all(1.0), &silent(Neighbours::Disagree)), 0.5);
        assert_eq!(score(&all(1.0), &silent(Neighbours::Agree)), 1.0);
        assert!(silent(Neighbours::Agree).problems().is_empty());
        assert!(silent(Neighbours::Disagree).problems()[0].starts_with("silent"));
    }

    #[test]
    fn a_shift_costs_only_when_the_neighbours_do_not_share_it() {
        let shift = |neighbours| Findings {
            shifts: vec![("avgSpeed".into(), -9.0)],
            neighbours,
            ..Findings::default()
        };
        assert_eq!(score(&all(1.0), &shift(Neighbours::Agree)), 1.0);
        assert_eq!(score(&all(1.0), &shift(Neighbours::Unchecked)), 1.0);
        assert_eq!(score(&all(1.0), &shift(Neighbours::Disagree)), 0.5);
        assert!(shift(Neighbours::Disagree).problems()[0].contains("neighbours do not show"));
        assert!(shift(Neighbours::Agree).problems().is_empty());
        let spike = Findings {
            spikes: vec![("avgSpeed".into(), 30.0)],
            ..Findings::default()
        };
        assert_eq!(score(&all(1.0), &spike), 0.5);
    }
}

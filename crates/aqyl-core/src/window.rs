//! Event-time windows: which window a timestamp falls in, and the statistics of a closed window.

use serde::{Deserialize, Serialize};

/// Tumbling windows of a fixed size, aligned to the Unix epoch: `[k·size, (k+1)·size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumbling {
    size_ms: u64,
}

impl Tumbling {
    /// Windows of `size_ms` milliseconds (at least 1).
    pub fn new(size_ms: u64) -> Self {
        Self {
            size_ms: size_ms.max(1),
        }
    }

    /// Window size in milliseconds.
    pub fn size_ms(&self) -> u64 {
        self.size_ms
    }

    /// The `[start, end)` of the window holding `event_time`.
    pub fn assign(&self, event_time: u64) -> (u64, u64) {
        let start = event_time - event_time % self.size_ms;
        (start, start.saturating_add(self.size_ms))
    }
}

/// Statistics of the values of one closed window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Number of values.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Population standard deviation (divide by n), as SAX uses it.
    pub stddev: f64,
}

impl WindowStats {
    /// Computes the statistics of `values`, which it sorts first: sums are then taken in one
    /// fixed order, so the result does not depend on arrival order or on how records were
    /// spread over workers (floating-point addition is not associative). `None` when empty.
    pub fn compute(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Some(Self {
            count: values.len() as u64,
            mean,
            min: values[0],
            max: values[values.len() - 1],
            stddev: var.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_aligned_and_half_open() {
        let w = Tumbling::new(300_000);
        assert_eq!(w.assign(0), (0, 300_000));
        assert_eq!(w.assign(299_999), (0, 300_000));
        assert_eq!(w.assign(300_000), (300_000, 600_000));
        assert_eq!(
            w.assign(1_406_872_200_000),
            (1_406_872_200_000, 1_406_872_500_000)
        );
    }

    #[test]
    fn stats_match_hand_computation() {
        let s = WindowStats::compute(&mut [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.count, 8);
        assert_eq!(s.mean, 5.0);
        assert_eq!(s.stddev, 2.0);
        assert_eq!((s.min, s.max), (2.0, 9.0));
        assert!(WindowStats::compute(&mut []).is_none());
    }

    #[test]
    fn stats_do_not_depend_on_order() {
        let mut rng = fastrand::Rng::with_seed(1);
        let values: Vec<f64> = (0..1000).map(|_| rng.f64() * 1e6 - 3e5).collect();
        let reference = WindowStats::compute(&mut values.clone()).unwrap();
        for _ in 0..20 {
            let mut shuffled = values.clone();
            rng.shuffle(&mut shuffled);
            assert_eq!(WindowStats::compute(&mut shuffled).unwrap(), reference);
        }
    }
}

//! Event-time windows: which window a timestamp falls in, and the statistics of a closed window.

use crate::duration::label;
use crate::windows::sax::SaxParams;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Most windows one value may fall into (size / slide), to keep sliding windows sane.
pub const MAX_OVERLAP: u64 = 1000;

/// One kind of window computed for a sensor type: tumbling (`slide == size`) or sliding,
/// aligned to the Unix epoch. Window `k` covers `[k·slide, k·slide + size)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowSpec {
    size_ms: u64,
    slide_ms: u64,
    label: Arc<str>,
    /// SAX word per window, when configured.
    pub sax: Option<SaxParams>,
    /// Fields this window applies to; `None` means every field of the type.
    pub fields: Option<Vec<Arc<str>>>,
}

impl WindowSpec {
    /// Tumbling windows of `size`, labelled like `5m`.
    pub fn tumbling(size: Duration) -> Self {
        let size_ms = (size.as_millis() as u64).max(1);
        Self {
            size_ms,
            slide_ms: size_ms,
            label: label(size).into(),
            sax: None,
            fields: None,
        }
    }

    /// Sliding windows of `size` every `slide`, labelled like `1h/15m`. The caller checks
    /// `0 < slide <= size` and `size / slide <= MAX_OVERLAP` (see [`WindowSpec::check`]).
    pub fn sliding(size: Duration, slide: Duration) -> Self {
        let size_ms = (size.as_millis() as u64).max(1);
        let slide_ms = (slide.as_millis() as u64).clamp(1, size_ms);
        if slide_ms == size_ms {
            return Self::tumbling(size);
        }
        Self {
            size_ms,
            slide_ms,
            label: format!("{}/{}", label(size), label(slide)).into(),
            sax: None,
            fields: None,
        }
    }

    /// Why a size/slide pair is unusable, if it is.
    pub fn check(size: Duration, slide: Option<Duration>) -> Result<(), String> {
        if size.as_millis() == 0 {
            return Err("a window size must be at least 1ms".into());
        }
        if let Some(slide) = slide {
            if slide.as_millis() == 0 || slide > size {
                return Err(format!(
                    "slide {} must be between 1ms and the window size {}",
                    label(slide),
                    label(size)
                ));
            }
            let overlap = size.as_millis().div_ceil(slide.as_millis());
            if overlap > u128::from(MAX_OVERLAP) {
                return Err(format!(
                    "a {} window sliding every {} puts each value in {overlap} windows; the limit is {MAX_OVERLAP}",
                    label(size),
                    label(slide)
                ));
            }
        }
        Ok(())
    }

    /// Window size in milliseconds.
    pub fn size_ms(&self) -> u64 {
        self.size_ms
    }

    /// Slide in milliseconds (equal to the size for tumbling windows).
    pub fn slide_ms(&self) -> u64 {
        self.slide_ms
    }

    /// The label written in the store's `window` tag.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Whether this window applies to `field`.
    pub fn applies_to(&self, field: &str) -> bool {
        self.fields
            .as_ref()
            .is_none_or(|fs| fs.iter().any(|f| &**f == field))
    }

    /// The ends of every window holding `event_time`, earliest first. A window ends at
    /// `k·slide + size` and holds `[end - size, end)`.
    pub fn ends(&self, event_time: u64) -> impl Iterator<Item = u64> {
        let (size, slide) = (self.size_ms, self.slide_ms);
        // Windows k with k·slide <= t < k·slide + size.
        let last = event_time / slide;
        let first = if event_time < size {
            0
        } else {
            (event_time - size) / slide + 1
        };
        (first..=last).map(move |k| k * slide + size)
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
    /// Median (exact: linear interpolation between the closest ranks).
    pub p50: f64,
    /// 95th percentile (exact, same interpolation).
    pub p95: f64,
}

/// The statistics of a window by name, as rules read them (`<field>_<name>`).
pub const STATISTICS: [&str; 7] = ["count", "mean", "min", "max", "stddev", "p50", "p95"];

impl WindowStats {
    /// Each statistic with its name, in [`STATISTICS`] order.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        [
            ("count", self.count as f64),
            ("mean", self.mean),
            ("min", self.min),
            ("max", self.max),
            ("stddev", self.stddev),
            ("p50", self.p50),
            ("p95", self.p95),
        ]
    }
}

/// The `q` quantile (0..=1) of sorted values by linear interpolation between the closest
/// ranks (rank `q·(n−1)`, the common "type 7" definition used by NumPy and R). Windows keep
/// every value, so percentiles are exact, not sketched.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
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
            p50: quantile(values, 0.5),
            p95: quantile(values, 0.95),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_are_aligned_and_half_open() {
        let w = WindowSpec::tumbling(Duration::from_secs(300));
        let end = |t| w.ends(t).collect::<Vec<_>>();
        assert_eq!(end(0), [300_000]);
        assert_eq!(end(299_999), [300_000]);
        assert_eq!(end(300_000), [600_000]);
        assert_eq!(end(1_406_872_200_000), [1_406_872_500_000]);
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
    fn percentiles_interpolate_between_ranks() {
        let s = WindowStats::compute(&mut [15.0, 20.0, 35.0, 40.0, 50.0]).unwrap();
        // rank 0.5·4 = 2 → 35; rank 0.95·4 = 3.8 → 40 + 0.8·(50 − 40) = 48.
        assert_eq!((s.p50, s.p95), (35.0, 48.0));
        let s = WindowStats::compute(&mut [1.0, 2.0, 3.0, 4.0]).unwrap();
        // rank 1.5 → 2.5; rank 2.85 → 3.85.
        assert_eq!(s.p50, 2.5);
        assert!((s.p95 - 3.85).abs() < 1e-12);
        let s = WindowStats::compute(&mut [7.0]).unwrap();
        assert_eq!((s.p50, s.p95), (7.0, 7.0));
    }

    #[test]
    fn sliding_windows_hold_every_value_size_over_slide_times() {
        let w = WindowSpec::sliding(Duration::from_secs(3600), Duration::from_secs(900));
        assert_eq!(&**w.label(), "1h/15m");
        // 00:20 is in the windows ending 01:00, 01:15 (starts 00:15) but not 00:00-01:00? It is:
        // windows start at 23:15(prev day)… here from the epoch: starts 0, 15m → ends 1h, 1h15m.
        let t = 20 * 60_000;
        assert_eq!(w.ends(t).collect::<Vec<_>>(), vec![3_600_000, 4_500_000]);
        // Far from the epoch every value is in exactly size/slide = 4 windows.
        let t = 1_406_872_200_000;
        let ends: Vec<u64> = w.ends(t).collect();
        assert_eq!(ends.len(), 4);
        for e in &ends {
            assert!(e - 3_600_000 <= t && t < *e, "{e}");
            assert_eq!(e % 900_000, 0);
        }
        let tumbling = WindowSpec::tumbling(Duration::from_secs(300));
        assert_eq!(
            tumbling.ends(1_406_872_200_000).collect::<Vec<_>>(),
            vec![1_406_872_500_000]
        );
        assert_eq!(tumbling.ends(299_999).collect::<Vec<_>>(), vec![300_000]);
        assert_eq!(&**tumbling.label(), "5m");
    }

    #[test]
    fn bad_slides_are_refused() {
        let h = Duration::from_secs(3600);
        assert!(WindowSpec::check(h, Some(Duration::from_secs(900))).is_ok());
        assert!(WindowSpec::check(h, Some(Duration::from_secs(7200))).is_err());
        assert!(WindowSpec::check(h, Some(Duration::from_millis(1))).is_err());
        assert!(WindowSpec::check(Duration::ZERO, None).is_err());
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

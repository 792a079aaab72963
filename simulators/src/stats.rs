//! Load-test bookkeeping without I/O: per-sensor sequence tracking (loss and duplicates) and
//! latency percentiles.

use serde::Serialize;

/// Which sequence numbers of one sensor have arrived.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    max: Option<u64>,
    reordered: u64,
    last: Option<u64>,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    pub fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        if self.last.is_some_and(|l| seq < l) {
            self.reordered += 1;
        }
        self.last = Some(seq);
        self.max = self.max.max(Some(seq));
    }

    /// Distinct sequence numbers seen.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Arrivals of a number already seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Arrivals below the previous arrival's number.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Numbers missing below the highest seen (gaps).
    pub fn gaps(&self) -> u64 {
        self.max.map_or(0, |m| m + 1 - self.distinct)
    }

    /// Numbers missing out of `sent` (0..sent were published).
    pub fn lost(&self, sent: u64) -> u64 {
        let below = (0..sent).filter(|s| {
            let (word, bit) = ((s / 64) as usize, s % 64);
            self.seen.get(word).is_none_or(|w| w & (1 << bit) == 0)
        });
        below.count() as u64
    }
}

/// Latency samples in microseconds, summarised into percentiles at the end.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<u32>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latencies {
    /// Records one latency (negative values, from clock steps, count as zero).
    pub fn record_us(&mut self, us: i64) {
        self.samples.push(us.clamp(0, i64::from(u32::MAX)) as u32);
    }

    /// Nearest-rank percentiles.
    pub fn percentiles(&mut self) -> Percentiles {
        if self.samples.is_empty() {
            return Percentiles::default();
        }
        self.samples.sort_unstable();
        let n = self.samples.len();
        let at = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            f64::from(self.samples[rank - 1]) / 1000.0
        };
        Percentiles {
            count: n as u64,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Reads `"seq"` and `"sent_at"` from a JSON payload without parsing all of it: the load
/// test appends them last, and at hundreds of thousands of messages per second a full parse
/// would make the receiver the bottleneck. Returns `None` unless both are plain integers.
pub fn trace_fields(payload: &[u8]) -> Option<(u64, u64)> {
    fn int_after(hay: &[u8], key: &[u8]) -> Option<u64> {
        let at = hay.windows(key.len()).rposition(|w| w == key)? + key.len();
        let digits = hay[at..]
            .iter()
            .skip_while(|b| **b == b' ')
            .take_while(|b| b.is_ascii_digit());
        let mut n: u64 = 0;
        let mut any = false;
        for d in digits {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            any = true;
        }
        any.then_some(n)
    }
    Some((
        int_after(payload, b"\"seq\":")?,
        int_after(payload, b"\"sent_at\":")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_fields_are_found_without_a_full_parse() {
        assert_eq!(
            trace_fields(br#"{"a":"x","seq":12,"sent_at":1700000000000}"#),
            Some((12, 1_700_000_000_000))
        );
        assert_eq!(trace_fields(br#"[{"seq": 3, "sent_at": 4}]"#), Some((3, 4)));
        assert_eq!(trace_fields(br#"{"seq":"12","sent_at":1}"#), None);
        assert_eq!(trace_fields(br#"{"a":1}"#), None);
        assert_eq!(
            trace_fields(b"{\"seq\":99999999999999999999999,\"sent_at\":1}"),
            None
        );
    }

    #[test]
    fn gaps_duplicates_and_loss() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 3, 2, 7, 65] {
            t.record(s);
        }
        assert_eq!(t.distinct(), 6);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.reordered(), 1);
        assert_eq!(t.gaps(), 66 - 6);
        assert_eq!(t.lost(8), 3); // 4, 5, 6
        assert_eq!(t.lost(100), 100 - 6);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record_us(ms * 1000);
        }
        let p = l.percentiles();
        assert_eq!(
            (p.count, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(Latencies::default().percentiles(), Percentiles::default());
    }
}

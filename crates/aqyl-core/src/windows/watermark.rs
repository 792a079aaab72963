//! The watermark: how far event time has certainly progressed. Windows whose end it has
//! passed are closed; a record older than it is late.
//!
//! It is the largest event time seen minus the allowed lateness. Live, an idle input must not
//! hold windows open forever, so after `idle_timeout` of wall-clock silence the watermark
//! moves on at wall-clock speed from where it stood. It never moves backwards.

/// Watermark tracker (pure: the caller passes the time in ms on a monotonic clock, which only
/// measures how long the input has been idle).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    lateness_ms: u64,
    idle_timeout_ms: Option<u64>,
    max_event: Option<u64>,
    last_data_wall: i64,
    current: u64,
}

impl Watermark {
    /// A tracker allowing `lateness_ms` of disorder; `idle_timeout_ms = None` disables the
    /// wall-clock advance (replays and tests).
    pub fn new(lateness_ms: u64, idle_timeout_ms: Option<u64>) -> Self {
        Self {
            lateness_ms,
            idle_timeout_ms,
            max_event: None,
            last_data_wall: 0,
            current: 0,
        }
    }

    /// After a restore in a new process (whose monotonic clock starts afresh): the input
    /// counts as having been active at `now_ms`.
    pub fn rebase(&mut self, now_ms: i64) {
        self.last_data_wall = now_ms;
    }

    /// Records an event time seen at wall-clock `now_ms`.
    pub fn observe(&mut self, event_time: u64, now_ms: i64) {
        self.max_event = Some(self.max_event.map_or(event_time, |m| m.max(event_time)));
        self.last_data_wall = now_ms;
        self.refresh(now_ms);
    }

    /// Records that a peer saw `max_event` (workers share the largest event time).
    pub fn observe_max(&mut self, max_event: u64, now_ms: i64) {
        if self.max_event.is_none_or(|m| max_event > m) {
            self.max_event = Some(max_event);
            self.last_data_wall = now_ms;
        }
        self.refresh(now_ms);
    }

    /// The watermark at wall-clock `now_ms`.
    pub fn current(&mut self, now_ms: i64) -> u64 {
        self.refresh(now_ms);
        self.current
    }

    /// Whether a record at `event_time` is late (its windows may have closed).
    pub fn is_late(&self, event_time: u64) -> bool {
        event_time < self.current
    }

    /// The largest event time seen.
    pub fn max_event(&self) -> Option<u64> {
        self.max_event
    }

    fn refresh(&mut self, now_ms: i64) {
        let Some(max) = self.max_event else { return };
        let mut w = max.saturating_sub(self.lateness_ms);
        if let Some(idle) = self.idle_timeout_ms {
            let silent = now_ms.saturating_sub(self.last_data_wall).max(0) as u64;
            if silent > idle {
                w = w.saturating_add(silent - idle);
            }
        }
        self.current = self.current.max(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_max_event_by_lateness_and_never_regresses() {
        let mut w = Watermark::new(1_000, None);
        assert_eq!(w.current(0), 0);
        w.observe(10_000, 0);
        assert_eq!(w.current(0), 9_000);
        w.observe(5_000, 0);
        assert_eq!(w.current(0), 9_000);
        assert!(w.is_late(8_999));
        assert!(!w.is_late(9_000));
        assert_eq!(w.current(1_000_000), 9_000, "no idle advance when disabled");
    }

    #[test]
    fn idle_input_advances_by_wall_clock() {
        let mut w = Watermark::new(1_000, Some(5_000));
        w.observe(10_000, 100_000);
        assert_eq!(w.current(104_000), 9_000);
        assert_eq!(w.current(107_000), 11_000);
        // New data at an older wall-clock pace does not pull it back.
        w.observe(10_500, 107_000);
        assert_eq!(w.current(107_000), 11_000);
    }
}

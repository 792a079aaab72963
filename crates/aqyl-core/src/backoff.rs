//! Exponential backoff for reconnects and retries: 100 ms, doubling up to a ceiling, back to
//! 100 ms after a success. Shared by the MQTT connections, the store's spill replay and the
//! simulator's publisher.

use std::time::Duration;

/// The first wait, and the wait after a success.
pub const INITIAL: Duration = Duration::from_millis(100);

/// The wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at [`INITIAL`] and doubles up to `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            current: INITIAL.min(max),
            max,
        }
    }

    /// The wait to use now.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The wait to use now, doubling the next one (up to the ceiling).
    pub fn next_wait(&mut self) -> Duration {
        let now = self.current;
        self.current = (self.current * 2).min(self.max);
        now
    }

    /// After a success: the next wait is [`INITIAL`] again.
    pub fn reset(&mut self) {
        self.current = INITIAL.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_starts_again_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.current(), INITIAL);
    }
}

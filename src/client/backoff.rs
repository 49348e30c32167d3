//! Reconnect backoff with equal jitter (docs/protocol.md section 11).

use core::time::Duration;

use crate::rng::Jitter;

/// Counts failed attempts since the last healthy connection and draws their delays.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: Jitter,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
            rng: Jitter::new(seed),
        }
    }

    /// Failed attempts since the last healthy connection.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The connection proved healthy: the next failure starts from attempt 1 again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Counts one more attempt and draws its delay from `[d/2, d]`, where
    /// `d = min(max, base × 2^(k−1))` ("equal jitter": never below half the step, never above
    /// the maximum, and spread so that many clients do not reconnect in step).
    pub(crate) fn next_delay(&mut self) -> (u32, Duration) {
        self.attempt = self.attempt.saturating_add(1);
        let step = step(self.base, self.max, self.attempt);
        let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        let delay = self.rng.in_range(nanos - nanos / 2..=nanos);
        (self.attempt, Duration::from_nanos(delay))
    }
}

/// `min(max, base × 2^(attempt−1))`, without overflow.
pub(crate) fn step(base: Duration, max: Duration, attempt: u32) -> Duration {
    let mut d = base;
    // 64 doublings overflow any Duration, so the loop is short whatever the attempt.
    for _ in 1..attempt.min(64) {
        if d >= max {
            break;
        }
        d = d.saturating_mul(2);
    }
    d.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_doubles_up_to_the_maximum() {
        let (b, m) = (Duration::from_secs(5), Duration::from_secs(30));
        let steps: Vec<u64> = (1..=6).map(|k| step(b, m, k).as_secs()).collect();
        assert_eq!(steps, [5, 10, 20, 30, 30, 30]);
        assert_eq!(step(b, m, u32::MAX), m);
        assert_eq!(step(Duration::MAX, Duration::MAX, 2), Duration::MAX);
    }
}

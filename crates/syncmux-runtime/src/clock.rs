//! The only place of the crate that reads real time.

use core::time::Duration;

use syncmux::Instant;

/// Maps the runtime's monotonic clock to the crate's [`Instant`].
///
/// The origin is the Unix epoch (read once, when the clock is made), so instants the core
/// derives are wall-clock milliseconds (for example presence `updated_at`), while later
/// readings follow the monotonic clock and never jump backwards.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: std::time::Instant,
    origin_nanos: u64,
}

impl Clock {
    /// A clock anchored now.
    #[allow(clippy::disallowed_methods)] // the adapter's clock is the one allowed reader
    pub fn new() -> Clock {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            origin: std::time::Instant::now(),
            origin_nanos: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The current instant.
    #[allow(clippy::disallowed_methods)] // the adapter's clock is the one allowed reader
    pub fn now(&self) -> Instant {
        Instant::from_nanos(self.origin_nanos) + self.origin.elapsed()
    }

    /// Milliseconds since the Unix epoch, from the system's wall clock.
    #[allow(clippy::disallowed_methods)] // the adapter's clock is the one allowed reader
    pub fn unix_millis(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }

    /// The runtime instant of a core deadline (for a timer).
    pub fn to_std(&self, at: Instant) -> std::time::Instant {
        let offset = at.saturating_duration_since(Instant::from_nanos(self.origin_nanos));
        self.origin
            .checked_add(offset)
            // A deadline centuries away: a year from the origin is as good as never.
            .unwrap_or(self.origin + Duration::from_secs(365 * 24 * 3600))
    }

    /// A seed for jitter: the core may not read entropy, the adapter may. std's `RandomState`
    /// is seeded from the OS, so hashing the time with it gives a fresh seed per process.
    pub fn seed(&self) -> u64 {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(self.now())
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_std_inverts_now() {
        let clock = Clock::new();
        let now = clock.now();
        assert!(
            now.as_millis() > 1_600_000_000_000,
            "origin is the Unix epoch"
        );
        let back = clock.to_std(now + Duration::from_secs(2));
        assert!(back > clock.origin);
        assert_eq!(clock.to_std(Instant::ZERO), clock.origin);
    }
}

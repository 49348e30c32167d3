//! The client's timers, in one table: `poll_timeout` returns its minimum.

use crate::time::Instant;

/// Every timer the connection lifecycle uses. Request deadlines live beside them in an
/// ordered set (see `requests.rs`), so a thousand requests do not make this table a scan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Timer {
    /// No frame since the last keepalive ping: the connection is dead.
    Pong = 0,
    /// The open connection has lasted `healthy_after`: reset the backoff.
    Healthy = 1,
    /// Send the next keepalive ping.
    Ping = 2,
    /// Dial again after the backoff delay.
    Reconnect = 3,
}

impl Timer {
    /// In the order `handle_timeout` serves them: a dead connection is noticed before it is
    /// called healthy or pinged.
    pub(crate) const ALL: [Timer; 4] = [Timer::Pong, Timer::Healthy, Timer::Ping, Timer::Reconnect];
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Timers([Option<Instant>; 4]);

impl Timers {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    pub(crate) fn stop_all(&mut self) {
        self.0 = [None; 4];
    }

    /// Stops `timer` and says whether it was due at `now`.
    pub(crate) fn take_expired(&mut self, timer: Timer, now: Instant) -> bool {
        match self.0[timer as usize] {
            Some(at) if at <= now => {
                self.0[timer as usize] = None;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

//! Seedable randomness for jitter and keyed hashing.
//!
//! The core reads no OS entropy (the crate docs): every random choice comes from a
//! generator seeded by the configuration, so the same seed and inputs replay exactly.

use core::hash::BuildHasher;
use core::ops::RangeInclusive;

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use siphasher::sip::SipHasher13;

/// A deterministic pseudo-random generator, seeded from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(Xoshiro256PlusPlus);

#[allow(dead_code)] // used by the client and server state machines
impl Jitter {
    /// A generator that always produces the same sequence for the same `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Jitter(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// The next raw 64-bit value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A value drawn uniformly from `range` (both ends included).
    ///
    /// Uses the multiply-shift reduction: the bias is below 2^-64 per value, far below anything
    /// a backoff delay could show.
    pub(crate) fn in_range(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (lo, hi) = range.into_inner();
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        let draw = (u128::from(self.next_u64()) * u128::from(span + 1)) >> 64;
        // `draw < span + 1`, so it fits in u64.
        lo + draw as u64
    }

    /// A keyed hasher builder, so maps keyed by peer-chosen strings resist collision floods
    /// while staying deterministic for one seed.
    pub(crate) fn hasher(&mut self) -> KeyedHasher {
        KeyedHasher {
            k0: self.next_u64(),
            k1: self.next_u64(),
        }
    }
}

/// A [`BuildHasher`] with SipHash-1-3 keys drawn from a [`Jitter`] (the same function std's
/// `RandomState` uses, but with keys we choose, since we may not read OS entropy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyedHasher {
    k0: u64,
    k1: u64,
}

impl BuildHasher for KeyedHasher {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Jitter::new(7);
        let mut b = Jitter::new(7);
        for _ in 0..100 {
            assert_eq!(a.in_range(10..=20), b.in_range(10..=20));
        }
    }

    #[test]
    fn in_range_stays_in_range_and_covers_it() {
        let mut rng = Jitter::new(1);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = rng.in_range(3..=7);
            assert!((3..=7).contains(&v));
            seen[(v - 3) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(rng.in_range(9..=9), 9);
        let (hi, lo) = (2, 9);
        assert_eq!(rng.in_range(lo..=hi), 9);
        let _ = rng.in_range(0..=u64::MAX);
    }
}

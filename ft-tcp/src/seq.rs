//! TCP sequence numbers: 32-bit, compared modulo 2^32 (RFC 9293 §3.4).

use std::fmt;

/// A sequence number in one of a connection's spaces (client bytes `C`, server bytes `S`, or
/// one replica's local server space). Ordering is circular: `a < b` when `b - a` is in
/// `1..2^31`; [`SeqNumber::lt`] and friends implement it (no `Ord`, it is not transitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// `self + n`.
    pub fn plus(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(n))
    }

    /// `self - n`.
    pub fn minus(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(n))
    }

    /// Signed distance `self - other`.
    pub fn diff(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// `self < other` in circular order.
    pub fn lt(self, other: SeqNumber) -> bool {
        self.diff(other) < 0
    }

    /// `self <= other` in circular order.
    pub fn le(self, other: SeqNumber) -> bool {
        self.diff(other) <= 0
    }

    /// The later of two.
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if self.lt(other) {
            other
        } else {
            self
        }
    }

    /// The earlier of two.
    pub fn min(self, other: SeqNumber) -> SeqNumber {
        if self.lt(other) {
            self
        } else {
            other
        }
    }

    /// Bytes from `other` up to `self`, or 0 if `self` is not after `other`.
    pub fn since(self, other: SeqNumber) -> u32 {
        self.diff(other).max(0) as u32
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn order_survives_wraparound(a: u32, n in 1u32..(1 << 30)) {
            let x = SeqNumber(a);
            let y = x.plus(n);
            prop_assert!(x.lt(y) && !y.lt(x) && x.le(y));
            prop_assert_eq!(y.since(x), n);
            prop_assert_eq!(x.since(y), 0);
            prop_assert_eq!(x.max(y), y);
            prop_assert_eq!(x.min(y), x);
            prop_assert_eq!(y.minus(n), x);
        }
    }
}

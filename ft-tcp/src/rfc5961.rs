//! Blind in-window attacks (RFC 5961): which RSTs and SYNs a synchronized connection takes.
//!
//! smoltcp acts on any RST inside the receive window, and an off-path attacker who guesses
//! a sequence number within it could reset the connection. RFC 5961 narrows that: an RST
//! is taken only when its sequence number is exactly the next one expected (§3.2); one
//! elsewhere in the window gets a challenge ACK, which a legitimate peer answers with an
//! exact RST; one outside the window is dropped. A SYN on a synchronized connection always
//! gets a challenge ACK (§4.2). Linux does the same (`tcp_validate_incoming`).

use crate::seq::SeqNumber;

/// What to do with a client's RST or SYN on an open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Hand it to the stack: an RST at exactly the expected sequence number.
    Accept,
    /// Answer with a challenge ACK (rate-limited) and drop it.
    Challenge,
    /// Drop it silently: an RST outside the window.
    Drop,
}

/// The verdict on an RST with sequence number `seq`, for a receiver that expects one of
/// `exact` next (several when replicas may be at different points) and whose window ends
/// at `right_edge` (exclusive).
pub fn screen_rst(seq: SeqNumber, exact: &[SeqNumber], right_edge: SeqNumber) -> Screen {
    if exact.contains(&seq) {
        return Screen::Accept;
    }
    let Some(low) = exact.iter().copied().reduce(SeqNumber::min) else {
        return Screen::Drop;
    };
    if low.le(seq) && seq.lt(right_edge) {
        Screen::Challenge
    } else {
        Screen::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_exact_rst_is_taken() {
        let (n, edge) = (SeqNumber(1000), SeqNumber(1000 + 65535));
        assert_eq!(screen_rst(n, &[n], edge), Screen::Accept);
        assert_eq!(screen_rst(n.plus(1), &[n], edge), Screen::Challenge);
        assert_eq!(screen_rst(n.plus(65534), &[n], edge), Screen::Challenge);
        assert_eq!(screen_rst(n.plus(65535), &[n], edge), Screen::Drop);
        assert_eq!(screen_rst(n.minus(1), &[n], edge), Screen::Drop);
        assert_eq!(screen_rst(n, &[], edge), Screen::Drop);
    }

    #[test]
    fn any_members_next_byte_is_exact_and_the_window_wraps() {
        let n = SeqNumber(u32::MAX - 10);
        let edge = n.plus(100);
        assert_eq!(
            screen_rst(n.plus(20), &[n, n.plus(20)], edge),
            Screen::Accept
        );
        assert_eq!(
            screen_rst(n.plus(15), &[n, n.plus(20)], edge),
            Screen::Challenge
        );
        assert_eq!(screen_rst(SeqNumber(5), &[n], edge), Screen::Challenge);
    }
}

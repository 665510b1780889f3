//! Fuzz target for the datagram decoder (bolero).
//!
//! Under `cargo test` bolero runs the target on its corpus plus random inputs; with
//! `cargo bolero test --package ack-channel fuzz_open` it runs under libFuzzer (nightly).
//! Property: no input panics, and only datagrams sealed with the key ever open.

use ack_channel::{ClusterKey, Epoch, Heartbeat, MsgType, Opener, ReplicaId, Sealer, ServiceId};

#[test]
fn fuzz_open() {
    let key = ClusterKey::from_bytes([7; 32]);
    bolero::check!().for_each(|bytes: &[u8]| {
        let mut opener = Opener::new(key.clone());
        if let Ok((_, payload)) = opener.open(bytes) {
            // Reaching here by chance means forging a 128-bit MAC: treat as a failure.
            panic!("random bytes opened as a datagram: {payload:?}");
        }
        let _ = Heartbeat::parse(bytes);
        let _ = ack_channel::View::parse(bytes);
        let _ = ack_channel::parse_progress(bytes);
    });
}

#[test]
fn fuzz_open_mutated_real_datagrams() {
    let key = ClusterKey::from_bytes([7; 32]);
    bolero::check!()
        .with_type::<(Vec<u8>, u16, u8)>()
        .for_each(|(payload, pos, xor)| {
            let sealer = Sealer::new(key.clone(), ReplicaId(1), 1);
            let mut d = sealer.seal(MsgType::Heartbeat, ServiceId(0), Epoch(0), payload);
            let mut opener = Opener::new(key.clone());
            let at = usize::from(*pos) % d.len();
            d[at] ^= *xor;
            assert_eq!(opener.open(&d).is_ok(), *xor == 0);
        });
}

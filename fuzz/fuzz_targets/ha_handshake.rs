//! The HA link's login (`ha::link::handshake`), without sockets.
//!
//! Input: `[selector]` then bytes. Selector bit 0 clear: one side (bit 1: dialer or acceptor;
//! bit 2: whether its link is up) is fed the rest as frames `[kind, length, payload...]` from an
//! impostor who does not know the secret. Selector bit 0 set: an honest dialer and an honest
//! acceptor, with ids, modes, secrets, channel, attempt and nonces taken from the input, play
//! the whole login while one byte of one message in flight may be altered.
//!
//! Properties: nothing panics; a side never completes twice, nor after a failure, nor after a
//! frame that followed its completion; the impostor never gets a side to complete; a side never
//! completes with a peer whose secret differs; honest sides with matching configurations and
//! no alteration both complete; when both complete, they agree on who is who, the channel and
//! the attempt.
#![no_main]

use duet_target::ha::link::handshake::{Authenticated, Handshake, HandshakeError, Role};
use duet_target::ha::link::{Channel, FrameKind, LinkConfig, PeerAddr};
use libfuzzer_sys::fuzz_target;

fn cfg(ha_id: u8, mode: u8, secret: &[u8]) -> LinkConfig {
    let peer = PeerAddr::Listen(([127, 0, 0, 1], 1).into());
    LinkConfig::new(ha_id, mode, peer, secret.to_vec())
}

fn kind(b: u8) -> FrameKind {
    match b % 4 {
        0 => FrameKind::Login,
        1 => FrameKind::Ping,
        2 => FrameKind::Message,
        _ => FrameKind::Bye,
    }
}

/// Bytes taken from the front of the input, zero once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// One side against an impostor's frames.
fn lone(sel: u8, mut input: Input<'_>) {
    let c = cfg(1, 1, b"the pair's secret");
    let role = if sel & 2 == 0 {
        Role::Acceptor
    } else {
        Role::Dialer {
            channel: Channel::Control,
            attempt: 7,
        }
    };
    let link_up = sel & 4 != 0;
    let (mut hs, _) = Handshake::new(&c, role, [5; 32]).expect("a hello encodes");
    let mut failed = false;
    while !input.0.is_empty() {
        let k = kind(input.byte());
        let len = input.byte() as usize;
        let payload = input.bytes(len);
        match hs.on_frame(k, payload, link_up) {
            Ok(step) => {
                assert!(!failed, "a frame was accepted after a failure");
                assert!(step.done.is_none(), "an impostor completed a login: {step:?}");
            }
            Err(e) => {
                let _ = e.to_string();
                failed = true;
            }
        }
    }
}

/// An honest pair, with at most one altered byte.
fn pair(mut input: Input<'_>) {
    let (d_id, a_id) = (input.byte() % 4, input.byte() % 4);
    let (d_mode, a_mode) = (input.byte() % 4, input.byte() % 4);
    let shared_secret = input.byte() & 1 == 0;
    let d_secret = input.array::<4>();
    let a_secret = if shared_secret {
        d_secret
    } else {
        input.array::<4>()
    };
    let channel = if input.byte() & 1 == 0 {
        Channel::Control
    } else {
        Channel::Data
    };
    let attempt = u64::from_le_bytes(input.array());
    let (d_nonce, a_nonce) = (input.array::<32>(), input.array::<32>());
    // Which message (0-3) is altered, where, and how (xor 0: not at all).
    let (victim, at, xor) = (input.byte() % 4, input.byte() as usize, input.byte());

    let (dc, ac) = (cfg(d_id, d_mode, &d_secret), cfg(a_id, a_mode, &a_secret));
    let (mut dialer, first) =
        Handshake::new(&dc, Role::Dialer { channel, attempt }, d_nonce).expect("hello encodes");
    let (mut acceptor, none) = Handshake::new(&ac, Role::Acceptor, a_nonce).expect("encodes");
    assert!(none.is_none(), "the acceptor spoke first");
    let mut ends: [Option<Result<Authenticated, HandshakeError>>; 2] = [None, None];
    let mut altered = false;
    let (mut to, mut msg) = (1usize, first.expect("the dialer speaks first"));
    for n in 0..4u8 {
        if n == victim && xor != 0 && !msg.is_empty() {
            let i = at % msg.len();
            msg[i] ^= xor;
            altered = true;
        }
        let side = if to == 0 { &mut dialer } else { &mut acceptor };
        match side.on_frame(FrameKind::Login, &msg, false) {
            Ok(step) => {
                if let Some(done) = step.done {
                    assert!(ends[to].is_none(), "a side completed twice");
                    ends[to] = Some(Ok(done));
                }
                match step.send {
                    Some(next) => (to, msg) = (1 - to, next),
                    None => break,
                }
            }
            Err(e) => {
                ends[to] = Some(Err(e));
                break;
            }
        }
    }
    let done = |i: usize| match &ends[i] {
        Some(Ok(a)) => Some(*a),
        _ => None,
    };
    let (d_done, a_done) = (done(0), done(1));
    if d_secret != a_secret {
        assert!(
            d_done.is_none() && a_done.is_none(),
            "a login completed with different secrets: {ends:?}"
        );
    }
    let compatible = d_mode == a_mode
        && d_mode <= 2
        && (1..=2).contains(&d_id)
        && (1..=2).contains(&a_id)
        && d_id != a_id
        && d_secret == a_secret;
    if compatible && !altered {
        assert!(
            d_done.is_some() && a_done.is_some(),
            "an honest login failed: {ends:?}"
        );
    }
    if let (Some(d), Some(a)) = (d_done, a_done) {
        assert_eq!((d.peer_id, a.peer_id), (a_id, d_id), "{ends:?}");
        assert_eq!((d.channel, d.attempt), (channel, attempt), "{ends:?}");
        assert_eq!((a.channel, a.attempt), (channel, attempt), "{ends:?}");
    }
    // Nothing more is accepted by a side that has ended.
    for (i, side) in [&mut dialer, &mut acceptor].into_iter().enumerate() {
        if ends[i].is_some() {
            assert!(side.on_frame(FrameKind::Login, &msg, false).is_err());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        lone(sel, Input(rest));
    } else {
        pair(Input(rest));
    }
});

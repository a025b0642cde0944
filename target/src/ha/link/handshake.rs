//! The HA link's login: a mutual HMAC-SHA256 challenge-response, as a pure state machine over
//! the payloads of login frames.
//!
//! Every connection starts with it. The dialer sends a hello (link version, `ha_id`, `ha_mode`,
//! channel, attempt id and a fresh 32-byte nonce); the acceptor checks it and answers with its own
//! hello; the dialer proves that it knows the shared secret with HMAC-SHA256 over both nonces,
//! both ids, the mode, the channel and the attempt id; the acceptor checks that proof (in
//! constant time) and answers with its own, computed over the same fields in the other order. A
//! recorded proof is useless later (the nonces are fresh) and a proof cannot be reflected back
//! (the order of the fields differs). The acceptor never proves anything to a dialer that has not
//! proven itself first.
//!
//! Both sides run the same [`Handshake`]; its [`Role`] decides who says what. It touches no
//! socket, no clock and no random source: the nonce is passed in (the link draws it from
//! [`crate::entropy`]), frames come in through [`Handshake::on_frame`] and the messages to send
//! come out of it. The link's tasks (`super::login`) carry the bytes and apply the timeout.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::channel::Channel;
use super::config::LinkConfig;
use super::frame::{bye_text, FrameKind, LINK_VERSION};

/// A login message (the payload of a login frame), postcard-encoded. The encoding is part of
/// the wire protocol: variant 0 is the hello, variant 1 the proof. Public so that tests and
/// tools that speak the link (an impostor, in the hostile tests) build it from this one
/// definition.
#[derive(Debug, Serialize, Deserialize)]
pub enum LoginMsg {
    Hello(Hello),
    Proof { mac: [u8; 32] },
}

impl LoginMsg {
    /// The message's encoding, as a login frame carries it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, HandshakeError> {
        encode(self)
    }
}

/// A hello: who speaks, for which connection, with which fresh nonce.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub ha_id: u8,
    pub mode: u8,
    pub channel: Channel,
    /// Identifies one connection attempt of the dialer, so that the acceptor pairs the right
    /// control and data connections.
    pub attempt: u64,
    pub nonce: [u8; 32],
}

/// Which side of the connection this login runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This side dialed, for `channel` of its connection attempt `attempt`: it speaks first and
    /// proves itself first.
    Dialer {
        /// The channel this connection is for.
        channel: Channel,
        /// The attempt it belongs to (both channels of one attempt share it).
        attempt: u64,
    },
    /// This side accepted the connection: the dialer's hello names the channel and the attempt.
    Acceptor,
}

/// Why this side refused a peer's login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer speaks another link version.
    Version {
        /// The peer's version.
        peer: u16,
        /// Ours.
        ours: u16,
    },
    /// The peer runs another `ha_mode`.
    Mode {
        /// The peer's mode.
        peer: u8,
        /// Ours.
        ours: u8,
    },
    /// The peer has our `ha_id`.
    SameId(u8),
    /// The peer's `ha_id` is not 1 or 2.
    BadId(u8),
    /// The peer's proof is wrong: it does not know the secret.
    Auth,
    /// The peer's connection is for a channel this side already has connected.
    ChannelTaken(Channel),
    /// The acceptor answered for another channel or attempt than the dialer asked about.
    WrongAnswer,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Version { peer, ours } => {
                write!(f, "HA link: peer has link version {peer}, ours is {ours}")
            }
            Refusal::Mode { peer, ours } => {
                write!(f, "HA link: peer has ha_mode {peer}, ours is {ours}")
            }
            Refusal::SameId(id) => write!(f, "HA link: peer has the same ha_id {id}"),
            Refusal::BadId(id) => write!(f, "HA link: peer has invalid ha_id {id}"),
            Refusal::Auth => write!(f, "HA link: peer failed authentication"),
            Refusal::ChannelTaken(ch) => {
                write!(f, "HA link: peer's {ch} channel is already connected")
            }
            Refusal::WrongAnswer => write!(f, "HA link: peer answered for another connection"),
        }
    }
}

impl Refusal {
    /// The reason as the refused peer should read it (sent in the bye frame).
    pub fn for_peer(&self) -> String {
        match self {
            Refusal::Version { peer, ours } => {
                format!("peer has link version {ours}, ours is {peer}")
            }
            Refusal::Mode { peer, ours } => format!("peer has ha_mode {ours}, ours is {peer}"),
            Refusal::SameId(id) => format!("peer has the same ha_id {id}"),
            Refusal::BadId(id) => format!("our ha_id {id} is invalid"),
            Refusal::Auth => "authentication failed (different secret?)".to_string(),
            Refusal::ChannelTaken(ch) => format!("our {ch} channel is already connected"),
            Refusal::WrongAnswer => "answer for another connection".to_string(),
        }
    }
}

/// Why a login failed. Whatever the reason, the connection is closed; only after a
/// [`HandshakeError::Refused`] does this side first send a bye with [`Refusal::for_peer`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// This side refuses the peer.
    #[error("{0}")]
    Refused(Refusal),
    /// The peer refused this side; the reason from its bye.
    #[error("HA link: login refused by peer: {0}")]
    PeerRefused(String),
    /// The peer does not follow the login protocol (or the login already ended).
    #[error("HA link: login protocol error: {0}")]
    Protocol(String),
}

impl HandshakeError {
    /// Whether one side refused the other (as opposed to a broken protocol).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            HandshakeError::Refused(_) | HandshakeError::PeerRefused(_)
        )
    }
}

/// The peer of a completed login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The peer's `ha_id`.
    pub peer_id: u8,
    /// The channel of this connection.
    pub channel: Channel,
    /// The dialer's attempt this connection belongs to.
    pub attempt: u64,
}

/// What to do after a frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// A login message to send, as the payload of a login frame (before anything else).
    pub send: Option<Vec<u8>>,
    /// The login is complete: the peer is authenticated, the connection carries the link.
    pub done: Option<Authenticated>,
}

/// Where a login stands.
#[derive(Debug)]
enum State {
    /// Waiting for the peer's hello (the dialer has sent its own).
    AwaitHello,
    /// Hellos exchanged; waiting for the peer's proof.
    AwaitProof { theirs: Hello },
    /// Completed or failed: nothing more is accepted.
    Ended,
}

/// One side of the login on one connection. (No `Debug`: it holds the secret.)
pub struct Handshake<'a> {
    cfg: &'a LinkConfig,
    role: Role,
    nonce: [u8; 32],
    state: State,
}

impl<'a> Handshake<'a> {
    /// A login for `role` with this side's ids, mode and secret from `cfg` and a fresh, random
    /// `nonce`. Returns the message to send first: the dialer's hello (the acceptor says
    /// nothing until it has a hello).
    pub fn new(
        cfg: &'a LinkConfig,
        role: Role,
        nonce: [u8; 32],
    ) -> Result<(Self, Option<Vec<u8>>), HandshakeError> {
        let hs = Handshake {
            cfg,
            role,
            nonce,
            state: State::AwaitHello,
        };
        let first = match role {
            Role::Dialer { channel, attempt } => Some(hs.hello(channel, attempt)?),
            Role::Acceptor => None,
        };
        Ok((hs, first))
    }

    /// Takes the next frame from the peer. `link_up` tells whether this side's link is up
    /// right now: an acceptor then refuses any hello (its channel is taken).
    ///
    /// After an error, or once the login is done, every further frame is a protocol error.
    pub fn on_frame(
        &mut self,
        kind: FrameKind,
        payload: &[u8],
        link_up: bool,
    ) -> Result<Step, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Ended);
        let msg = match kind {
            FrameKind::Login => postcard::from_bytes(payload)
                .map_err(|e| protocol(format!("malformed login message: {e}")))?,
            FrameKind::Bye => return Err(HandshakeError::PeerRefused(bye_text(payload))),
            kind => return Err(protocol(format!("unexpected {kind:?} frame during login"))),
        };
        match (state, msg) {
            (State::AwaitHello, LoginMsg::Hello(theirs)) => self.on_hello(theirs, link_up),
            (State::AwaitHello, _) => Err(protocol("expected a hello".to_string())),
            (State::AwaitProof { theirs }, LoginMsg::Proof { mac }) => self.on_proof(theirs, mac),
            (State::AwaitProof { .. }, _) => Err(protocol("expected a proof".to_string())),
            (State::Ended, _) => Err(protocol("the login has ended".to_string())),
        }
    }

    fn on_hello(&mut self, theirs: Hello, link_up: bool) -> Result<Step, HandshakeError> {
        check_hello(self.cfg, &theirs).map_err(HandshakeError::Refused)?;
        let send = match self.role {
            Role::Dialer { channel, attempt } => {
                if theirs.channel != channel || theirs.attempt != attempt {
                    return Err(HandshakeError::Refused(Refusal::WrongAnswer));
                }
                self.proof_of_us(&theirs)?
            }
            Role::Acceptor => {
                if link_up {
                    return Err(HandshakeError::Refused(Refusal::ChannelTaken(
                        theirs.channel,
                    )));
                }
                self.hello(theirs.channel, theirs.attempt)?
            }
        };
        self.state = State::AwaitProof { theirs };
        Ok(Step {
            send: Some(send),
            done: None,
        })
    }

    fn on_proof(&mut self, theirs: Hello, mac: [u8; 32]) -> Result<Step, HandshakeError> {
        let expected = proof(
            &self.cfg.secret,
            &theirs.nonce,
            &self.nonce,
            theirs.ha_id,
            self.cfg.ha_id,
            self.cfg.mode,
            theirs.channel,
            theirs.attempt,
        );
        if expected.verify_slice(&mac).is_err() {
            return Err(HandshakeError::Refused(Refusal::Auth));
        }
        // The acceptor proves itself only now, to a dialer that has proven itself.
        let send = match self.role {
            Role::Dialer { .. } => None,
            Role::Acceptor => Some(self.proof_of_us(&theirs)?),
        };
        Ok(Step {
            send,
            done: Some(Authenticated {
                peer_id: theirs.ha_id,
                channel: theirs.channel,
                attempt: theirs.attempt,
            }),
        })
    }

    /// Our hello for `channel` of `attempt`.
    fn hello(&self, channel: Channel, attempt: u64) -> Result<Vec<u8>, HandshakeError> {
        encode(&LoginMsg::Hello(Hello {
            version: LINK_VERSION,
            ha_id: self.cfg.ha_id,
            mode: self.cfg.mode,
            channel,
            attempt,
            nonce: self.nonce,
        }))
    }

    /// Our proof, for the connection that `theirs` describes (the dialer's channel and attempt,
    /// which both hellos carry once they have been checked).
    fn proof_of_us(&self, theirs: &Hello) -> Result<Vec<u8>, HandshakeError> {
        let mac = proof(
            &self.cfg.secret,
            &self.nonce,
            &theirs.nonce,
            self.cfg.ha_id,
            theirs.ha_id,
            self.cfg.mode,
            theirs.channel,
            theirs.attempt,
        )
        .finalize()
        .into_bytes()
        .into();
        encode(&LoginMsg::Proof { mac })
    }
}

fn protocol(why: String) -> HandshakeError {
    HandshakeError::Protocol(why)
}

fn encode(msg: &LoginMsg) -> Result<Vec<u8>, HandshakeError> {
    postcard::to_stdvec(msg).map_err(|e| protocol(format!("cannot encode login message: {e}")))
}

/// Whether a peer's hello may go on: same version and mode, the other valid `ha_id`.
fn check_hello(cfg: &LinkConfig, hello: &Hello) -> Result<(), Refusal> {
    if hello.version != LINK_VERSION {
        return Err(Refusal::Version {
            peer: hello.version,
            ours: LINK_VERSION,
        });
    }
    if hello.mode != cfg.mode {
        return Err(Refusal::Mode {
            peer: hello.mode,
            ours: cfg.mode,
        });
    }
    if !(1..=2).contains(&hello.ha_id) {
        return Err(Refusal::BadId(hello.ha_id));
    }
    if hello.ha_id == cfg.ha_id {
        return Err(Refusal::SameId(hello.ha_id));
    }
    Ok(())
}

/// The login proof of `prover` for one connection.
#[allow(clippy::too_many_arguments)]
fn proof(
    secret: &[u8],
    prover_nonce: &[u8; 32],
    verifier_nonce: &[u8; 32],
    prover_id: u8,
    verifier_id: u8,
    mode: u8,
    channel: Channel,
    attempt: u64,
) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"duet-ha-link-login");
    mac.update(&LINK_VERSION.to_be_bytes());
    mac.update(prover_nonce);
    mac.update(verifier_nonce);
    mac.update(&[prover_id, verifier_id, mode, channel.index() as u8]);
    mac.update(&attempt.to_be_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::link::PeerAddr;
    use duet_core::ha::peer_of;

    fn cfg(ha_id: u8, mode: u8, secret: &[u8]) -> LinkConfig {
        let peer = PeerAddr::Listen("127.0.0.1:1".parse().unwrap());
        LinkConfig::new(ha_id, mode, peer, secret.to_vec())
    }

    const DIALER: Role = Role::Dialer {
        channel: Channel::Data,
        attempt: 0x1234_5678_9abc,
    };

    fn login(payload: &[u8]) -> (FrameKind, Vec<u8>) {
        (FrameKind::Login, payload.to_vec())
    }

    /// Plays a whole login between `d` (dialing) and `a` (accepting); the result of each side.
    fn run(d: &LinkConfig, a: &LinkConfig) -> [Result<Authenticated, HandshakeError>; 2] {
        let (mut dialer, first) = Handshake::new(d, DIALER, [1; 32]).unwrap();
        let (mut acceptor, none) = Handshake::new(a, Role::Acceptor, [2; 32]).unwrap();
        assert_eq!(none, None, "the acceptor speaks second");
        let sides = [&mut dialer, &mut acceptor];
        let mut ends: [Option<Result<Authenticated, HandshakeError>>; 2] = [None, None];
        // Whose turn it is to receive, and what.
        let (mut to, mut msg) = (1, first.expect("the dialer speaks first"));
        loop {
            match sides[to].on_frame(FrameKind::Login, &msg, false) {
                Ok(step) => {
                    if let Some(done) = step.done {
                        ends[to] = Some(Ok(done));
                    }
                    match step.send {
                        Some(next) => (to, msg) = (1 - to, next),
                        None => break,
                    }
                }
                Err(e) => {
                    // The refused side reads the bye.
                    if let HandshakeError::Refused(r) = &e {
                        let bye =
                            sides[1 - to].on_frame(FrameKind::Bye, r.for_peer().as_bytes(), false);
                        ends[1 - to] = Some(bye.map(|_| unreachable!("a bye ends the login")));
                    }
                    ends[to] = Some(Err(e));
                    break;
                }
            }
        }
        ends.map(|e| e.unwrap_or(Err(protocol("unfinished".to_string()))))
    }

    #[test]
    fn good_login_both_ways() {
        for (d, a) in [(1, 2), (2, 1)] {
            let [dialer, acceptor] = run(&cfg(d, 1, b"secret"), &cfg(a, 1, b"secret"));
            let expect = |peer_id| Authenticated {
                peer_id,
                channel: Channel::Data,
                attempt: 0x1234_5678_9abc,
            };
            assert_eq!(dialer, Ok(expect(peer_of(d))));
            assert_eq!(acceptor, Ok(expect(peer_of(a))));
        }
    }

    #[test]
    fn wrong_secret_is_refused_by_the_acceptor_before_it_proves_anything() {
        let [dialer, acceptor] = run(&cfg(2, 1, b"guess"), &cfg(1, 1, b"secret"));
        assert_eq!(acceptor, Err(HandshakeError::Refused(Refusal::Auth)));
        match dialer {
            Err(HandshakeError::PeerRefused(why)) => {
                assert!(why.contains("authentication"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_acceptor_that_does_not_know_the_secret_is_refused_by_the_dialer() {
        let c = cfg(1, 1, b"secret");
        let (mut dialer, hello) = Handshake::new(&c, DIALER, [1; 32]).unwrap();
        // An impostor acceptor: a valid hello, then a proof made with another secret.
        let impostor = cfg(2, 1, b"other");
        let (mut acc, _) = Handshake::new(&impostor, Role::Acceptor, [2; 32]).unwrap();
        let their_hello = acc
            .on_frame(FrameKind::Login, &hello.unwrap(), false)
            .unwrap();
        let our_proof = dialer
            .on_frame(FrameKind::Login, &their_hello.send.unwrap(), false)
            .unwrap();
        assert!(our_proof.done.is_none());
        let forged = proof(
            b"other",
            &[2; 32],
            &[1; 32],
            2,
            1,
            1,
            Channel::Data,
            0x1234_5678_9abc,
        )
        .finalize()
        .into_bytes()
        .into();
        let forged = encode(&LoginMsg::Proof { mac: forged }).unwrap();
        assert_eq!(
            dialer.on_frame(FrameKind::Login, &forged, false),
            Err(HandshakeError::Refused(Refusal::Auth))
        );
        // The dialer's own proof, reflected back, does not pass either.
        let (mut dialer, hello) = Handshake::new(&c, DIALER, [1; 32]).unwrap();
        let ours = cfg(2, 1, b"secret");
        let (mut acc, _) = Handshake::new(&ours, Role::Acceptor, [1; 32]).unwrap();
        let their_hello = acc
            .on_frame(FrameKind::Login, &hello.unwrap(), false)
            .unwrap();
        let mine = dialer
            .on_frame(FrameKind::Login, &their_hello.send.unwrap(), false)
            .unwrap()
            .send
            .unwrap();
        assert_eq!(
            dialer.on_frame(FrameKind::Login, &mine, false),
            Err(HandshakeError::Refused(Refusal::Auth))
        );
    }

    #[test]
    fn other_mode_equal_id_and_bad_id_are_refused() {
        let [dialer, acceptor] = run(&cfg(2, 2, b"s"), &cfg(1, 1, b"s"));
        assert_eq!(
            acceptor,
            Err(HandshakeError::Refused(Refusal::Mode { peer: 2, ours: 1 }))
        );
        assert_eq!(
            dialer,
            Err(HandshakeError::PeerRefused(
                "peer has ha_mode 1, ours is 2".to_string()
            ))
        );
        let [_, acceptor] = run(&cfg(1, 1, b"s"), &cfg(1, 1, b"s"));
        assert_eq!(acceptor, Err(HandshakeError::Refused(Refusal::SameId(1))));
        for bad in [0, 3, 255] {
            let mut c = cfg(2, 1, b"s");
            c.ha_id = bad;
            let [_, acceptor] = run(&c, &cfg(1, 1, b"s"));
            assert_eq!(acceptor, Err(HandshakeError::Refused(Refusal::BadId(bad))));
        }
    }

    /// A dialer's hello, encoded by hand the way a peer that only knows the wire format
    /// writes it (postcard: variant 0, then varints and bytes).
    /// Our link version, as a hello's low byte.
    const V: u8 = LINK_VERSION as u8;

    fn raw_hello(version: u8, ha_id: u8, mode: u8, channel: u8, attempt: u8) -> Vec<u8> {
        let mut p = vec![0u8, version, ha_id, mode, channel, attempt];
        p.extend_from_slice(&[9; 32]);
        p
    }

    #[test]
    fn hand_encoded_hellos_are_understood_and_checked() {
        let c = cfg(1, 1, b"s");
        let (mut acc, _) = Handshake::new(&c, Role::Acceptor, [2; 32]).unwrap();
        let step = acc
            .on_frame(FrameKind::Login, &raw_hello(V, 2, 1, 1, 5), false)
            .unwrap();
        // Our answer names the same channel and attempt.
        assert_eq!(&step.send.unwrap()[..6], &[0, V, 1, 1, 1, 5]);
        let (mut acc, _) = Handshake::new(&c, Role::Acceptor, [2; 32]).unwrap();
        assert_eq!(
            acc.on_frame(FrameKind::Login, &raw_hello(9, 2, 1, 0, 0), false),
            Err(HandshakeError::Refused(Refusal::Version {
                peer: 9,
                ours: LINK_VERSION
            }))
        );
        let (mut acc, _) = Handshake::new(&c, Role::Acceptor, [2; 32]).unwrap();
        assert_eq!(
            acc.on_frame(FrameKind::Login, &raw_hello(V, 2, 1, 0, 0), true),
            Err(HandshakeError::Refused(Refusal::ChannelTaken(
                Channel::Control
            )))
        );
    }

    #[test]
    fn an_answer_for_another_connection_is_refused() {
        let c = cfg(1, 1, b"s");
        for (channel, attempt) in [(0, 0x3c), (1, 0x3d)] {
            let (mut dialer, _) = Handshake::new(
                &c,
                Role::Dialer {
                    channel: Channel::Data,
                    attempt: 0x3c,
                },
                [1; 32],
            )
            .unwrap();
            assert_eq!(
                dialer.on_frame(
                    FrameKind::Login,
                    &raw_hello(V, 2, 1, channel, attempt),
                    false
                ),
                Err(HandshakeError::Refused(Refusal::WrongAnswer))
            );
        }
    }

    #[test]
    fn truncated_garbage_and_out_of_order_messages_are_protocol_errors() {
        let c = cfg(1, 1, b"s");
        let hello = raw_hello(V, 2, 1, 0, 0);
        let cases: Vec<(FrameKind, Vec<u8>)> = vec![
            login(&hello[..10]),
            login(&[]),
            login(&[7, 1, 2, 3]),
            login(&{
                let mut h = hello.clone();
                h[4] = 5; // no such channel
                h
            }),
            login(&[1; 33]), // a proof before a hello
            (FrameKind::Ping, Vec::new()),
            (FrameKind::Message, b"hello".to_vec()),
        ];
        for (kind, payload) in cases {
            for role in [Role::Acceptor, DIALER] {
                let (mut hs, _) = Handshake::new(&c, role, [2; 32]).unwrap();
                let r = hs.on_frame(kind, &payload, false);
                assert!(
                    matches!(r, Err(HandshakeError::Protocol(_))),
                    "{kind:?} {payload:?}: {r:?}"
                );
                // Nothing is accepted after a failure, not even a good hello.
                assert!(matches!(
                    hs.on_frame(FrameKind::Login, &hello, false),
                    Err(HandshakeError::Protocol(_))
                ));
            }
        }
        // A hello where a proof is due.
        let (mut acc, _) = Handshake::new(&c, Role::Acceptor, [2; 32]).unwrap();
        acc.on_frame(FrameKind::Login, &hello, false).unwrap();
        assert_eq!(
            acc.on_frame(FrameKind::Login, &hello, false),
            Err(protocol("expected a proof".to_string()))
        );
    }

    #[test]
    fn a_bye_is_the_peers_refusal_bounded_and_printable() {
        let c = cfg(1, 1, b"s");
        let (mut dialer, _) = Handshake::new(&c, DIALER, [1; 32]).unwrap();
        let mut reason = b"no\x1b thanks".to_vec();
        reason.extend_from_slice(&[b'x'; 1000]);
        match dialer.on_frame(FrameKind::Bye, &reason, false) {
            Err(e @ HandshakeError::PeerRefused(_)) => {
                assert!(e.is_refusal());
                let HandshakeError::PeerRefused(text) = e else {
                    unreachable!()
                };
                assert!(text.starts_with("no thanks"), "{text}");
                assert!(text.len() <= super::super::frame::MAX_BYE_REASON);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proofs_are_directional() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let p1 = proof(b"s", &a, &b, 1, 2, 1, Channel::Control, 7)
            .finalize()
            .into_bytes();
        let p2 = proof(b"s", &b, &a, 2, 1, 1, Channel::Control, 7)
            .finalize()
            .into_bytes();
        assert_ne!(p1, p2);
        assert!(proof(b"s", &a, &b, 1, 2, 1, Channel::Control, 7)
            .verify_slice(&p1)
            .is_ok());
        assert!(proof(b"t", &a, &b, 1, 2, 1, Channel::Control, 7)
            .verify_slice(&p1)
            .is_err());
        assert!(proof(b"s", &a, &b, 1, 2, 1, Channel::Data, 7)
            .verify_slice(&p1)
            .is_err());
    }
}

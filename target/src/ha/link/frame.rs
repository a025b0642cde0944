//! The HA link's frame codec: the 12-byte header, the frame kinds, the limits, and frames as
//! they are received ([`Frame`]) and queued for sending ([`Outgoing`]).
//!
//! Every frame is a 12-byte header followed by its payload (all integers big-endian):
//!
//! ```text
//! magic u32 = "DUET" | version u16 | kind u8 | flags u8 (0) | length u32 | payload[length]
//! ```
//!
//! Kinds: 1 login (a postcard-encoded login message, see [`super::handshake`]), 2 ping (empty),
//! 3 message (the payload handed to `LinkHandle::send`), 4 bye (a UTF-8 reason, then the
//! connection closes). Frames with another magic, version, kind or flags, or longer than
//! [`MAX_PAYLOAD`] ([`MAX_LOGIN_PAYLOAD`] before the login completes), are refused.
//!
//! A payload may be queued in two parts (a message's encoding and its bulk data, see
//! [`crate::ha::proto`]): they are written one after the other, never copied together.
//!
//! Pure: bytes in, bytes out. The sockets that carry the frames are in [`super::wire`].

use bytes::Bytes;

/// Version of the HA link's framing, login and message layout, checked on every frame and at
/// login (2: a message's bulk data follows its encoding, see [`crate::ha::proto`]; 3: mode-1
/// grant requests and answers carry the request's id and the grant's epoch).
pub const LINK_VERSION: u16 = 3;

/// The first four bytes of every frame: `"DUET"`.
pub const FRAME_MAGIC: u32 = u32::from_be_bytes(*b"DUET");

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 12;

/// Largest payload a frame may carry (16 MiB); longer frames are refused.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Largest payload accepted before the login completes: nobody unauthenticated makes us allocate
/// more than this.
pub const MAX_LOGIN_PAYLOAD: usize = 1024;

/// Longest bye reason that is kept (bytes).
pub const MAX_BYE_REASON: usize = 256;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A postcard-encoded login message.
    Login = 1,
    /// Keepalive, empty.
    Ping = 2,
    /// A message for the layer above.
    Message = 3,
    /// The sender closes the connection; the payload is the reason (UTF-8).
    Bye = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FrameKind::Login),
            2 => Some(FrameKind::Ping),
            3 => Some(FrameKind::Message),
            4 => Some(FrameKind::Bye),
            _ => None,
        }
    }
}

/// A frame header that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not [`FRAME_MAGIC`].
    #[error("not a Duet HA link frame (magic {0:#010x})")]
    BadMagic(u32),
    /// The frame's version is not [`LINK_VERSION`].
    #[error("unsupported HA link frame version {0} (ours is {LINK_VERSION})")]
    UnsupportedVersion(u16),
    /// The kind byte is unknown.
    #[error("unknown HA link frame kind {0}")]
    UnknownKind(u8),
    /// Reserved flag bits are set.
    #[error("unknown HA link frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// The claimed payload length exceeds the limit.
    #[error("HA link frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The claimed payload length.
        len: u32,
        /// The limit in force.
        max: usize,
    },
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Encodes the header (version [`LINK_VERSION`], no flags).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&LINK_VERSION.to_be_bytes());
        h[6] = self.kind as u8;
        h[7] = 0;
        h[8..12].copy_from_slice(&self.len.to_be_bytes());
        h
    }

    /// Decodes and checks a header; `max` is the largest payload accepted.
    pub fn decode(h: &[u8; HEADER_LEN], max: usize) -> Result<Self, FrameError> {
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([h[4], h[5]]);
        if version != LINK_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = FrameKind::from_u8(h[6]).ok_or(FrameError::UnknownKind(h[6]))?;
        if h[7] != 0 {
            return Err(FrameError::UnknownFlags(h[7]));
        }
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if len as u64 > max as u64 {
            return Err(FrameError::TooLarge { len, max });
        }
        Ok(FrameHeader { kind, len })
    }
}

/// One received frame; the payload shares the read buffer's memory.
pub(super) struct Frame {
    pub(super) kind: FrameKind,
    pub(super) payload: Bytes,
}

impl Frame {
    /// Bytes on the wire, header included.
    pub(super) fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// One frame queued for a writer task: header and payload (in two parts, the second often
/// empty) are written with one vectored write, the payload is not copied.
pub(super) struct Outgoing {
    pub(super) header: [u8; HEADER_LEN],
    pub(super) payload: Bytes,
    pub(super) more: Bytes,
    pub(super) kind: FrameKind,
}

impl Outgoing {
    /// A frame with a payload in one part.
    pub(super) fn new(kind: FrameKind, payload: Bytes) -> Self {
        Self::in_parts(kind, payload, Bytes::new())
    }

    /// A frame whose payload is `payload` followed by `more`. The caller keeps the total within
    /// [`MAX_PAYLOAD`].
    pub(super) fn in_parts(kind: FrameKind, payload: Bytes, more: Bytes) -> Self {
        let header = FrameHeader {
            kind,
            len: (payload.len() + more.len()) as u32,
        }
        .encode();
        Outgoing {
            header,
            payload,
            more,
            kind,
        }
    }

    /// Bytes on the wire, header included.
    pub(super) fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len() + self.more.len()
    }
}

/// A bye frame's reason as it may be logged: at most [`MAX_BYE_REASON`] bytes, no control
/// characters.
pub fn bye_text(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(MAX_BYE_REASON)];
    String::from_utf8_lossy(cut)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FrameHeader {
            kind: FrameKind::Message,
            len: 1234,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"DUET");
        assert_eq!(FrameHeader::decode(&bytes, MAX_PAYLOAD), Ok(h));
    }

    #[test]
    fn header_refusals() {
        let good = FrameHeader {
            kind: FrameKind::Ping,
            len: 0,
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadMagic(_))
        ));
        // A peer of a previous version (messages without a separate bulk part, or grants
        // without their epoch) is refused.
        for old in [1, 2] {
            let mut b = good;
            b[5] = old;
            assert_eq!(
                FrameHeader::decode(&b, MAX_PAYLOAD),
                Err(FrameError::UnsupportedVersion(u16::from(old)))
            );
        }
        let mut b = good;
        b[6] = 9;
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::UnknownKind(9))
        );
        let mut b = good;
        b[7] = 1;
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::UnknownFlags(1))
        );
        let mut b = good;
        b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: MAX_PAYLOAD
            })
        );
        let err = FrameHeader::decode(&b, MAX_PAYLOAD)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds the maximum"), "{err}");
    }

    #[test]
    fn outgoing_header_counts_both_parts() {
        let o = Outgoing::in_parts(
            FrameKind::Message,
            Bytes::from_static(b"head"),
            Bytes::from_static(b"bulk!"),
        );
        let h = FrameHeader::decode(&o.header, MAX_PAYLOAD).unwrap();
        assert_eq!((h.kind, h.len), (FrameKind::Message, 9));
        assert_eq!(o.wire_len(), HEADER_LEN + 9);
    }

    #[test]
    fn bye_text_is_bounded_and_printable() {
        let long = vec![b'a'; 10_000];
        assert_eq!(bye_text(&long).len(), MAX_BYE_REASON);
        assert_eq!(bye_text(b"bad\n\x1b[31mred"), "bad[31mred");
    }
}

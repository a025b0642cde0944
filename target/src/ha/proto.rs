//! What the two controllers say to each other over the HA link, above the link's framing.
//!
//! Control channel: the HA node's own messages ([`HaMsg`]), replicated LU state and grant
//! releases. Data channel: forwarded commands and their answers (mode 2 carries the data, mode 1
//! only the command and the plan, modes 0-2 forward everything a secondary cannot answer alone).
//! Everything is encoded with postcard; a message that does not decode is logged and dropped.
//!
//! A message's bulk data (a forwarded command's Data-Out, an answer's Data-In) travels apart from
//! its postcard encoding, so that it is neither copied into the message nor out of it: the
//! payload of a link frame is the encoding's length (u32, little-endian), the encoding (with the
//! bulk field empty) and then the bulk bytes. The sender hands both parts to one vectored write;
//! the receiver's bulk field is a slice of the received frame.

use bytes::Bytes;
use duet_core::ha::HaMsg;
use duet_core::scsi::{IoPlan, Nexus, SharedLuState};
use duet_core::LunNumber;
use serde::{Deserialize, Serialize};

/// One message between the controllers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LinkMsg {
    /// A message of the HA state machines.
    Ha(HaMsg),
    /// The primary's replicated LU state after a command that may have changed it.
    LuSync {
        lun: LunNumber,
        state: SharedLuState,
    },
    /// A request from the secondary to the primary.
    Request { id: u64, req: PeerRequest },
    /// The primary's answer to request `id`.
    Reply { id: u64, reply: PeerReply },
    /// Mode 1: the secondary finished the medium phase of grant `grant`.
    Release { grant: u64 },
}

/// What a secondary asks of the primary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Run a command received on the secondary's port for `nexus`. With `plan_only` (mode 1) the
    /// primary only prepares it; a medium phase comes back as a [`PeerReply::Plan`] that the
    /// secondary runs on the shared backend. `data_out` is empty when it was left out (mode 1
    /// writes); `data_len` is its real length. `ask` is the id of the grant request this is
    /// (core's `Grantee::ask`, mode 1), 0 without `plan_only`.
    Execute {
        lun: LunNumber,
        nexus: Nexus,
        cdb: Bytes,
        data_out: Bytes,
        data_len: u32,
        plan_only: bool,
        ask: u64,
    },
    /// A LOGICAL UNIT RESET (or target reset) received on the secondary.
    Reset { lun: LunNumber, cold: bool },
    /// A nexus of the secondary ended (logout or connection loss).
    NexusLost { lun: LunNumber, nexus: Nexus },
}

/// The primary's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// The command finished.
    Done {
        status: u8,
        sense: Option<Bytes>,
        data_in: Bytes,
        wanted_len: u32,
    },
    /// Mode 1: the answer to grant request `ask`: run `plan` on the shared backend under
    /// `grant`, given at `epoch` (core's `Answer::Granted`), then release `grant`.
    Plan {
        ask: u64,
        grant: u64,
        epoch: u64,
        plan: IoPlan,
    },
    /// The primary cannot take it (not primary any more, no such LUN): try again later.
    Unavailable { reason: String },
    /// An acknowledgement without data (reset, nexus lost).
    Ack,
}

/// A message encoded for the link: `head` (length and postcard encoding) and `bulk`, sent one
/// after the other in one frame.
#[derive(Debug)]
pub struct Encoded {
    pub head: Bytes,
    pub bulk: Bytes,
}

/// Why a received payload is not a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes is too short for its length field")]
    Short(usize),
    #[error("encoding of {head} bytes does not fit in a payload of {len}")]
    HeadTooLong { head: usize, len: usize },
    #[error("{0} bytes of bulk data after a message that carries none")]
    UnexpectedBulk(usize),
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
}

/// The bulk field of `msg`, if its kind has one.
fn bulk_of(msg: &mut LinkMsg) -> Option<&mut Bytes> {
    match msg {
        LinkMsg::Request {
            req: PeerRequest::Execute { data_out, .. },
            ..
        } => Some(data_out),
        LinkMsg::Reply {
            reply: PeerReply::Done { data_in, .. },
            ..
        } => Some(data_in),
        _ => None,
    }
}

/// Encodes a message for the link; its bulk data is moved out, not copied.
pub fn encode(mut msg: LinkMsg) -> Result<Encoded, postcard::Error> {
    let bulk = bulk_of(&mut msg).map(std::mem::take).unwrap_or_default();
    let mut head = postcard::to_extend(&msg, vec![0u8; 4])?;
    let len = u32::try_from(head.len() - 4).map_err(|_| postcard::Error::SerializeBufferFull)?;
    head[..4].copy_from_slice(&len.to_le_bytes());
    Ok(Encoded {
        head: Bytes::from(head),
        bulk,
    })
}

/// Decodes a message from a received payload; its bulk data is a slice of `payload`.
pub fn decode(payload: &Bytes) -> Result<LinkMsg, DecodeError> {
    let Some(len) = payload.get(..4) else {
        return Err(DecodeError::Short(payload.len()));
    };
    let head = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if head > payload.len() - 4 {
        return Err(DecodeError::HeadTooLong {
            head,
            len: payload.len(),
        });
    }
    let mut msg: LinkMsg = postcard::from_bytes(&payload[4..4 + head])?;
    let bulk = payload.slice(4 + head..);
    match bulk_of(&mut msg) {
        Some(field) => *field = bulk,
        None if bulk.is_empty() => {}
        None => return Err(DecodeError::UnexpectedBulk(bulk.len())),
    }
    Ok(msg)
}

impl Encoded {
    /// Both parts in one buffer (a copy: for tests and tools, not the data path).
    pub fn to_vec(&self) -> Vec<u8> {
        [&self.head[..], &self.bulk[..]].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = LinkMsg::Request {
            id: 7,
            req: PeerRequest::Execute {
                lun: 1,
                nexus: Nexus::new("iqn.x", [1, 2, 3, 4, 5, 6], 129),
                cdb: Bytes::from_static(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
                data_out: Bytes::new(),
                data_len: 0,
                plan_only: false,
                ask: 0,
            },
        };
        let b = Bytes::from(encode(m).expect("encodes").to_vec());
        match decode(&b).expect("decodes") {
            LinkMsg::Request {
                id: 7,
                req: PeerRequest::Execute { lun: 1, .. },
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode(&Bytes::from_static(&[0xFF, 0xFF, 0xFF])).is_err());
    }

    #[test]
    fn bulk_data_travels_apart_and_comes_back_as_a_slice_of_the_frame() {
        let data = Bytes::from(vec![0xA5u8; 4096]);
        let m = LinkMsg::Reply {
            id: 9,
            reply: PeerReply::Done {
                status: 0,
                sense: None,
                data_in: data.clone(),
                wanted_len: 4096,
            },
        };
        let enc = encode(m).expect("encodes");
        // Not copied on the way out: the very same buffer.
        assert_eq!(enc.bulk.as_ptr(), data.as_ptr());
        assert!(enc.head.len() < 64, "head of {} bytes", enc.head.len());
        let frame = Bytes::from(enc.to_vec());
        match decode(&frame).expect("decodes") {
            LinkMsg::Reply {
                id: 9,
                reply: PeerReply::Done { data_in, .. },
            } => {
                assert_eq!(data_in, data);
                // Not copied on the way in: a slice of the frame.
                let at = data_in.as_ptr() as usize - frame.as_ptr() as usize;
                assert_eq!(at, enc.head.len());
            }
            other => panic!("unexpected {other:?}"),
        }
        let w = LinkMsg::Request {
            id: 3,
            req: PeerRequest::Execute {
                lun: 0,
                nexus: Nexus::new("iqn.x", [0; 6], 1),
                cdb: Bytes::from_static(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
                data_out: data.clone(),
                data_len: 4096,
                plan_only: false,
                ask: 0,
            },
        };
        match decode(&Bytes::from(encode(w).expect("encodes").to_vec())).expect("decodes") {
            LinkMsg::Request {
                req: PeerRequest::Execute { data_out, .. },
                ..
            } => assert_eq!(data_out, data),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_refused_with_a_reason() {
        let short = decode(&Bytes::from_static(&[1, 0])).unwrap_err();
        assert!(short.to_string().contains("too short"), "{short}");
        let long = decode(&Bytes::from_static(&[200, 0, 0, 0, 1])).unwrap_err();
        assert!(long.to_string().contains("does not fit"), "{long}");
        // Bulk bytes after a message kind that has no bulk field.
        let mut v = encode(LinkMsg::Release { grant: 1 })
            .expect("encodes")
            .to_vec();
        v.extend_from_slice(b"junk");
        let junk = decode(&Bytes::from(v)).unwrap_err();
        assert!(junk.to_string().contains("4 bytes of bulk"), "{junk}");
    }
}

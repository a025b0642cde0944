//! What the two controllers say to each other over the HA link, above the link's framing.
//!
//! Control channel: the HA node's own messages ([`HaMsg`]), replicated LU state and grant
//! releases. Data channel: forwarded commands and their answers (mode 2 carries the data, mode 1
//! only the command and the plan, modes 0-2 forward everything a secondary cannot answer alone).
//! Everything is encoded with postcard; a message that does not decode is logged and dropped.

use bytes::Bytes;
use duet_core::ha::HaMsg;
use duet_core::scsi::{IoPlan, Nexus, SharedLuState};
use serde::{Deserialize, Serialize};

/// One message between the controllers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LinkMsg {
    /// A message of the HA state machines.
    Ha(HaMsg),
    /// The primary's replicated LU state after a command that may have changed it.
    LuSync { lun: u32, state: SharedLuState },
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
    /// writes); `data_len` is its real length.
    Execute {
        lun: u32,
        nexus: Nexus,
        cdb: Bytes,
        data_out: Bytes,
        data_len: u32,
        plan_only: bool,
    },
    /// A LOGICAL UNIT RESET (or target reset) received on the secondary.
    Reset { lun: u32, cold: bool },
    /// A nexus of the secondary ended (logout or connection loss).
    NexusLost { lun: u32, nexus: Nexus },
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
    /// Mode 1: run `plan` on the shared backend, then release `grant`.
    Plan { grant: u64, plan: IoPlan },
    /// The primary cannot take it (not primary any more, no such LUN): try again later.
    Unavailable { reason: String },
    /// An acknowledgement without data (reset, nexus lost).
    Ack,
}

/// Encodes a message for the link.
pub fn encode(msg: &LinkMsg) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(msg).map(Bytes::from)
}

/// Decodes a message from the link.
pub fn decode(data: &[u8]) -> Result<LinkMsg, postcard::Error> {
    postcard::from_bytes(data)
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
            },
        };
        let b = encode(&m).expect("encodes");
        match decode(&b).expect("decodes") {
            LinkMsg::Request {
                id: 7,
                req: PeerRequest::Execute { lun: 1, .. },
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode(&[0xFF, 0xFF, 0xFF]).is_err());
    }
}

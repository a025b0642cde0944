//! The iSCSI completion of a SCSI command, from the executor's outcome or from a sense code
//! the runtime decides itself (fenced, transitioning, no such LUN). Pure conversions.

use bytes::Bytes;

use duet_core::iscsi::Completion;
use duet_core::scsi::{Outcome, Sense};
use duet_core::sense::{status, SenseCode};

/// The iSCSI completion of a SCSI outcome.
pub fn completion_of(o: Outcome) -> Completion {
    Completion {
        status: o.status,
        sense: o.sense.map(Bytes::from),
        data_in: Bytes::from(o.data_in),
        wanted_len: o.wanted_len,
    }
}

/// A CHECK CONDITION completion with fixed-format sense `code`.
pub fn check(code: SenseCode) -> Completion {
    Completion {
        status: status::CHECK_CONDITION,
        sense: Some(Bytes::from(Sense::new(code).to_bytes(false))),
        data_in: Bytes::new(),
        wanted_len: 0,
    }
}

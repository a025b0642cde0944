//! SCSI as a host speaks it: CDB builders and parsers of what comes back are duet-core's
//! ([`duet_core::scsi::host`]), status values and sense decoding too ([`duet_core::sense`]);
//! re-exported here for the hosts.

pub use duet_core::scsi::host::*;
pub use duet_core::sense::{status, SenseCode};

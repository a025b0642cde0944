//! # duet-core
//!
//! The pure, deterministic heart of Duet. Every module here is a state machine or a pure function:
//! bytes, events and times come in as arguments, decisions come out as values. There is no I/O, no
//! clock and no randomness in this crate, so that the model checker (`duet-model`), the property
//! tests and the daemon (`duet-target`) all run exactly the same rules.
//!
//! - [`ha`]: the per-controller HA state machine (roles, epochs, the lease election, fencing).
//! - [`alua`]: target port groups, the ALUA state table and the per-state command gate.
//! - [`iscsi`]: the iSCSI PDU codec, login/text negotiation with CHAP and the session state.
//! - [`scsi`]: CDB decoding, sense data, unit attentions, reservations and the command executor.
//! - [`sense`]: SCSI sense codes shared by the modules above.
//! - [`units`]: sizes as people write them.
//! - [`LunNumber`]: the one type of a LUN number.

pub mod alua;
pub mod ha;
pub mod iscsi;
mod lun;
pub mod scsi;
pub mod sense;
pub mod units;

pub use lun::{LunNumber, MAX_LUN};

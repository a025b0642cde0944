//! SCSI: CDB decoding, sense data, unit attentions, reservations, mode pages and the executor.
//!
//! One [`LogicalUnit`] per LUN holds everything the SCSI command set remembers about it: mode
//! pages, unit-attention queues per I_T nexus, the SCSI-2 reservation and the persistent
//! reservation state. It does no I/O. A command runs in two phases:
//!
//! 1. [`LogicalUnit::prepare`] (fast, under the runtime's per-LU lock): ALUA gate, unit
//!    attention, reservation checks, CDB decoding. It answers every command that does not touch
//!    the medium and returns [`Prepared::Done`]; for a medium command it returns
//!    [`Prepared::Io`] with an [`IoPlan`], plain data that says what to read or write.
//! 2. [`run_io`] (off-lock, possibly on a blocking thread): executes the plan against a
//!    [`BlockStore`] and yields the [`Outcome`].
//!
//! [`LogicalUnit::execute`] does both in one call, for tests and the model.

mod alua_picture;
mod cdb;
pub mod host;
pub mod host_pr;
pub mod ident;
mod inquiry;
mod io;
mod lu;
mod lu_config;
mod mode;
pub mod opclass;
mod pr;
mod rsoc;
mod sense_data;
mod store;
mod types;
mod ua;

pub use cdb::{cdb_length, op, BlockRange, Cdb, Command, IoFlags};
pub use io::{read_err, run_io, write_err, IoOp, IoPlan, MediumFailure};
pub use lu::{LogicalUnit, Prepared, ResetKind, SharedLuState};
pub use lu_config::{ConfigError, LuConfig};
pub use mode::ModePages;
pub use pr::{PrState, Registration, Reservation};
pub use sense_data::{FieldPointer, Sense};
pub use store::{first_difference, BlockStore, MemStore, StoreError, MEM_CHUNK};
pub use types::{AluaPicture, CommandContext, Effect, Nexus, Outcome, PortGroup};

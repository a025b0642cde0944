//! Command execution on this controller: a SCSI command's two phases (phase 1 under the LU's
//! lock, then the medium phase with no LU lock held), task management functions and the
//! bookkeeping after a command.
//!
//! - [`pair`]: the one seam where an HA pair plugs in ([`Pair`]); a stand-alone controller
//!   plugs in [`Standalone`]. Nothing here looks at HA beyond that trait.
//! - [`medium`]: phase 1 on this controller's LU, the I/O lock, the fencing gate, the medium
//!   phase in place or on the blocking pool, and what a command's effects ask of the runtime.
//! - [`completion`]: the iSCSI completion of an outcome or a sense code.
//! - [`command`]: one SCSI command from a session, end to end (statistics included).
//! - [`tmf`]: task management functions at the LU / target level.
//!
//! May touch: the LUs ([`crate::lu`]), their stores, the statistics and the session registry
//! (to tell other sessions about resets). Never a socket, never the HA runtime.

pub mod command;
pub mod completion;
pub mod medium;
pub mod pair;
pub mod tmf;

pub use command::{execute, port_group_to_activate};
pub use completion::{check, completion_of};
pub use medium::{
    after_command, apply_effects, io_guard, never_waits, prepare_local, run_inline, run_medium,
    run_medium_locked, run_plan, run_plan_now, try_io_guard, IoGuard,
};
pub use pair::{Pair, Standalone};
pub use tmf::task_management;

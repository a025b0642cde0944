//! duet-hosts: the test hosts that drive Duet over iSCSI, on one initiator library.
//!
//! - [`login`]: connects and logs in through duet-core's initiator login machine
//!   ([`duet_core::iscsi::initiator`]), async (tokio) or blocking (std), and moves whole PDUs
//!   over a socket with core's codec.
//! - [`wire`]: the rules an initiator follows in full feature phase: sequence numbers and the
//!   CmdSN window, how a command's write data is laid out (immediate, unsolicited, on R2T),
//!   answers to target pings, the task a Reject names.
//! - [`scsi`]: CDB builders and parsers of what comes back (READ CAPACITY, VPD 0x83, REPORT
//!   TARGET PORT GROUPS); status and sense come from [`duet_core::sense`].
//! - [`session`]: a shared, multi-command session (reader, writer and pinger tasks) for
//!   [`mpio`].
//! - [`mpio`]: the multipath, ALUA-aware workload with a data oracle behind `duet-mpio`.
//! - [`load`]: the lean pipelined load generator behind `duet-load`.
//! - [`blockcheck`]: the verifying O_DIRECT block workload behind `duet-blockcheck`, for a
//!   client host's multipath device.
//! - [`histogram`]: the latency histogram both report from; [`units`]: the command-line
//!   parsers of sizes, durations and portals.

pub mod blockcheck;
pub mod histogram;
pub mod load;
pub mod login;
pub mod mpio;
pub mod scsi;
pub mod session;
pub mod units;
pub mod wire;

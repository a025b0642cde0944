//! duet-target: Duet's runtime around duet-core.
//!
//! The protocol logic lives in `duet_core` (`iscsi::Connection` for login and the session,
//! `scsi::LogicalUnit` for the command set, `alua` for port-group states). This crate only moves
//! bytes, time and randomness in and out of it:
//!
//! - [`config`]: the TOML configuration and the `ctl.conf` subset, validated with file:line errors;
//! - [`backend`]: LUN storage on a regular file or block device (`pread`/`pwrite`, hole punching,
//!   `fdatasync`);
//! - [`server`]: the daemon: listeners, one task per connection, the shared logical units,
//!   persistent-reservation files, NOP-In timers and graceful shutdown.

pub mod admin;
pub mod backend;
pub mod config;
pub mod daemon;
pub mod entropy;
pub mod ha;
mod idle_poll;
pub mod lab;
pub mod server;
pub mod stats;
pub mod sync;

//! duet-target: Duet's runtime around duet-core.
//!
//! The protocol logic lives in `duet_core` (`iscsi::Connection` for login and the session,
//! `scsi::LogicalUnit` for the command set, `alua` for port-group states). This crate only moves
//! bytes, time and randomness in and out of it:
//!
//! - [`config`]: the TOML configuration and the `ctl.conf` subset, validated with file:line errors;
//! - [`backend`]: LUN storage on a regular file or block device (`pread`/`pwrite`, hole punching,
//!   `fdatasync`);
//! - [`server`]: the daemon's listeners and graceful shutdown, over [`build`] (targets and LUs
//!   from the configuration), [`lu`], [`shared`], [`sessions`], [`conn`] (one connection),
//!   [`outbox`], [`threads`] and [`exec`] (command execution, with the seam HA plugs into);
//! - [`uring`]: media I/O of direct-I/O LUNs through an io_uring ring per connection thread.

pub mod admin;
pub mod aligned;
pub mod backend;
pub mod build;
pub mod config;
mod conn;
pub mod daemon;
pub mod entropy;
pub mod exec;
pub mod ha;
mod idle_poll;
pub mod lab;
pub mod lu;
mod outbox;
pub mod server;
pub mod sessions;
pub mod shared;
pub mod stats;
pub mod sync;
mod threads;
pub mod uring;

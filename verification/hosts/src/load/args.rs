//! The `duet-load` command line ([`Args`], shared with the binary) and why a run may not start
//! ([`LoadError`]). Plain data; values are parsed by [`crate::units`].

use crate::units::{parse_duration, parse_portal, parse_size};
use serde::Serialize;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The largest `--qd`.
pub const MAX_QD: u32 = 4096;
/// The largest `--sessions`.
pub const MAX_SESSIONS: u32 = 256;
/// The largest `--block-size`.
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// What each command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// READ (16).
    Read,
    /// WRITE (16) of a fixed non-trivial pattern.
    Write,
}

/// Where each command goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Uniform block-aligned offsets inside the span.
    Random,
    /// Each session walks its own slice of the span in order, wrapping.
    Seq,
}

/// iSCSI benchmark load: keeps `qd` READ/WRITE (16) commands in flight per session and reports
/// IOPS, throughput and latency percentiles.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(name = "duet-load", version)]
pub struct Args {
    /// Target portal, host:port (port 3260 if omitted).
    #[arg(long, value_parser = parse_portal)]
    pub portal: SocketAddr,
    /// Target IQN.
    #[arg(long)]
    pub target: String,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    pub lun: u16,
    /// Command kind.
    #[arg(long, value_enum, default_value_t = Op::Read)]
    pub op: Op,
    /// Offset pattern.
    #[arg(long, value_enum, default_value_t = Pattern::Random)]
    pub pattern: Pattern,
    /// Bytes per command (a multiple of the LUN's block size; 4096, 64KiB, 1MiB...).
    #[arg(long = "block-size", default_value = "4096", value_parser = parse_size)]
    pub block_size: u64,
    /// Commands in flight per session.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=MAX_QD as i64))]
    pub qd: u32,
    /// Parallel sessions, each its own TCP connection and login with a distinct ISID.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_SESSIONS as i64))]
    pub sessions: u32,
    /// Measured interval (10s, 500ms, 2m; a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured interval, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes of the LUN used, from offset 0 (default: the whole LUN).
    #[arg(long, value_parser = parse_size)]
    pub span: Option<u64>,
    /// Our initiator name.
    #[arg(long, default_value = "iqn.2026-11.dev.duet:load")]
    pub initiator: String,
    /// Seed of the offset sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// After a write run, read back the last blocks each session wrote and compare them.
    #[arg(long)]
    pub verify: bool,
    /// Runtime worker threads: 0 runs everything on one thread (the cheapest).
    #[arg(long, default_value_t = 0, hide = true)]
    pub workers: u32,
}

/// Why a run could not start (every such error means exit status 2).
#[derive(Debug)]
pub enum LoadError {
    /// The options do not fit together or do not fit the LUN.
    Usage(String),
    /// The TCP connection could not be made.
    Connect { addr: SocketAddr, source: io::Error },
    /// The login failed (refused, protocol error, timeout).
    Login(String),
    /// A setup command (TEST UNIT READY, READ CAPACITY) failed.
    Setup(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Usage(m) => write!(f, "{m}"),
            LoadError::Connect { addr, source } => write!(f, "connect to {addr}: {source}"),
            LoadError::Login(m) => write!(f, "login: {m}"),
            LoadError::Setup(m) => write!(f, "setup: {m}"),
        }
    }
}

impl std::error::Error for LoadError {}

//! What a `duet-mpio` run is told ([`MpioConfig`]) and why it may not start ([`MpioError`]).
//! Plain data.

use duet_core::iscsi::initiator::InitiatorChap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct MpioConfig {
    /// One session per portal (a portal may be listed twice: two paths to one port).
    pub portals: Vec<SocketAddr>,
    /// Target IQN.
    pub target: String,
    /// LUN number.
    pub lun: u16,
    /// The working set: LBAs `0..blocks`.
    pub blocks: u64,
    /// Block size; 0 = take it from READ CAPACITY (16). A non-zero value must match it.
    pub block_size: u32,
    /// Commands in flight.
    pub queue_depth: usize,
    /// Share of writes, 0-100.
    pub write_percent: u8,
    /// How long the load runs (unless stopped earlier through the `stop` channel).
    pub duration: Duration,
    /// A command that has not completed this long after its first issue (across retries) is an
    /// error.
    pub command_deadline: Duration,
    /// Seed of the workload's random choices.
    pub seed: u64,
    /// Our initiator name.
    pub initiator: String,
    /// CHAP credentials, if the target wants CHAP.
    pub chap: Option<InitiatorChap>,
    /// Write version 1 to every block before the load (else read every block to learn its
    /// current version).
    pub init: bool,
    /// No progress line on stderr.
    pub quiet: bool,
    /// Ping the target after this long without a PDU from it.
    pub nop_interval: Duration,
    /// Drop a connection whose target stays silent this long after the ping is due.
    pub nop_timeout: Duration,
}

impl Default for MpioConfig {
    fn default() -> Self {
        MpioConfig {
            portals: Vec::new(),
            target: String::new(),
            lun: 1,
            blocks: 4096,
            block_size: 0,
            queue_depth: 8,
            write_percent: 50,
            duration: Duration::from_secs(20),
            command_deadline: Duration::from_secs(30),
            seed: 1,
            initiator: "iqn.2026-11.dev.duet:mpio".into(),
            chap: None,
            init: false,
            quiet: true,
            nop_interval: Duration::from_secs(1),
            nop_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a run could not be carried out at all (as opposed to a run that found problems, which
/// returns a [`Report`](super::Report) that is not clean).
#[derive(Debug)]
pub enum MpioError {
    /// The configuration is unusable.
    Config(String),
    /// No portal could be logged in to.
    NoPath(String),
    /// The LUN could not be sized, or is smaller than the working set.
    Capacity(String),
}

impl fmt::Display for MpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpioError::Config(m) => write!(f, "configuration: {m}"),
            MpioError::NoPath(m) => write!(f, "no usable path: {m}"),
            MpioError::Capacity(m) => write!(f, "capacity: {m}"),
        }
    }
}

impl std::error::Error for MpioError {}

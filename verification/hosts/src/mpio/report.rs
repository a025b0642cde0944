//! What a `duet-mpio` run reports: counts, latencies, stalls, path state changes and the
//! oracle's findings. Plain data (serialisable).

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A gap with no completion longer than this is a stall window.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// Start, in ms from the start of the load.
    pub start_ms: u64,
    /// Length in ms.
    pub len_ms: u64,
}

/// A path's state as it changed during the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateChange {
    /// When, in ms from the start of the run (login).
    pub at_ms: u64,
    pub from: String,
    pub to: String,
}

/// Per-path figures.
#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    pub portal: String,
    /// Commands completed through this path (all phases).
    pub ops: u64,
    /// The last state seen.
    pub state: String,
    pub state_changes: Vec<StateChange>,
}

/// What a run did and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Load commands completed (successfully or not).
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub acked_writes: u64,
    /// Bytes moved by successful load commands.
    pub bytes: u64,
    /// Commands that failed for the client (all phases).
    pub errors: u64,
    /// The first error messages.
    pub error_messages: Vec<String>,
    pub stale_reads: u64,
    pub corrupt_reads: u64,
    /// Reads that overlapped a write of the same block and returned a mix of two versions
    /// (allowed by SCSI; not a violation).
    pub torn_reads: u64,
    pub lost_writes: u64,
    /// The first stale/corrupt/lost findings, described.
    pub violations: Vec<String>,
    /// Blocks read by the final verification.
    pub blocks_checked: u64,
    pub max_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub stalls: Vec<Stall>,
    pub longest_stall_ms: u64,
    pub paths: Vec<PathReport>,
    /// Retries by reason (unit_attention, transitioning, standby, unavailable, busy,
    /// task_set_full, aborted_command, disconnected, no_path, ...).
    pub retries: BTreeMap<String, u64>,
    /// Length of the load phase.
    pub load_ms: u64,
    pub block_size: u32,
    pub blocks: u64,
}

impl Report {
    /// No errors, no stale or corrupt reads, no lost writes.
    pub fn clean(&self) -> bool {
        self.errors == 0
            && self.stale_reads == 0
            && self.corrupt_reads == 0
            && self.lost_writes == 0
    }
}

// ------------------------------------------------------------------------------------------
// Blocks
// ------------------------------------------------------------------------------------------

//! What a `duet-blockcheck` run reports, and its progress lines. Plain data (serialisable).

use serde::Serialize;

/// The most stalls listed (the rest are counted in `stalls_dropped`).
pub const MAX_STALLS: usize = 1000;
/// The most error messages kept.
pub const MAX_ERRORS: usize = 20;

/// The phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Writing every block once (`--init`).
    Init,
    /// The random read/write workload.
    Run,
    /// The final read-back.
    Final,
    Done,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::Run => "run",
            Phase::Final => "final",
            Phase::Done => "done",
        }
    }
}

/// One I/O that took longer than the threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// When it was submitted, in ms from the start of the run (the device opened).
    pub at_ms: u64,
    /// How long it took.
    pub ms: u64,
    /// `read` or `write`.
    pub op: &'static str,
    /// Device block number (byte offset / block size) of the first block.
    pub block: u64,
    /// Blocks moved by the I/O (1 in the workload; up to a chunk in --init and the read-back).
    pub blocks: u64,
    pub phase: Phase,
}

/// The longest single I/O wait per phase, in ms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhaseStalls {
    pub init: u64,
    pub run: u64,
    #[serde(rename = "final")]
    pub final_: u64,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No I/O errors, lost writes, stale or corrupt reads, and the final read-back (unless
    /// skipped) covered every block.
    pub ok: bool,
    /// Reads and writes of the workload phase (not --init, not the final read-back).
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    /// I/O errors returned to the program, in any phase.
    pub app_errors: u64,
    /// Blocks the final read-back found older than their newest acknowledged write.
    pub lost_writes: u64,
    /// Workload reads that returned an older generation than the newest acknowledged one.
    pub stale_reads: u64,
    /// Reads (workload or final) of a block that is not intact (bad magic, wrong block number,
    /// checksum mismatch: torn or damaged).
    pub corrupt_reads: u64,
    /// The longest single I/O wait, any phase.
    pub max_stall_ms: u64,
    pub max_stall_ms_by_phase: PhaseStalls,
    /// Every I/O over `stall_threshold_ms`, in order of completion (at most 1000).
    pub stalls: Vec<Stall>,
    pub stalls_dropped: u64,
    pub stall_threshold_ms: u64,
    /// Length of the workload phase.
    pub duration_ms: u64,
    /// Length of the whole run, from the device opened to the result.
    pub elapsed_ms: u64,
    /// Length of --init.
    pub init_ms: u64,
    /// Blocks written by --init.
    pub init_blocks: u64,
    /// Blocks the final read-back read and checked.
    pub final_checked_blocks: u64,
    /// Whether the final read-back covered every block (false when skipped or cut short).
    pub final_check_complete: bool,
    /// The first 20 messages: I/O errors, and the first stale read, corrupt read or lost write
    /// of each block (repeats are only counted).
    pub errors: Vec<String>,
    /// Why the workload ended: `duration`, `stop-file` or `signal`.
    pub stop_reason: String,
    pub device: String,
    pub block_size: u64,
    /// Device block number of the area's first block.
    pub first_block: u64,
    pub blocks: u64,
    pub threads: usize,
    pub write_pct: u8,
    /// This run's writer id, in the header of every block it writes.
    pub writer: String,
    /// Wall clock at the start of the run (ms since the Unix epoch), to line stalls up with
    /// events.
    pub start_unix_ms: u64,
}

/// One progress sample.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    pub elapsed_ms: u64,
    pub phase: Phase,
    /// Workload I/Os so far.
    pub ios: u64,
    /// Over the last interval.
    pub iops: u64,
    pub app_errors: u64,
    pub stale_reads: u64,
    pub corrupt_reads: u64,
    pub lost_writes: u64,
    /// The longest wait of an I/O still in flight.
    pub waiting_ms: u64,
    pub max_stall_ms: u64,
    /// Blocks done of the current phase's total (init and final phases).
    pub done_blocks: u64,
    pub blocks: u64,
}

impl Progress {
    /// The stderr line.
    pub fn line(&self) -> String {
        let head = format!(
            "duet-blockcheck: {:>7.1}s {:<5}",
            self.elapsed_ms as f64 / 1000.0,
            self.phase.name()
        );
        let phase = match self.phase {
            Phase::Init | Phase::Final => format!(
                " {}/{} blocks ({}%)",
                self.done_blocks,
                self.blocks,
                self.done_blocks * 100 / self.blocks.max(1)
            ),
            _ => String::new(),
        };
        format!(
            "{head}{phase} ios={} iops={} errors={} stale={} corrupt={} lost={} waiting_ms={} max_stall_ms={}",
            self.ios,
            self.iops,
            self.app_errors,
            self.stale_reads,
            self.corrupt_reads,
            self.lost_writes,
            self.waiting_ms,
            self.max_stall_ms
        )
    }
}

//! The `duet-blockcheck` command line.

use std::path::PathBuf;

/// The largest `--threads`.
pub const MAX_THREADS: usize = 256;
/// The most blocks one run tracks (the oracle keeps 24 bytes per block).
pub const MAX_BLOCKS: u64 = 1 << 26;

/// A verifying block workload with O_DIRECT: self-describing blocks, every read checked
/// against the newest acknowledged write, stalls recorded, a final full read-back.
///
/// Runs for --duration-s, or until SIGTERM/SIGINT or until --stop-file appears; then the
/// workers finish their current I/O, the final read-back runs (a second signal cuts it
/// short) and one JSON object is printed as the last stdout line. Exit status: 0 when nothing
/// was wrong, 1 when anything was (I/O errors, lost writes, stale or corrupt reads), 2 on bad
/// usage or when the device cannot be used.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(name = "duet-blockcheck", version)]
pub struct Args {
    /// The block device (e.g. /dev/mapper/mpatha) or regular file to test. Its contents in the
    /// area are overwritten.
    #[arg(long)]
    pub device: PathBuf,
    /// Bytes per block: a power of two from 512 to 1 MiB, a multiple of the device's logical
    /// block size.
    #[arg(long = "block-size", default_value_t = 4096)]
    pub block_size: u64,
    /// Worker threads, each one I/O at a time on its own blocks.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Share of writes, in percent.
    #[arg(long = "write-pct", default_value_t = 50)]
    pub write_pct: u8,
    /// First write every block of the area once, so that every block is checked.
    #[arg(long)]
    pub init: bool,
    /// Seconds the workload runs (after --init); without it, until a signal or the stop file.
    #[arg(long = "duration-s")]
    pub duration_s: Option<f64>,
    /// End the workload when this file appears.
    #[arg(long = "stop-file")]
    pub stop_file: Option<PathBuf>,
    /// Start of the area, in MiB from the start of the device.
    #[arg(long = "offset-mb", default_value_t = 0)]
    pub offset_mb: u64,
    /// Size of the area in MiB (default: the rest of the device).
    #[arg(long = "size-mb")]
    pub size_mb: Option<u64>,
    /// Seconds between progress lines on stderr.
    #[arg(long = "progress-s", default_value_t = 1.0)]
    pub progress_s: f64,
    /// Also keep the latest progress (one JSON line) in this file.
    #[arg(long = "progress-file")]
    pub progress_file: Option<PathBuf>,
    /// Also write the result JSON to this file.
    #[arg(long = "json-out")]
    pub json_out: Option<PathBuf>,
    /// Record every I/O that takes longer than this.
    #[arg(long = "stall-threshold-ms", default_value_t = 200)]
    pub stall_threshold_ms: u64,
    /// Skip the final read-back.
    #[arg(long = "no-final-check")]
    pub no_final_check: bool,
    /// Expectations carried between runs: loaded from this file when it exists (so a run
    /// continues where the previous one left off, and checks its writes), saved to it at the
    /// end.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seed of the workload's random choices and of the writer id (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Checks what does not depend on the device.
pub fn validate(a: &Args) -> Result<(), String> {
    if !a.block_size.is_power_of_two() || !(512..=1 << 20).contains(&a.block_size) {
        return Err(format!(
            "--block-size {}: expected a power of two from 512 to 1048576",
            a.block_size
        ));
    }
    if a.threads == 0 || a.threads > MAX_THREADS {
        return Err(format!(
            "--threads {}: expected 1 to {MAX_THREADS}",
            a.threads
        ));
    }
    if a.write_pct > 100 {
        return Err(format!("--write-pct {}: expected 0 to 100", a.write_pct));
    }
    if let Some(d) = a.duration_s {
        if !d.is_finite() || !(0.0..=1.0e7).contains(&d) {
            return Err(format!("--duration-s {d}: expected 0 or more seconds"));
        }
    }
    if !a.progress_s.is_finite() || !(0.01..=1.0e6).contains(&a.progress_s) {
        return Err(format!(
            "--progress-s {}: expected at least 0.01 seconds",
            a.progress_s
        ));
    }
    if a.size_mb == Some(0) {
        return Err("--size-mb 0: the area is empty".into());
    }
    if let Some(p) = &a.stop_file {
        if p.exists() {
            return Err(format!(
                "--stop-file {}: exists already; remove it before the run",
                p.display()
            ));
        }
    }
    for (opt, p) in [
        ("--json-out", &a.json_out),
        ("--progress-file", &a.progress_file),
        ("--state", &a.state),
    ] {
        if let Some(p) = p {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if !dir.is_dir() {
                return Err(format!(
                    "{opt} {}: the directory {} does not exist",
                    p.display(),
                    dir.display()
                ));
            }
        }
    }
    Ok(())
}

//! `duet-blockcheck`: a verifying block workload with O_DIRECT on a block device or a file.
//!
//! Exit status: 0 when nothing was wrong, 1 when anything was (I/O errors seen by the
//! program, lost writes, stale or corrupt reads, an incomplete final read-back), 2 on bad usage
//! or an unusable device. SIGTERM or SIGINT ends the workload (the final read-back still runs;
//! a second signal cuts it short). The result is one JSON object, the last line on stdout.

use clap::Parser;
use duet_hosts::blockcheck::{self, write_atomically, Args};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn install_handlers() -> Result<(), String> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches an atomic, which is
        // async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "cannot install the signal handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = install_handlers() {
        eprintln!("duet-blockcheck: {e}");
        return ExitCode::from(2);
    }
    let report = match blockcheck::run(&args, &SIGNALS) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("duet-blockcheck: {e}");
            return ExitCode::from(2);
        }
    };
    let json = match serde_json::to_string(&report) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("duet-blockcheck: cannot encode the result: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.quiet {
        eprintln!(
            "duet-blockcheck: {}: {} ios ({} reads, {} writes) in {} ms, app_errors={} lost_writes={} stale_reads={} corrupt_reads={} max_stall_ms={} stalls={} final_checked_blocks={}/{}",
            if report.ok { "OK" } else { "FAILED" },
            report.ios,
            report.reads,
            report.writes,
            report.duration_ms,
            report.app_errors,
            report.lost_writes,
            report.stale_reads,
            report.corrupt_reads,
            report.max_stall_ms,
            report.stalls.len() as u64 + report.stalls_dropped,
            report.final_checked_blocks,
            report.blocks
        );
        for e in &report.errors {
            eprintln!("duet-blockcheck:   {e}");
        }
    }
    if let Some(path) = &args.json_out {
        if let Err(e) = write_atomically(path, format!("{json}\n").as_bytes()) {
            eprintln!(
                "duet-blockcheck: {}: cannot write the result: {e}",
                path.display()
            );
        }
    }
    println!("{json}");
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

//! `duet-load`: the benchmark load generator (reads and writes) for any RFC 7143 target.
//!
//! Exit status: 0 when every command succeeded, 1 when any failed (counted in `errors`), 2 on
//! bad usage or when a session cannot log in or set up.

use clap::Parser;
use duet_hosts::load::{self, Args};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = load::validate(&args) {
        eprintln!("duet-load: {e}");
        return ExitCode::from(2);
    }
    let rt = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers as usize)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duet-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match rt.block_on(load::run(&args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("duet-load: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("duet-load: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        println!("{}", report.summary());
    }
    if report.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

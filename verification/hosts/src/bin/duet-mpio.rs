//! `duet-mpio`: a multipath, ALUA-aware iSCSI workload that checks every byte it reads.
//!
//! Exit status: 0 when the report is clean, 1 when it is not (errors, stale or corrupt reads,
//! lost writes), 2 on usage or connection errors. SIGTERM or Ctrl-C stops the load early; the
//! final verification still runs.

use clap::Parser;
use duet_core::iscsi::initiator::InitiatorChap;
use duet_hosts::mpio::{self, MpioConfig, Report};
use duet_hosts::units::{parse_duration, parse_portal};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Multipath iSCSI workload with a data-integrity oracle.
#[derive(Parser, Debug)]
#[command(name = "duet-mpio", version)]
struct Args {
    /// A portal (host:port, port 3260 if omitted); give one per path, the same one twice for
    /// two sessions through one port.
    #[arg(long = "portal", required = true, value_parser = parse_portal)]
    portals: Vec<SocketAddr>,
    /// Target IQN.
    #[arg(long)]
    target: String,
    /// LUN number.
    #[arg(long, default_value_t = 1)]
    lun: u16,
    /// Working set: LBAs 0..blocks.
    #[arg(long, default_value_t = 4096)]
    blocks: u64,
    /// Commands in flight.
    #[arg(long, default_value_t = 8)]
    qd: usize,
    /// Share of writes in percent.
    #[arg(long = "write-percent", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    write_percent: u8,
    /// How long the load runs (e.g. 20s, 500ms, 2m; a bare number is seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Per-command deadline across retries.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    deadline: Duration,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write version 1 to every block first (else the current contents are read as baseline).
    #[arg(long)]
    init: bool,
    /// Our initiator name.
    #[arg(long, default_value = "iqn.2026-11.dev.duet:mpio")]
    initiator: String,
    /// CHAP user name (with --chap-secret).
    #[arg(long = "chap-user", requires = "chap_secret")]
    chap_user: Option<String>,
    /// CHAP secret.
    #[arg(long = "chap-secret", requires = "chap_user")]
    chap_secret: Option<String>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn print_text(r: &Report) {
    println!(
        "ops {} (reads {}, writes {}, acked {}), {} bytes in {} ms",
        r.ops, r.reads, r.writes, r.acked_writes, r.bytes, r.load_ms
    );
    println!(
        "latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; longest stall {} ms",
        r.p50_latency_ms, r.p99_latency_ms, r.max_latency_ms, r.longest_stall_ms
    );
    for s in &r.stalls {
        println!("  stall at {} ms for {} ms", s.start_ms, s.len_ms);
    }
    for p in &r.paths {
        println!("path {}: {} ops, now {}", p.portal, p.ops, p.state);
        for c in &p.state_changes {
            println!("  {} ms: {} -> {}", c.at_ms, c.from, c.to);
        }
    }
    if !r.retries.is_empty() {
        let list: Vec<String> = r.retries.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("retries: {}", list.join(", "));
    }
    println!(
        "errors {}, stale reads {}, corrupt reads {}, lost writes {} ({} blocks checked); torn reads {}",
        r.errors, r.stale_reads, r.corrupt_reads, r.lost_writes, r.blocks_checked, r.torn_reads
    );
    for m in &r.error_messages {
        println!("  error: {m}");
    }
    for m in &r.violations {
        println!("  violation: {m}");
    }
    println!("{}", if r.clean() { "CLEAN" } else { "NOT CLEAN" });
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duet-mpio: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = MpioConfig {
        portals: args.portals.clone(),
        target: args.target.clone(),
        lun: args.lun,
        blocks: args.blocks,
        block_size: 0,
        queue_depth: args.qd.max(1),
        write_percent: args.write_percent,
        duration: args.duration,
        command_deadline: args.deadline,
        seed: args.seed,
        initiator: args.initiator.clone(),
        chap: match (&args.chap_user, &args.chap_secret) {
            (Some(u), Some(s)) => Some(InitiatorChap::md5(u.clone(), s.as_bytes())),
            _ => None,
        },
        init: args.init,
        quiet: args.quiet,
        ..MpioConfig::default()
    };
    let result = rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
            eprintln!("duet-mpio: stopping the load, verifying");
            let _ = tx.send(true);
        });
        mpio::run(cfg, Some(rx)).await
    });
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("duet-mpio: cannot encode the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print_text(&report);
            }
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("duet-mpio: {e}");
            ExitCode::from(2)
        }
    }
}

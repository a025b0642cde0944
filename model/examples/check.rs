//! Runs a full check of the cluster model and prints each property's verdict.
//!
//! `cargo run --release -p duet-model --example check -- [manual|automatic|naive] [0|1|2]
//!  [agent|none] [margin] [ungranted] [key=value ...]` (keys: the numeric bounds of
//! `ModelOptions`, see the match below). Environment: `THREADS=n`, `LIMIT=seconds`, `FIRST=1` (stop at the first
//! failure), `WALK=seed` (print one random run instead of checking).

use duet_core::alua::HaMode;
use duet_model::{ClusterModel, Fencing, ModelOptions, Policy, PROPERTY_NAMES};
use stateright::{Checker, Model};
use std::time::Instant;

fn main() {
    let mut o = ModelOptions::default();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "manual" => o.policy = Policy::Manual,
            "automatic" => o.policy = Policy::Automatic,
            "naive" => o.policy = Policy::Naive,
            "0" => o.mode = HaMode::ActiveStandby,
            "1" => o.mode = HaMode::ActiveActiveShared,
            "2" => o.mode = HaMode::ActiveActiveForward,
            "agent" => o.fencing = Fencing::Agent,
            "none" => o.fencing = Fencing::None,
            "margin" => o.margin_below_drift = true,
            "ungranted" => o.ungranted_write = true,
            kv => {
                let Some((k, v)) = kv.split_once('=') else {
                    eprintln!("unknown argument {kv}");
                    std::process::exit(2);
                };
                let Ok(v) = v.parse::<u64>() else {
                    eprintln!("bad number in {kv}");
                    std::process::exit(2);
                };
                match k {
                    "clients" => o.clients = v as usize,
                    "ops" => o.ops_per_client = v as u8,
                    "max_epoch" => o.max_epoch = v,
                    "max_grant_requests" => o.max_grant_requests = v,
                    "restarts" => o.restarts = v as u8,
                    "crashes" => o.crashes = v as u8,
                    "link_cuts" => o.link_cuts = v as u8,
                    "in_flight" => o.max_in_flight = v as usize,
                    "losses" => o.msg_losses = v as u8,
                    "dups" => o.msg_dups = v as u8,
                    "qfail" => o.quorum_failures = v as u8,
                    "ffail" => o.fence_failures = v as u8,
                    "timeouts" => o.client_timeouts = v as u8,
                    "ticks" => o.max_ticks = v,
                    "fault_ticks" => o.fault_ticks = v,
                    "stalls" => o.quorum_stalls = v as u8,
                    "pauses" => o.pauses = v as u8,
                    "drift" => o.drift_steps = v as u8,
                    _ => {
                        eprintln!("unknown key {k}");
                        std::process::exit(2);
                    }
                }
            }
        }
    }
    println!("{o:?}");
    let model = ClusterModel::new(o);
    if let Ok(seed) = std::env::var("WALK") {
        let mut x: u64 = seed.parse().unwrap_or(1);
        let mut s = model.init_states().remove(0);
        for step in 0..300 {
            let mut acts = Vec::new();
            model.actions(&s, &mut acts);
            if acts.is_empty() {
                println!("terminal after {step} steps");
                break;
            }
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = acts[(x >> 33) as usize % acts.len()].clone();
            println!("{:>3}. {}", step + 1, model.describe_step(&s, &a));
            match model.next_state(&s, a) {
                Some(n) => s = n,
                None => println!("     (no change)"),
            }
            println!("     {}", model.describe_state(&s));
        }
        return;
    }
    let start = Instant::now();
    let secs_limit: u64 = std::env::var("LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut builder = model.clone().checker().threads(threads);
    if std::env::var("FIRST").is_ok() {
        builder = builder.finish_when(stateright::HasDiscoveries::AnyFailures);
    }
    if secs_limit > 0 {
        builder = builder.timeout(std::time::Duration::from_secs(secs_limit));
    }
    let checker = builder.spawn_bfs().join();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "states: {} unique, {} total, max depth {}, {:.1} s",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        secs
    );
    for name in PROPERTY_NAMES {
        match checker.discovery(name) {
            None => println!("{name}: holds"),
            Some(path) => {
                let states = path.clone().into_states();
                let actions = path.into_actions();
                println!("{name}: COUNTEREXAMPLE ({} steps)", actions.len());
                for (i, a) in actions.iter().enumerate() {
                    println!("  {:>2}. {}", i + 1, model.describe_step(&states[i], a));
                    println!("      {}", model.describe_state(&states[i + 1]));
                }
            }
        }
    }
}

//! `duet-verify`: model checking of the Duet cluster model, with readable counterexamples, and
//! stateright's Explorer.
//!
//! Exit status: 0 every property holds, 1 a counterexample was found, 2 bad usage.

use clap::{Args, Parser, Subcommand};
use duet_verification::check::{default_threads, RunSettings, Search};
use duet_verification::cluster::{self, ClusterConfig, FencingName, MutationName, PolicyName};
use std::process::ExitCode;
use std::time::Duration;

/// Model checking of Duet's HA protocol (two controllers, an arbiter, clients, faults).
#[derive(Parser, Debug)]
#[command(name = "duet-verify", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explore every state of the cluster model and give a verdict per property.
    Check(CheckArgs),
    /// Serve stateright's Explorer on 127.0.0.1 to browse states and traces.
    Explore(ExploreArgs),
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// Failover policy.
    #[arg(long, value_enum, default_value = "automatic")]
    policy: PolicyName,
    /// ha_mode: 0 Active/Standby, 1 Active/Active on a shared backend, 2 Active/Active forwarding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    mode: u8,
    /// How the survivor fences the other controller.
    #[arg(long, value_enum, default_value = "agent")]
    fencing: FencingName,
    /// Set the lease safety margin below the clock-drift bound (a deliberate bug).
    #[arg(long)]
    margin_below_drift: bool,
    /// Check with a deliberate bug (repeatable). ungranted-write (mode 1): the secondary writes
    /// to the shared backend without a grant from the primary.
    #[arg(long = "mutation", value_enum, value_name = "NAME")]
    mutations: Vec<MutationName>,
    /// Number of clients, 1 or 2 (default: the model's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=2))]
    clients: Option<u64>,
    /// Change one of the model's bounds, e.g. `--bound max_ticks=16` (repeatable). Names:
    /// ops_per_client, max_epoch, max_grant_requests, restarts, crashes, link_cuts,
    /// max_in_flight, msg_losses, msg_dups, quorum_failures, quorum_stalls, pauses, drift_steps,
    /// fence_failures, client_timeouts, max_ticks, fault_ticks.
    #[arg(long = "bound", value_name = "NAME=VALUE", value_parser = cluster::parse_bound)]
    bounds: Vec<(String, u64)>,
}

impl ModelArgs {
    fn config(&self) -> ClusterConfig {
        ClusterConfig {
            policy: self.policy,
            mode: self.mode,
            fencing: self.fencing,
            margin_below_drift: self.margin_below_drift,
            mutations: self.mutations.clone(),
            clients: self.clients.map(|c| c as usize),
            bounds: self.bounds.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Explore paths of at most this many steps (default: the model's own bounds).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    depth: Option<u64>,
    /// Checker threads (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Stop at the first counterexample (other properties are then undecided).
    #[arg(long)]
    stop_at_first: bool,
    /// Search depth-first: much less memory on large bounds, longer raw traces.
    #[arg(long)]
    dfs: bool,
    /// Keep the first counterexample found instead of searching again for a short one.
    #[arg(long)]
    no_shorten: bool,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    json: bool,
    /// Print no progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ExploreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Checker threads (default: the number of cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
}

fn threads(arg: Option<u64>) -> usize {
    arg.map(|t| t as usize).unwrap_or_else(default_threads)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => {
            let settings = RunSettings {
                search: if args.dfs { Search::Dfs } else { Search::Bfs },
                depth: args.depth.map(|d| d as usize),
                threads: threads(args.threads),
                stop_at_first: args.stop_at_first,
                progress_every: Duration::from_secs(1),
                shorten: !args.no_shorten,
            };
            let quiet = args.quiet;
            let mut progress = |p: &duet_verification::Progress| {
                if !quiet {
                    eprintln!("{}", p.line());
                }
            };
            match cluster::run_check(&args.model.config(), &settings, &mut progress) {
                Ok(result) => {
                    if args.json {
                        println!("{}", result.json());
                    } else {
                        print!("{}", result.text());
                    }
                    ExitCode::from(result.exit_code() as u8)
                }
                Err(e) => {
                    eprintln!("duet-verify: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Explore(args) => {
            match cluster::explore(&args.model.config(), args.port, threads(args.threads)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("duet-verify: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

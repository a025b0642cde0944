//! duetd: Duet's iSCSI target daemon.
//!
//! ```text
//! duetd --config FILE              serve the targets FILE describes (TOML or ctl.conf)
//! duetd check-config FILE [--json] validate FILE and print what it describes
//! ```
//!
//! Logs go to standard error through `tracing`; `RUST_LOG` (e.g. `debug`, `duet_target=trace`)
//! picks what is shown, `info` by default. SIGTERM or Ctrl-C stops the daemon gracefully: no new
//! connections, in-flight commands finish, backends are flushed, exit status 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use duet_target::config::{AuthType, Config};
use duet_target::server;

#[derive(Parser, Debug)]
#[command(name = "duetd", version, about = "Duet iSCSI target daemon")]
struct Cli {
    /// Configuration file (TOML, or FreeBSD ctl.conf syntax).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate a configuration file and print what it describes.
    CheckConfig {
        file: PathBuf,
        /// Print the validated configuration as JSON (secrets left out).
        #[arg(long)]
        json: bool,
    },
    /// Serve the targets of a configuration file (same as `duetd --config FILE`).
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::CheckConfig { file, json }) => check_config(&file, json),
        Some(Cmd::Run { config }) => run(&config),
        None => match cli.config {
            Some(c) => run(&c),
            None => {
                eprintln!("duetd: give --config FILE (or `duetd check-config FILE`); see --help");
                ExitCode::from(2)
            }
        },
    }
}

fn check_config(file: &std::path::Path, json: bool) -> ExitCode {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if json {
        match serde_json::to_string_pretty(&cfg) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("duetd: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    println!("{}: OK ({:?} syntax)", cfg.source, cfg.syntax);
    println!("ping_timeout: {} s", cfg.ping_timeout);
    for pg in &cfg.portal_groups {
        let addrs: Vec<String> = pg.listen.iter().map(|a| a.to_string()).collect();
        println!(
            "portal group {} (tag {}): listen {}; discovery auth group {}",
            pg.name,
            pg.tag,
            addrs.join(", "),
            pg.discovery_auth_group
        );
    }
    for t in &cfg.targets {
        let auth = cfg
            .auth_group(&t.auth_group)
            .map(|a| match a.auth_type {
                AuthType::None => "none",
                AuthType::Chap => "chap",
                AuthType::ChapMutual => "chap-mutual",
                AuthType::Deny => "deny",
            })
            .unwrap_or("?");
        println!(
            "target {} via {} (auth group {}: {auth})",
            t.name, t.portal_group, t.auth_group
        );
        for l in &t.luns {
            println!(
                "  lun {}: {} size {} block {}{}{}",
                l.number,
                l.path.display(),
                l.size
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "(from file)".into()),
                l.block_size,
                if l.read_only { " read-only" } else { "" },
                if l.create { " create" } else { "" },
            );
        }
    }
    ExitCode::SUCCESS
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(file: &std::path::Path) -> ExitCode {
    init_logging();
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("duetd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duetd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let limits = server::limits_for(&cfg);
        let shared = match server::build(cfg, limits) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; stopping");
            let _ = stop_tx.send(true);
        });
        match server::serve(shared, stop_rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

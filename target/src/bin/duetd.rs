//! duetd: Duet's iSCSI target daemon.
//!
//! ```text
//! duetd --config FILE              serve the targets FILE describes (TOML or ctl.conf)
//! duetd check-config FILE [--json] validate FILE and print what it describes
//! duetd lab [--dir DIR] [--mode 0|1|2] [--size 256MiB]
//!                                  the two-controller lab on loopback (ctrl-a + ctrl-b)
//! ```
//!
//! Logs go to standard error through `tracing`; `RUST_LOG` (e.g. `debug`, `duet_target=trace`)
//! picks what is shown, `info` by default. SIGTERM, Ctrl-C or `duetctl shutdown` stops the daemon
//! gracefully: a controller of a pair first hands every LUN it serves to the peer (a planned
//! switchover; the peer fences nothing), then no new connections, in-flight commands finish,
//! backends are flushed, exit status 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use duet_target::config::{AuthType, Config};
use duet_target::{daemon, server};

#[derive(Parser, Debug)]
#[command(name = "duetd", version, about = "Duet iSCSI target daemon")]
struct Cli {
    /// Configuration file (TOML, or FreeBSD ctl.conf syntax).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The admin socket for duetctl (default: the `[ha]` section's `admin_socket`; none for a
    /// single controller without this option).
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,

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
    /// The two-controller lab on loopback: ctrl-a (primary, 127.0.0.1) and ctrl-b (secondary,
    /// 127.0.0.2) share one LUN file and a quorum area and fail over by themselves.
    Lab {
        /// Directory for the LUN file, quorum area, configurations, sockets, pid files and logs
        /// (default: a fresh temporary directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// ha_mode: 0 Active/Standby, 1 Active/Active on the shared disk, 2 forwarding.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
        mode: u8,
        /// Size of the LUN (e.g. 256MiB, 1GiB).
        #[arg(long, default_value = "256MiB")]
        size: String,
        /// iSCSI port of both portals.
        #[arg(long, default_value_t = 3260)]
        port: u16,
        /// TCP port of the HA link on 127.0.0.1.
        #[arg(long, default_value_t = 7777)]
        link_port: u16,
        /// Failover policy: automatic or manual (CTL's behaviour).
        #[arg(long, default_value = "automatic", value_parser = ["automatic", "manual"])]
        failover: String,
        /// Lease in milliseconds (renew, margin and drift follow from it).
        #[arg(long, default_value_t = 1200)]
        lease_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::CheckConfig { file, json }) => check_config(&file, json),
        Some(Cmd::Run { config }) => run(&config, cli.admin_socket),
        Some(Cmd::Lab {
            dir,
            mode,
            size,
            port,
            link_port,
            failover,
            lease_ms,
        }) => lab(dir, mode, &size, port, link_port, failover, lease_ms),
        None => match cli.config {
            Some(c) => run(&c, cli.admin_socket),
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
        match daemon::config_json(&cfg).and_then(|v| serde_json::to_string_pretty(&v)) {
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
                "  lun {}: {} size {} block {}{}{}{}",
                l.number,
                l.path.display(),
                l.size
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "(from file)".into()),
                l.block_size,
                if l.read_only { " read-only" } else { "" },
                if l.create { " create" } else { "" },
                if l.direct { " direct" } else { "" },
            );
        }
    }
    if let Some(ha) = &cfg.ha {
        for line in daemon::describe_ha(ha) {
            println!("{line}");
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

#[allow(clippy::too_many_arguments)]
fn lab(
    dir: Option<PathBuf>,
    mode: u8,
    size: &str,
    port: u16,
    link_port: u16,
    failover: String,
    lease_ms: u64,
) -> ExitCode {
    let Some(size) = duet_target::config::parse_size(size) else {
        eprintln!("duetd lab: --size {size}: expected a size such as 256MiB or 1GiB");
        return ExitCode::from(2);
    };
    let dir = match dir {
        Some(d) => d,
        None => {
            let base = std::env::temp_dir();
            let mut n = std::process::id();
            loop {
                let d = base.join(format!("duet-lab-{n}"));
                if !d.exists() {
                    break d;
                }
                n = n.wrapping_add(1);
            }
        }
    };
    let mut opts = duet_target::lab::LabOptions::new(dir);
    opts.mode = mode;
    opts.size = size;
    opts.iscsi_port = port;
    opts.link_port = link_port;
    opts.failover = failover;
    opts.lease_ms = lease_ms;
    ExitCode::from(duet_target::lab::run(&opts).clamp(0, 255) as u8)
}

/// Keeps large I/O buffers in the heap. Every 128 KiB read allocates its Data-In buffer and
/// frees it once sent; glibc would map and unmap each one, paying a page fault per 4 KiB.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn run(file: &std::path::Path, admin_socket: Option<PathBuf>) -> ExitCode {
    tune_allocator();
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
        // Set once the HA runtime runs: a stop then hands over first.
        let ha_slot: Arc<std::sync::OnceLock<Arc<duet_target::ha::runtime::HaRuntime>>> =
            Arc::new(std::sync::OnceLock::new());
        // `duetctl shutdown` takes the same path as SIGTERM.
        let (stop_requests, stop_waiters) = duet_target::admin::shutdown_channel();
        tokio::spawn(stop_task(ha_slot.clone(), stop_waiters, stop_tx));
        let ha_cfg = shared.config.ha.clone();
        let pr = match daemon::join_disks(&shared, stop_rx.clone()).await {
            Ok(pr) => pr,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("duetd: {e}");
                return ExitCode::from(1);
            }
        };
        let ha = match daemon::start_ha(&shared, stop_rx.clone()) {
            Ok(ha) => ha,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("duetd: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(rt) = &ha {
            let _ = ha_slot.set(rt.clone());
        }
        if let Some(path) = admin_socket.or_else(|| ha_cfg.as_ref().map(|h| h.admin_socket.clone()))
        {
            daemon::spawn_admin(
                &shared,
                (ha, pr),
                Some(stop_requests),
                path,
                stop_rx.clone(),
            );
        }
        // (The pid file stays: see `daemon`.)
        let result = server::serve(shared, stop_rx).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// How long a stopping controller waits for its peer to take over before it exits anyway.
const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a controller that stopped cleanly keeps answering Unavailable before it closes.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the stop waits for the answers to `duetctl shutdown` to be written.
const ANSWER_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for SIGTERM, SIGINT or `duetctl shutdown`, stops (a controller of a pair hands over
/// first), answers every `shutdown` request with the outcome, then tells the daemon to close.
async fn stop_task(
    ha_slot: Arc<std::sync::OnceLock<Arc<duet_target::ha::runtime::HaRuntime>>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<duet_target::admin::ShutdownWaiter>,
    stop_tx: tokio::sync::watch::Sender<bool>,
) {
    let mut waiters = Vec::new();
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("signal received; stopping"),
        Some(w) = requests.recv() => {
            tracing::info!("stopping (duetctl shutdown)");
            waiters.push(w);
        }
    }
    let t0 = std::time::Instant::now();
    let (outcome, message, linger) = match ha_slot.get() {
        Some(ha) => hand_over_before_exit(ha).await,
        None => (
            "standalone",
            "no HA pair: nothing to hand over; stopping".to_string(),
            false,
        ),
    };
    let info = duet_target::admin::ShutdownInfo {
        outcome: outcome.into(),
        handover_ms: t0.elapsed().as_millis() as u64,
        pid: std::process::id(),
        message,
    };
    // Answer everyone who asked meanwhile, and whoever asks while the portals linger.
    let answer_all = |waiters: Vec<duet_target::admin::ShutdownWaiter>| {
        let info = info.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for w in waiters {
                set.spawn(w.answer(info.clone(), ANSWER_BOUND));
            }
            while set.join_next().await.is_some() {}
        }
    };
    while let Ok(w) = requests.try_recv() {
        waiters.push(w);
    }
    let answered = answer_all(std::mem::take(&mut waiters));
    if linger {
        // Keep the portals a moment longer: every command that still comes here is answered
        // Unavailable, so the hosts' multipath fails this path and retries on the peer. A
        // connection closed under a command would instead hold it in the host's session
        // recovery (Linux: `replacement_timeout`, 5 s or more) before it is retried.
        let late = async {
            let end = tokio::time::Instant::now() + LINGER;
            let mut late = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    Some(w) = requests.recv() => {
                        late.spawn(w.answer(info.clone(), ANSWER_BOUND));
                    }
                }
            }
            while late.join_next().await.is_some() {}
        };
        tokio::join!(answered, late);
    } else {
        answered.await;
    }
    let _ = stop_tx.send(true);
}

/// A stop of one controller of a pair is a planned switchover: every LUN it serves goes to the
/// peer first, and the peer is told, so that it takes over at once and fences nothing. Returns
/// the outcome for `duetctl shutdown`, a line for the administrator, and whether to linger.
async fn hand_over_before_exit(
    ha: &duet_target::ha::runtime::HaRuntime,
) -> (&'static str, String, bool) {
    let t0 = std::time::Instant::now();
    match ha.stop(STOP_BOUND).await {
        duet_target::ha::runtime::StopOutcome::Clean => {
            tracing::info!(
                ms = t0.elapsed().as_millis() as u64,
                "HA: stopped cleanly: the peer serves what this controller served and will not \
                 fence it"
            );
            (
                "clean",
                "stopped cleanly: the peer serves what this controller served and will not fence \
                 it"
                .into(),
                true,
            )
        }
        duet_target::ha::runtime::StopOutcome::TimedOut => {
            let m = format!(
                "the hand-over did not complete within {} s; exiting: the peer treats this as a \
                 crash (lease wait, then fence)",
                STOP_BOUND.as_secs()
            );
            tracing::warn!("HA: {m}");
            ("timed_out", m, false)
        }
    }
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

//! `duetctl`: administer a running `duetd` through its admin socket.
//!
//! ```text
//! duetctl [--socket PATH] [--json] portlist
//! duetctl [--socket PATH] [--json] lunlist
//! duetctl [--socket PATH] [--json] ha
//! duetctl [--socket PATH] [--json] role primary|secondary [--lun N]
//! duetctl [--socket PATH] [--json] switchover [--lun N]
//! duetctl [--socket PATH] [--json] stat [--interval SECS [--count N]]
//! duetctl [--socket PATH] [--json] shutdown
//! ```
//!
//! The socket defaults to `$DUET_SOCKET`, else `/run/duet/duetd.sock`. Exit status: 0 done,
//! 1 the daemon refused or the operation failed, 2 bad usage or the daemon cannot be reached.

use duet_core::LunNumber;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use duet_target::admin::{
    self, AdminError, HaInfo, IoRates, IoStat, LunInfo, PortInfo, Request, StatInfo,
};

/// How long to wait for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for the hand-over and the daemon's exit (the daemon bounds its
/// hand-over at 5 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "duetctl",
    version,
    about = "Administer a running duetd through its admin socket",
    after_help = "Exit status: 0 done, 1 the daemon refused or the operation failed, \
                  2 bad usage or the daemon cannot be reached."
)]
struct Cli {
    /// duetd's admin socket [default: $DUET_SOCKET, else /run/duet/duetd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print exactly one JSON document on stdout instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List target ports, own and the peer's (like `ctladm portlist`)
    ///
    /// Frontend `iscsi` marks this controller's ports, `ha` the peer's (named `N:name`, N the
    /// peer's ha_id). pp is the ha_id of the controller the port lives on; vp is always 0.
    Portlist,
    /// List logical units with their size, role and ALUA states
    Lunlist,
    /// Show the HA state: link, mode, policy, lease, per-LUN roles and epochs, recent events
    Ha,
    /// Set the preferred role of this controller, or of one LUN (CTL's ha_role)
    Role {
        /// The role to take
        #[arg(value_enum)]
        role: RoleValue,
        /// Only this LUN (default: every LUN)
        #[arg(long, value_name = "N")]
        lun: Option<LunNumber>,
    },
    /// Hand the primary role over to the peer (planned switchover)
    Switchover {
        /// Only this LUN (default: every LUN)
        #[arg(long, value_name = "N")]
        lun: Option<LunNumber>,
    },
    /// Show I/O statistics per LUN and per port (like ctlstat)
    ///
    /// Without --interval: the counters since duetd started. With --interval: after each
    /// interval, the activity during it as rates (latencies: mean, estimated p99, estimated
    /// maximum, in microseconds). With --json, one document holding every sample is printed
    /// at the end, so --count is required.
    Stat {
        /// Seconds between samples (fractions allowed)
        #[arg(long, value_name = "SECS", value_parser = parse_interval)]
        interval: Option<f64>,
        /// Number of samples (default: until interrupted; required with --json)
        #[arg(long, value_name = "N", requires = "interval", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Stop the daemon as SIGTERM does, and wait until it has exited
    ///
    /// A controller of a pair first hands every LUN it serves to its peer (a planned
    /// switchover: the peer fences nothing). The answer says how that went (`clean`,
    /// `timed_out`, or `standalone` without a pair); duetctl then waits until the daemon has
    /// exited, so it can be started again at once. Exit status 1 when the hand-over timed out
    /// or the daemon did not exit within 30 s.
    Shutdown,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum RoleValue {
    Primary,
    Secondary,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!(
            "`{s}`: the interval must be above 0 and at most 86400"
        ))
    }
}

/// Why duetctl stops without success.
enum Failure {
    /// Bad usage (exit 2).
    Usage(String),
    /// The daemon could not be reached or answered nonsense (exit 2 / 1).
    Admin(AdminError),
    /// The operation was carried out but did not go as planned; already reported (exit 1).
    Failed,
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Failure::Admin(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let socket = cli
        .socket
        .clone()
        .or_else(|| std::env::var_os("DUET_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(admin::DEFAULT_SOCKET));
    let json = cli.json;
    match run(&cli, &socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("duetctl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Failed) => ExitCode::from(1),
        Err(Failure::Admin(e)) => {
            eprintln!("duetctl: {e}");
            match e {
                AdminError::Connect { .. } | AdminError::Io { .. } => ExitCode::from(2),
                AdminError::Refused(reason) => {
                    if json {
                        let doc = serde_json::json!({ "ok": false, "error": reason });
                        emit(&format!("{doc:#}\n"));
                    }
                    ExitCode::from(1)
                }
                AdminError::Protocol(_) => ExitCode::from(1),
            }
        }
    }
}

/// Writes to stdout; a closed pipe (`duetctl ... | head`) is not an error.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
}

fn ask<T: serde::de::DeserializeOwned>(
    socket: &std::path::Path,
    req: &Request,
) -> Result<T, Failure> {
    Ok(admin::request(socket, req, TIMEOUT)?.into_data()?)
}

fn to_json<T: Serialize>(v: &T) -> String {
    match serde_json::to_string_pretty(v) {
        Ok(s) => s + "\n",
        Err(e) => format!("{{\"ok\":false,\"error\":\"cannot encode: {e}\"}}\n"),
    }
}

fn run(cli: &Cli, socket: &std::path::Path) -> Result<(), Failure> {
    let json = cli.json;
    match &cli.command {
        Cmd::Portlist => {
            let ports: Vec<PortInfo> = ask(socket, &Request::Portlist)?;
            emit(&if json {
                to_json(&ports)
            } else {
                portlist_table(&ports)
            });
        }
        Cmd::Lunlist => {
            let luns: Vec<LunInfo> = ask(socket, &Request::Lunlist)?;
            emit(&if json {
                to_json(&luns)
            } else {
                lunlist_table(&luns)
            });
        }
        Cmd::Ha => {
            let ha: HaInfo = ask(socket, &Request::Ha)?;
            emit(&if json { to_json(&ha) } else { ha_text(&ha) });
        }
        Cmd::Role { role, lun } => {
            let role = match role {
                RoleValue::Primary => "primary",
                RoleValue::Secondary => "secondary",
            };
            let req = Request::Role {
                role: role.to_string(),
                lun: *lun,
            };
            let message: String = ask(socket, &req)?;
            emit_message(json, &message);
        }
        Cmd::Switchover { lun } => {
            let message: String = ask(socket, &Request::Switchover { lun: *lun })?;
            emit_message(json, &message);
        }
        Cmd::Shutdown => return shutdown(socket, json),
        Cmd::Stat { interval, count } => match interval {
            None => {
                let s: StatInfo = ask(socket, &Request::Stat)?;
                emit(&if json { to_json(&s) } else { stat_table(&s) });
            }
            Some(secs) => {
                if json && count.is_none() {
                    return Err(Failure::Usage(
                        "stat --json --interval needs --count (one JSON document is printed at the end)"
                            .into(),
                    ));
                }
                stat_loop(socket, json, *secs, *count)?;
            }
        },
    }
    Ok(())
}

fn shutdown(socket: &std::path::Path, json: bool) -> Result<(), Failure> {
    let (info, exited) = admin::shutdown(socket, SHUTDOWN_TIMEOUT)?;
    let ok = info.is_clean() && exited;
    if json {
        emit(&to_json(&serde_json::json!({
            "ok": ok,
            "outcome": info.outcome,
            "handover_ms": info.handover_ms,
            "pid": info.pid,
            "exited": exited,
            "message": info.message,
        })));
    } else {
        emit(&format!(
            "{} (hand-over {} ms); duetd (pid {}) {}\n",
            info.message,
            info.handover_ms,
            info.pid,
            if exited {
                "has exited".to_string()
            } else {
                format!("has not exited within {} s", SHUTDOWN_TIMEOUT.as_secs())
            }
        ));
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Failed)
    }
}

fn emit_message(json: bool, message: &str) {
    if json {
        emit(&to_json(
            &serde_json::json!({ "ok": true, "message": message }),
        ));
    } else if message.ends_with('\n') {
        emit(message);
    } else {
        emit(&format!("{message}\n"));
    }
}

/// One row of an interval sample: what happened, and as rates.
#[derive(Serialize)]
struct SampleRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    lun: Option<LunNumber>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    delta: IoStat,
    rates: IoRates,
}

#[derive(Serialize)]
struct Sample {
    /// Length of the interval, in seconds.
    seconds: f64,
    total: SampleRow,
    luns: Vec<SampleRow>,
    ports: Vec<SampleRow>,
}

#[derive(Serialize)]
struct StatSeries {
    interval_s: f64,
    samples: Vec<Sample>,
}

fn sample_of(now: &StatInfo, before: &StatInfo, local_elapsed: Duration) -> Sample {
    let delta = now.since(before);
    // The daemon's clock is the time base; fall back to ours if it did not move (same ms).
    let seconds = if delta.uptime_ms > 0 {
        delta.uptime_ms as f64 / 1000.0
    } else {
        local_elapsed.as_secs_f64()
    };
    let row = |lun, port, io: IoStat| SampleRow {
        lun,
        port,
        rates: io.rates(seconds),
        delta: io,
    };
    Sample {
        seconds,
        total: row(None, None, delta.total),
        luns: delta
            .luns
            .into_iter()
            .map(|l| row(Some(l.lun), None, l.io))
            .collect(),
        ports: delta
            .ports
            .into_iter()
            .map(|p| row(None, Some(p.port), p.io))
            .collect(),
    }
}

fn stat_loop(
    socket: &std::path::Path,
    json: bool,
    secs: f64,
    count: Option<u64>,
) -> Result<(), Failure> {
    let interval = Duration::from_secs_f64(secs);
    let mut before: StatInfo = ask(socket, &Request::Stat)?;
    let mut taken = Instant::now();
    let mut samples = Vec::new();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        let next = taken + interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now: StatInfo = ask(socket, &Request::Stat)?;
        let sample = sample_of(&now, &before, taken.elapsed());
        taken = Instant::now();
        before = now;
        n += 1;
        if json {
            samples.push(sample);
        } else if !emit(&(rates_table(&sample) + "\n")) {
            return Ok(());
        }
    }
    if json {
        emit(&to_json(&StatSeries {
            interval_s: secs,
            samples,
        }));
    }
    Ok(())
}

/// Left-aligned columns separated by one space; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push(' ');
            }
            l.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "YES" } else { "NO" }.to_string()
}

fn portlist_table(ports: &[PortInfo]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.port.to_string(),
                yes_no(p.online),
                p.frontend.clone(),
                p.name.clone(),
                p.ha_id.to_string(),
                "0".to_string(),
                p.portal.join(","),
            ]
        })
        .collect();
    table(
        &["Port", "Online", "Frontend", "Name", "pp", "vp", "Portals"],
        &rows,
    )
}

/// A byte count in binary units (`256 MiB`, `1.5 GiB`, `512 B`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// A byte rate, per second.
fn human_rate(per_s: f64) -> String {
    if !per_s.is_finite() || per_s <= 0.0 {
        return "0 B/s".to_string();
    }
    if per_s < 1024.0 {
        return format!("{per_s:.0} B/s");
    }
    let mut v = per_s;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}/s")
}

fn lunlist_table(luns: &[LunInfo]) -> String {
    let rows: Vec<Vec<String>> = luns
        .iter()
        .map(|l| {
            vec![
                l.lun.to_string(),
                human_bytes(l.size_bytes),
                l.block_size.to_string(),
                l.role.clone(),
                l.local_alua.clone(),
                l.peer_alua.clone(),
                l.serial.clone(),
                l.naa.clone(),
                l.target.clone(),
                l.path.clone(),
            ]
        })
        .collect();
    table(
        &[
            "LUN", "Size", "BlkSz", "Role", "Local", "Peer", "Serial", "NAA", "Target", "Path",
        ],
        &rows,
    )
}

fn mode_name(mode: u8) -> &'static str {
    match mode {
        0 => "Active/Standby",
        1 => "Active/Active, shared backend",
        2 => "Active/Active, forwarding to the primary",
        _ => "unknown",
    }
}

fn link_name(state: u8) -> &'static str {
    match state {
        0 => "not configured",
        1 => "configured, not established",
        2 => "established",
        _ => "unknown",
    }
}

fn ha_text(ha: &HaInfo) -> String {
    let lease = match (ha.lease_holder, ha.lease_age_ms) {
        (Some(h), Some(age)) => format!("held by {h}, renewed {age} ms ago"),
        (Some(h), None) => format!("held by {h}"),
        (None, _) => "nobody".to_string(),
    };
    let mut out = table(
        &["Field", "Value"],
        &[
            vec!["ha_id:".into(), ha.ha_id.to_string()],
            vec!["peer:".into(), ha.peer_id.to_string()],
            vec![
                "ha_mode:".into(),
                format!("{} ({})", ha.mode, mode_name(ha.mode)),
            ],
            vec![
                "ha_link:".into(),
                format!("{} ({})", ha.link_state, link_name(ha.link_state)),
            ],
            vec!["policy:".into(), ha.policy.clone()],
            vec!["fencing:".into(), ha.fencing.clone()],
            vec!["lease:".into(), lease],
            vec![
                "peer fenced:".into(),
                if ha.peer_fenced { "yes" } else { "no" }.into(),
            ],
        ],
    );
    // The Field/Value header adds nothing for a key-value list.
    if let Some(i) = out.find('\n') {
        out.drain(..=i);
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = ha
        .luns
        .iter()
        .map(|l| {
            vec![
                l.lun.to_string(),
                l.role.clone(),
                l.epoch.to_string(),
                l.primary.map_or("-".to_string(), |p| p.to_string()),
                l.local_alua.clone(),
                l.peer_alua.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["LUN", "Role", "Epoch", "Primary", "Local", "Peer"],
        &rows,
    ));
    if !ha.reservations.is_empty() {
        out.push_str("\nReservations (scsi-pr):\n");
        for d in &ha.reservations {
            out.push_str("  ");
            out.push_str(&d.to_string());
            out.push('\n');
        }
    }
    if let Some(t) = &ha.last_takeover {
        out.push_str(&takeover_text(t));
    }
    if ha.ha_id != 0 {
        let c = &ha.counters;
        out.push_str(&format!(
            "\nSince start: HA link down {} time(s) closed by the peer, {} time(s) silent; \
             {} takeover(s)\n",
            c.link_downs_closed, c.link_downs_silent, c.takeovers
        ));
    }
    if !ha.events.is_empty() {
        out.push_str("\nRecent events:\n");
        for e in &ha.events {
            out.push_str("  ");
            out.push_str(e);
            out.push('\n');
        }
    }
    out
}

/// The last takeover: when, what it waited for, how long the fence and the claim took.
fn takeover_text(t: &admin::TakeoverInfo) -> String {
    let luns: Vec<String> = t.luns.iter().map(|l| l.to_string()).collect();
    let fence = match t.fence_ms {
        Some(ms) => format!("fence took {ms} ms"),
        None => "no fence".to_string(),
    };
    format!(
        "\nLast takeover (LUN {}): started {} ({:.1} s ago)\n  waited for: {}\n  \
         {fence}, claim took {} ms, total {} ms\n",
        luns.join(", "),
        utc_text(t.started_unix_ms),
        (t.ago_ms + t.total_ms) as f64 / 1000.0,
        t.cause.describe(),
        t.claim_ms,
        t.total_ms,
    )
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm UTC` (the proleptic Gregorian calendar).
fn utc_text(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (eras of 400 years, 146 097 days each).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

fn stat_table(s: &StatInfo) -> String {
    let row = |scope: String, io: &IoStat| {
        vec![
            scope,
            io.reads.to_string(),
            io.writes.to_string(),
            io.other.to_string(),
            human_bytes(io.bytes_read),
            human_bytes(io.bytes_written),
            io.mean_latency_us.to_string(),
            io.p50_latency_us.to_string(),
            io.p99_latency_us.to_string(),
            io.max_latency_us.to_string(),
        ]
    };
    let mut rows = vec![row("total".into(), &s.total)];
    rows.extend(s.luns.iter().map(|l| row(format!("lun {}", l.lun), &l.io)));
    rows.extend(
        s.ports
            .iter()
            .map(|p| row(format!("port {}", p.port), &p.io)),
    );
    format!(
        "Since start ({:.1} s ago); latencies in microseconds\n{}",
        s.uptime_ms as f64 / 1000.0,
        table(
            &["Scope", "Reads", "Writes", "Other", "Read", "Written", "Mean", "p50", "p99", "Max"],
            &rows
        )
    )
}

fn rates_table(s: &Sample) -> String {
    let row = |scope: String, r: &SampleRow| {
        vec![
            scope,
            format!("{:.1}", r.rates.reads_per_s),
            format!("{:.1}", r.rates.writes_per_s),
            format!("{:.1}", r.rates.other_per_s),
            human_rate(r.rates.read_bytes_per_s),
            human_rate(r.rates.write_bytes_per_s),
            r.rates.mean_latency_us.to_string(),
            r.rates.p99_latency_us.to_string(),
            r.rates.max_latency_us.to_string(),
        ]
    };
    let mut rows = vec![row("total".into(), &s.total)];
    rows.extend(
        s.luns
            .iter()
            .map(|l| row(format!("lun {}", l.lun.unwrap_or(0)), l)),
    );
    rows.extend(
        s.ports
            .iter()
            .map(|p| row(format!("port {}", p.port.unwrap_or(0)), p)),
    );
    format!(
        "Last {:.2} s; latencies in microseconds\n{}",
        s.seconds,
        table(
            &["Scope", "Reads/s", "Writes/s", "Other/s", "Read", "Written", "Mean", "p99", "Max"],
            &rows
        )
    )
}

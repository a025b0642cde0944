//! The admin socket: how `duetctl` talks to `duetd`.
//!
//! # Protocol
//!
//! A Unix stream socket (mode 0600, default `/run/duet/duetd.sock`). The client writes one
//! [`Request`] as a JSON object on one line and reads one [`Response`] on one line; it may send
//! several requests on one connection, one at a time. Requests are tagged by `cmd`:
//!
//! ```text
//! {"cmd":"portlist"}                       -> data: [PortInfo]
//! {"cmd":"lunlist"}                        -> data: [LunInfo]
//! {"cmd":"ha"}                             -> data: HaInfo
//! {"cmd":"role","role":"primary","lun":1}  -> data: "message"     (lun may be null or left out)
//! {"cmd":"switchover","lun":null}          -> data: "message"
//! {"cmd":"stat"}                           -> data: StatInfo
//! {"cmd":"shutdown"}                       -> data: ShutdownInfo  (see below)
//! ```
//!
//! `shutdown` stops the daemon exactly as SIGTERM does (a controller of a pair first hands every
//! LUN it serves to its peer). The answer comes once that hand-over is done, or has failed, and
//! the daemon then keeps the connection open until the process exits: a client that reads on
//! after the answer sees the end of the stream when the daemon is gone ([`shutdown`] does).
//!
//! Every answer is `{"ok":true,"error":null,"data":...}` or `{"ok":false,"error":"why",
//! "data":null}`. A line that is not a valid request gets an `ok: false` answer and the
//! connection stays usable; a line longer than [`MAX_LINE`] bytes gets an error and the
//! connection is closed.
//!
//! The daemon provides the answers by implementing [`AdminApi`] and running [`serve`]; clients
//! use [`request`].

use duet_core::LunNumber;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

pub use crate::ha::pr_fence::DeviceStatus;
pub use crate::stats::{IoRates, IoStat, LunStat, PortStat, StatInfo};

/// The socket `duetctl` and `duetd` use when none is configured.
pub const DEFAULT_SOCKET: &str = "/run/duet/duetd.sock";

/// Longest request or response line accepted, in bytes (newline excluded).
pub const MAX_LINE: usize = 1 << 20;

/// Most clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 64;

/// One target port, own or the peer's (a row of `duetctl portlist`, like `ctladm portlist`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Relative target port identifier.
    pub port: u16,
    /// The controller the port lives on.
    pub ha_id: u8,
    /// `iscsi` for this controller's ports, `ha` for the peer's (as CTL shows them).
    pub frontend: String,
    /// Own ports: target name and portal group tag (`iqn...,t,0x0001`); the peer's:
    /// `N:name` with N the peer's ha_id.
    pub name: String,
    /// Whether the port accepts logins.
    pub online: bool,
    /// Listen addresses of the port's portal group.
    pub portal: Vec<String>,
    /// The iSCSI target the port belongs to.
    pub target: String,
    /// True for this controller's ports.
    pub local: bool,
}

/// One logical unit (a row of `duetctl lunlist`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunInfo {
    /// LUN number.
    pub lun: LunNumber,
    /// The iSCSI target it belongs to.
    pub target: String,
    /// Backing file or device.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// NAA designator (VPD 0x83).
    pub naa: String,
    /// ALUA state this controller's port group reports (e.g. `AO`, `ANO`, `S`, `U`, `T`).
    pub local_alua: String,
    /// ALUA state reported for the peer's port group.
    pub peer_alua: String,
    /// This controller's role for the LUN (`primary`, `secondary`, ...).
    pub role: String,
}

/// HA state of one LUN (part of [`HaInfo`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaLunInfo {
    /// LUN number.
    pub lun: LunNumber,
    /// `primary`, `secondary`, `claiming` or `transitioning`.
    pub role: String,
    /// Current epoch.
    pub epoch: u64,
    /// The controller believed primary, if any.
    pub primary: Option<u8>,
    /// ALUA state of this controller's port group.
    pub local_alua: String,
    /// ALUA state of the peer's port group.
    pub peer_alua: String,
}

/// The controller's HA picture (the answer to `duetctl ha`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaInfo {
    /// This controller's ha_id (1 or 2; 0 = HA off).
    pub ha_id: u8,
    /// The peer's ha_id.
    pub peer_id: u8,
    /// `ha_mode`: 0 Active/Standby, 1 Active/Active shared backend, 2 Active/Active forwarding.
    pub mode: u8,
    /// HA link: 0 not configured, 1 configured but not established, 2 established.
    pub link_state: u8,
    /// Failover policy (`automatic`, `manual`).
    pub policy: String,
    /// Fencing method (`exec`, `none`, ...).
    pub fencing: String,
    /// Per-LUN HA state.
    pub luns: Vec<HaLunInfo>,
    /// The controller holding the arbiter lease, if known.
    pub lease_holder: Option<u8>,
    /// Age of the last lease renewal seen, in milliseconds.
    pub lease_age_ms: Option<u64>,
    /// Whether the peer has been fenced.
    pub peer_fenced: bool,
    /// The last few HA log events, oldest first.
    pub events: Vec<String>,
    /// With `fencing = "scsi-pr"`: each shared device's registered keys (ours and the peer's
    /// marked) and reservation holder and type, as last read (every few seconds).
    #[serde(default)]
    pub reservations: Vec<DeviceStatus>,
    /// The last time this controller took LUNs over by a claim (not a switchover), if it did.
    #[serde(default)]
    pub last_takeover: Option<TakeoverInfo>,
    /// Counts since start: HA link downs by cause, takeovers.
    #[serde(default)]
    pub counters: HaCounters,
}

/// What a controller's last takeover waited for ([`TakeoverInfo::cause`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TakeoverCause {
    /// The peer closed the HA link (end of stream, reset, bye): its process most likely exited.
    LinkClosed,
    /// The HA link went silent for `dead_after_ms` (or failed on this side).
    LinkSilent,
    /// No link event: the claim waited on the peer's lease in the quorum area (the link was
    /// already down, the primary stepped down, this controller's own lease had lapsed).
    PeerLease,
    /// The first claim after this controller started, before the link ever came up.
    StartUp,
}

impl TakeoverCause {
    /// The cause in words.
    pub fn describe(self) -> &'static str {
        match self {
            TakeoverCause::LinkClosed => "HA link closed by the peer",
            TakeoverCause::LinkSilent => "HA link silent",
            TakeoverCause::PeerLease => "the peer's lease",
            TakeoverCause::StartUp => "start-up",
        }
    }
}

/// The last takeover: this controller became primary by a claim. Times in milliseconds of the
/// controller's monotonic clock, except `started_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverInfo {
    /// The LUNs it became primary of, in that step.
    pub luns: Vec<LunNumber>,
    /// What it waited for.
    pub cause: TakeoverCause,
    /// When it started (the link event, else the claim's start), Unix time in milliseconds.
    pub started_unix_ms: u64,
    /// How long ago it ended (became primary).
    pub ago_ms: u64,
    /// From the claim's start until primary, the fence included (the lease wait is most of it).
    pub claim_ms: u64,
    /// How long the fencing agent took; `None`: the claim did not fence.
    pub fence_ms: Option<u64>,
    /// From the start (link event or claim) until primary.
    pub total_ms: u64,
}

/// Counters of a controller of a pair, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaCounters {
    /// The HA link went down because the peer closed it.
    pub link_downs_closed: u64,
    /// The HA link went down by silence (or an error of this side).
    pub link_downs_silent: u64,
    /// Takeovers (primary by a claim, not by a switchover).
    pub takeovers: u64,
}

/// The role named in `duetctl role` (CTL's `ha_role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleArg {
    /// Prefer to be primary.
    Primary,
    /// Prefer to be secondary.
    Secondary,
}

impl RoleArg {
    /// `primary` or `secondary`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Primary => "primary",
            RoleArg::Secondary => "secondary",
        }
    }
}

impl std::fmt::Display for RoleArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RoleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<RoleArg, String> {
        match s.to_ascii_lowercase().as_str() {
            "primary" => Ok(RoleArg::Primary),
            "secondary" => Ok(RoleArg::Secondary),
            _ => Err(format!(
                "unknown role `{s}`: expected `primary` or `secondary`"
            )),
        }
    }
}

/// A request to the daemon (one JSON line, tagged by `cmd`; see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// List target ports.
    Portlist,
    /// List logical units.
    Lunlist,
    /// Show the HA state.
    Ha,
    /// Set the preferred role of this controller, or of one LUN on it.
    Role {
        /// `primary` or `secondary`.
        role: String,
        /// One LUN, or every LUN when absent.
        #[serde(default)]
        lun: Option<LunNumber>,
    },
    /// Hand the primary role over to the peer (for one LUN or all).
    Switchover {
        /// One LUN, or every LUN when absent.
        #[serde(default)]
        lun: Option<LunNumber>,
    },
    /// Read the I/O statistics.
    Stat,
    /// Stop the daemon as SIGTERM does (a controller of a pair hands over first).
    Shutdown,
}

/// How a stop requested by `shutdown` (or a signal) went (the answer to `duetctl shutdown`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownInfo {
    /// `clean`: every LUN this controller served is served by its peer (or released with the
    /// peer down), and the peer was told it leaves: it fences nothing. `timed_out`: the
    /// hand-over did not complete within the daemon's bound; the peer treats the exit as a
    /// crash (lease wait, then fence). `standalone`: no HA pair, nothing to hand over.
    pub outcome: String,
    /// How long the hand-over took, in milliseconds.
    pub handover_ms: u64,
    /// The daemon's process id (as the daemon sees it).
    pub pid: u32,
    /// One line for the administrator.
    pub message: String,
}

impl ShutdownInfo {
    /// Whether the stop went as planned (`clean` or `standalone`).
    pub fn is_clean(&self) -> bool {
        self.outcome == "clean" || self.outcome == "standalone"
    }
}

/// The daemon's answer to one `shutdown` request, with the signal that it was written.
struct ShutdownReply {
    info: ShutdownInfo,
    written: oneshot::Sender<()>,
}

/// A `shutdown` request waiting for the stop's outcome; the daemon's stop task answers it with
/// [`ShutdownWaiter::answer`].
pub struct ShutdownWaiter {
    reply: oneshot::Sender<ShutdownReply>,
}

impl ShutdownWaiter {
    /// Hands `info` to the client's connection and waits, at most `bound`, until the answer is
    /// written (or the client has gone).
    pub async fn answer(self, info: ShutdownInfo, bound: Duration) {
        let (written, done) = oneshot::channel();
        if self.reply.send(ShutdownReply { info, written }).is_ok() {
            let _ = tokio::time::timeout(bound, done).await;
        }
    }
}

/// The admin socket's side of `shutdown`: each request becomes a [`ShutdownWaiter`] on the
/// channel the daemon's stop task reads ([`shutdown_channel`]).
#[derive(Clone, Debug)]
pub struct ShutdownRequests(mpsc::UnboundedSender<ShutdownWaiter>);

impl std::fmt::Debug for ShutdownWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownWaiter")
    }
}

/// What a `shutdown` request waits on: the stop's outcome.
pub struct ShutdownTicket(oneshot::Receiver<ShutdownReply>);

impl ShutdownRequests {
    /// Asks the daemon to stop; the ticket resolves with the outcome. `Err` when the daemon's
    /// stop task is gone (it stops already and has answered everyone it will).
    pub fn request(&self) -> Result<ShutdownTicket, String> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(ShutdownWaiter { reply })
            .map_err(|_| "the daemon is already stopping".to_string())?;
        Ok(ShutdownTicket(rx))
    }
}

/// The channel between the admin socket ([`ShutdownRequests`], given to the [`AdminApi`]) and
/// the daemon's stop task (the receiver).
pub fn shutdown_channel() -> (ShutdownRequests, mpsc::UnboundedReceiver<ShutdownWaiter>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ShutdownRequests(tx), rx)
}

/// The daemon's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
    /// The answer (see the module docs for its shape per request); `null` on error.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    /// A successful answer carrying `data`.
    pub fn success(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    /// A refusal with its reason.
    pub fn failure(error: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(error.into()),
            data: serde_json::Value::Null,
        }
    }

    /// The data as `T`, or [`AdminError::Refused`] if the daemon said no, or
    /// [`AdminError::Protocol`] if the data does not have the expected shape.
    pub fn into_data<T: serde::de::DeserializeOwned>(self) -> Result<T, AdminError> {
        if !self.ok {
            return Err(AdminError::Refused(self.error.unwrap_or_else(|| {
                "the daemon refused without a reason".to_string()
            })));
        }
        serde_json::from_value(self.data)
            .map_err(|e| AdminError::Protocol(format!("unexpected answer: {e}")))
    }
}

/// What the daemon implements to answer admin requests. Every method must return quickly: it
/// runs on the admin socket's task.
pub trait AdminApi: Send + Sync + 'static {
    /// Own and peer target ports.
    fn portlist(&self) -> Vec<PortInfo>;
    /// Logical units.
    fn lunlist(&self) -> Vec<LunInfo>;
    /// The HA picture.
    fn ha(&self) -> HaInfo;
    /// Sets the preferred role of the controller (`lun` = None) or of one LUN; `Ok` carries a
    /// message for the administrator, `Err` the reason for a refusal.
    fn set_role(&self, role: RoleArg, lun: Option<LunNumber>) -> Result<String, String>;
    /// Starts a planned hand-over of the primary role to the peer.
    fn switchover(&self, lun: Option<LunNumber>) -> Result<String, String>;
    /// I/O statistics.
    fn stat(&self) -> StatInfo;
    /// Starts a stop of the daemon, as SIGTERM does; the ticket resolves with its outcome.
    /// `Err` carries the reason for a refusal.
    fn shutdown(&self) -> Result<ShutdownTicket, String> {
        Err("this daemon cannot be stopped through its admin socket".into())
    }
}

/// Errors of the admin socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {} (is duetd running?)", path.display(), os_message(source))]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed (the daemon went away, or timed out).
    #[error("{}: {}", path.display(), os_message(source))]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon's answer was not understood.
    #[error("bad answer from duetd: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// An I/O error's message without the `(os error N)` suffix std adds.
pub fn os_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match (e.raw_os_error(), s.rfind(" (os error ")) {
        (Some(_), Some(i)) => s[..i].to_string(),
        _ => s,
    }
}

/// Sends one request to the daemon at `path` and waits at most `timeout` for each of connect,
/// write and read.
///
/// A refusal by the daemon is `Ok` with `ok: false` (see [`Response::into_data`]).
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Response, AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = StdUnixStream::connect(path).map_err(|source| AdminError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let timeout = if timeout.is_zero() {
        Duration::from_millis(1)
    } else {
        timeout
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_vec(req)
        .map_err(|e| AdminError::Protocol(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new((&stream).take(MAX_LINE as u64 + 1));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(io_err)?;
    if answer.last() != Some(&b'\n') {
        return Err(if answer.is_empty() {
            AdminError::Protocol("the daemon closed the connection without answering".into())
        } else if answer.len() > MAX_LINE {
            AdminError::Protocol(format!("answer longer than {MAX_LINE} bytes"))
        } else {
            AdminError::Protocol("the answer was cut short".into())
        });
    }
    serde_json::from_slice(&answer).map_err(|e| AdminError::Protocol(e.to_string()))
}

/// Asks the daemon at `path` to stop (`shutdown`) and waits, at most `timeout` in all, for the
/// answer and then for the daemon to exit (the end of the connection). Returns the outcome and
/// whether the daemon was seen to exit within `timeout`.
pub fn shutdown(path: &Path, timeout: Duration) -> Result<(ShutdownInfo, bool), AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let deadline = std::time::Instant::now() + timeout.max(Duration::from_millis(1));
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let stream = StdUnixStream::connect(path).map_err(|source| AdminError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_write_timeout(Some(left())).map_err(io_err)?;
    let mut line = serde_json::to_vec(&Request::Shutdown)
        .map_err(|e| AdminError::Protocol(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    stream.set_read_timeout(Some(left())).map_err(io_err)?;
    let mut reader = BufReader::new((&stream).take(MAX_LINE as u64 + 1));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(io_err)?;
    if answer.last() != Some(&b'\n') {
        return Err(AdminError::Protocol(if answer.is_empty() {
            "the daemon closed the connection without answering".into()
        } else {
            "the answer was cut short".into()
        }));
    }
    let info: ShutdownInfo = serde_json::from_slice::<Response>(&answer)
        .map_err(|e| AdminError::Protocol(e.to_string()))?
        .into_data()?;
    // The daemon holds the connection until it exits: the end of the stream means it is gone.
    let mut rest = [0u8; 256];
    let exited = loop {
        if stream.set_read_timeout(Some(left())).is_err() {
            break false;
        }
        match reader.get_mut().read(&mut rest) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    Ok((info, exited))
}

/// Answers one request line.
pub fn dispatch(api: &dyn AdminApi, line: &[u8]) -> Response {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Response::failure(format!("malformed request: {e}")),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(api, req)));
    match outcome {
        Ok(r) => r,
        Err(_) => Response::failure("internal error while answering the request (see duetd's log)"),
    }
}

fn answer(api: &dyn AdminApi, req: Request) -> Response {
    fn data<T: Serialize>(v: T) -> Response {
        match serde_json::to_value(v) {
            Ok(v) => Response::success(v),
            Err(e) => Response::failure(format!("cannot encode the answer: {e}")),
        }
    }
    fn message(r: Result<String, String>) -> Response {
        match r {
            Ok(m) => Response::success(serde_json::Value::String(m)),
            Err(e) => Response::failure(e),
        }
    }
    match req {
        Request::Portlist => data(api.portlist()),
        Request::Lunlist => data(api.lunlist()),
        Request::Ha => data(api.ha()),
        Request::Stat => data(api.stat()),
        Request::Role { role, lun } => match role.parse::<RoleArg>() {
            Ok(role) => message(api.set_role(role, lun)),
            Err(e) => Response::failure(e),
        },
        Request::Switchover { lun } => message(api.switchover(lun)),
        // Answered by the connection's task, which waits for the stop (see `client`).
        Request::Shutdown => Response::failure("shutdown is answered by the connection"),
    }
}

/// Prepares `path` for binding: creates its directory if missing and removes a stale socket.
/// Refuses to remove anything that is not a socket, or a socket a live daemon still serves.
fn clear_stale(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {}", dir.display(), os_message(&e)),
                )
            })?;
        }
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not removing it",
                path.display()
            ),
        ));
    }
    if StdUnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by a running daemon", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Serves the admin socket at `path` until `shutdown` becomes true (or its sender is dropped),
/// then removes the socket file.
///
/// A stale socket file is removed first; any other file at `path`, or a socket another process
/// still serves, is an error. The socket is made mode 0600 before the first client is accepted.
/// Clients are served concurrently, each on its own task.
pub async fn serve(
    path: PathBuf,
    api: Arc<dyn AdminApi>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    clear_stale(&path)?;
    let with_path = |what: &str, e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot {what} {}: {}", path.display(), os_message(&e)),
        )
    };
    let listener = UnixListener::bind(&path).map_err(|e| with_path("bind", e))?;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&path);
        return Err(with_path("chmod 0600", e));
    }
    let identity = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
    tracing::info!(socket = %path.display(), "admin socket listening");

    let mut clients = JoinSet::new();
    let result = loop {
        if *shutdown.borrow_and_update() {
            break Ok(());
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if clients.len() >= MAX_CLIENTS {
                        tokio::spawn(turn_away(stream));
                    } else {
                        clients.spawn(client(stream, api.clone()));
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, pause briefly, go on.
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };
    clients.shutdown().await;
    drop(listener);
    // Remove the socket only if it is still ours (nobody replaced it meanwhile).
    let still_ours = std::fs::symlink_metadata(&path)
        .map(|m| Some((m.dev(), m.ino())) == identity)
        .unwrap_or(false);
    if still_ours {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the admin socket");
        }
    }
    tracing::info!(socket = %path.display(), "admin socket closed");
    result
}

async fn write_response(stream: &mut (impl AsyncWriteExt + Unpin), r: &Response) -> bool {
    let mut line = match serde_json::to_vec(r) {
        Ok(l) => l,
        Err(_) => br#"{"ok":false,"error":"cannot encode the answer","data":null}"#.to_vec(),
    };
    line.push(b'\n');
    stream.write_all(&line).await.is_ok() && stream.flush().await.is_ok()
}

async fn turn_away(mut stream: UnixStream) {
    let r = Response::failure(format!(
        "too many admin clients (at most {MAX_CLIENTS}); try again"
    ));
    let _ = tokio::time::timeout(Duration::from_secs(1), write_response(&mut stream, &r)).await;
}

/// Serves one connection: a response line per request line, until EOF or an error (on
/// shutdown, [`serve`] aborts the task).
async fn client(stream: UnixStream, api: Arc<dyn AdminApi>) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            let r = Response::failure(format!("request longer than {MAX_LINE} bytes"));
            let _ = write_response(&mut write, &r).await;
            return;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if matches!(
            serde_json::from_slice::<Request>(text),
            Ok(Request::Shutdown)
        ) {
            let ticket = match api.shutdown() {
                Ok(t) => t,
                Err(e) => {
                    if !write_response(&mut write, &Response::failure(e)).await {
                        return;
                    }
                    continue;
                }
            };
            let Ok(reply) = ticket.0.await else {
                let r = Response::failure("the daemon stopped without reporting the outcome");
                let _ = write_response(&mut write, &r).await;
                return;
            };
            let r = match serde_json::to_value(&reply.info) {
                Ok(v) => Response::success(v),
                Err(e) => Response::failure(format!("cannot encode the answer: {e}")),
            };
            let written = write_response(&mut write, &r).await;
            if written {
                // Keep the connection open until the process exits: its end tells the client
                // that the daemon is gone. The descriptor is closed by the exit itself.
                if let Ok(read) = reader.into_inner().reunite(write) {
                    if let Ok(std) = read.into_std() {
                        let _ = std::os::fd::IntoRawFd::into_raw_fd(std);
                    }
                }
            }
            let _ = reply.written.send(());
            return;
        }
        let r = dispatch(api.as_ref(), text);
        if !write_response(&mut write, &r).await {
            return;
        }
    }
}

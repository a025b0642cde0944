//! The daemon: listeners, one task per connection, logical units shared by all sessions.
//!
//! Everything the protocol decides comes from `duet_core`: a connection task feeds received PDUs,
//! command completions and timer expiries into [`duet_core::iscsi::Connection`] and performs the
//! actions it returns, in order. SCSI commands are prepared by [`LogicalUnit::prepare`] under the
//! LU's mutex (fast, no I/O); their medium phase ([`run_io`]) runs with no LU lock held: in place
//! when it cannot wait for a device (reads and writes on tmpfs), else on tokio's blocking pool.
//! The connection task writes its own responses, batched into vectored writes, so a command
//! that completes in place costs no thread hand-off at all. COMPARE AND WRITE takes the LU's I/O
//! lock exclusively, every other medium operation shares it, so C&W is atomic against
//! concurrent writes.
//!
//! The ALUA picture comes from `duet_core::alua::group_states` with the facts a stand-alone
//! controller knows (primary here, HA off); an HA runtime only changes those inputs
//! ([`Target::set_alua`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{IoSlice, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use duet_core::alua::{self, AluaState, GroupStates, HaMode, LunView, PeerReach, PrimaryView};
use duet_core::iscsi::{
    Action, ChapConfig, ChapCredentials, CloseReason, Codec, Completion, Connection, IscsiConfig,
    LoginEntropy, Lun as WireLun, Millis, Opcode, PortalInfo, ScsiCommand, SessionIdentity,
    SessionType, TargetConfig, TargetLimits, TmfFunction, TmfRequest, TmfResponse, TsihAllocator,
};
use duet_core::scsi::{
    run_io, AluaPicture, BlockStore, CommandContext, Effect, IoOp, IoPlan, LogicalUnit, LuConfig,
    Nexus, Outcome, PortGroup, PrState, Prepared, ResetKind, Sense,
};
use duet_core::sense::{status, SenseCode};

use crate::backend::{pr_state_path, write_file_atomically, FileStore, OpenSpec};
use crate::config::{AuthGroup, AuthType, Config};
use crate::ha::gate::IoGate;
use crate::idle_poll::IdlePoll;
use crate::stats::{OpKind, Stats};

/// This controller's HA id while HA is off (DESIGN §2.3: a stand-alone controller is node 1).
pub const STANDALONE_HA_ID: u8 = 1;

/// Vendor identification reported in INQUIRY.
pub const VENDOR: &str = "DUET";
/// Product identification reported in INQUIRY.
pub const PRODUCT: &str = "duet";

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("lun {lun} of {target}: {message}")]
    Lun {
        target: String,
        lun: u16,
        message: String,
    },
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// One logical unit: the SCSI state (shared by every session) and its backing store.
pub struct Lu {
    pub number: u16,
    /// The command-set state; locked only for `prepare` and bookkeeping, never across I/O.
    pub state: Mutex<LogicalUnit>,
    /// Shared by medium operations, taken exclusively by COMPARE AND WRITE. An async lock: in HA
    /// mode 1 the primary holds it on behalf of the secondary while the secondary's medium phase
    /// runs (a grant).
    pub io_lock: Arc<tokio::sync::RwLock<()>>,
    /// The fencing gate: closed while this controller must not touch the backend.
    pub gate: Arc<IoGate>,
    /// This LUN's ALUA picture (the same from every port of both controllers).
    alua: RwLock<AluaPicture>,
    pub store: Arc<FileStore>,
    pr_path: PathBuf,
}

impl Lu {
    /// The current ALUA picture of this LUN.
    pub fn alua(&self) -> AluaPicture {
        match self.alua.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the ALUA picture, raising 2A/06 on every nexus when it changed. Returns whether
    /// it changed.
    pub fn set_alua(&self, new: AluaPicture) -> bool {
        let changed = {
            let mut g = match self.alua.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let changed = *g != new;
            *g = new;
            changed
        };
        if changed {
            self.lock()
                .raise_ua_all(SenseCode::UA_ALUA_STATE_CHANGED, None);
        }
        changed
    }

    /// Locks the command-set state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, LogicalUnit> {
        // A panic while holding the lock leaves the state as the last command left it; serving on
        // is better than refusing every later command.
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Writes (or removes) the persisted reservation state after a PR OUT.
    pub fn persist_pr(&self, aptpl: bool) {
        let result = if aptpl {
            let json = serde_json::to_vec_pretty(self.lock().pr_state());
            match json {
                Ok(data) => write_file_atomically(&self.pr_path, &data),
                Err(e) => Err(std::io::Error::other(e)),
            }
        } else {
            match std::fs::remove_file(&self.pr_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        if let Err(e) = result {
            tracing::error!(lun = self.number, path = %self.pr_path.display(),
                "cannot persist the persistent reservation state: {e}");
        }
    }
}

/// A target with its LUNs and ALUA picture.
pub struct Target {
    pub name: String,
    pub tpgt: u16,
    /// The relative target port id of this target's port (target name + portal group tag).
    pub rtpi: u16,
    pub luns: BTreeMap<u16, Arc<Lu>>,
    pub lun_list: Vec<u64>,
    /// This controller's HA id (1 when HA is off).
    pub ha_id: u8,
    /// The relative port id of the peer controller's port for this target (HA only).
    pub peer_rtpi: Option<u16>,
}

impl Target {
    /// The ALUA picture of the target's first LUN (a picture for LUNs that do not exist).
    pub fn alua(&self) -> AluaPicture {
        match self.luns.values().next() {
            Some(lu) => lu.alua(),
            None => alua_picture(standalone_view(), self.ha_id, &[self.rtpi], &[]),
        }
    }

    /// The ALUA picture for `view`: this target's port in this controller's group, the peer's
    /// port in the peer's group.
    pub fn picture(&self, view: LunView) -> AluaPicture {
        let peer: Vec<u16> = self.peer_rtpi.into_iter().collect();
        alua_picture(view, self.ha_id, &[self.rtpi], &peer)
    }

    /// Replaces the ALUA picture of every LUN from the facts the HA layer knows, raising 2A/06
    /// on every nexus of every LU whose states change.
    pub fn set_alua(&self, view: LunView, peer_ports: &[u16]) {
        let new = alua_picture(view, self.ha_id, &[self.rtpi], peer_ports);
        for lu in self.luns.values() {
            lu.set_alua(new.clone());
        }
    }
}

/// The ALUA picture from the facts controller `ha_id` knows: its own group holds `local_ports`,
/// the peer's group (reported only when the peer has ports, i.e. HA is configured) holds
/// `peer_ports`. Groups are listed by id, so both controllers report the same picture.
pub fn alua_picture(
    view: LunView,
    ha_id: u8,
    local_ports: &[u16],
    peer_ports: &[u16],
) -> AluaPicture {
    let GroupStates { local, peer } = alua::group_states(view);
    let mut groups = vec![PortGroup {
        id: alua::port_group_id(ha_id),
        state: local,
        preferred: false,
        ports: local_ports.to_vec(),
        status: 0,
    }];
    if !peer_ports.is_empty() {
        groups.push(PortGroup {
            id: alua::port_group_id(3 - ha_id.clamp(1, 2)),
            state: peer,
            preferred: false,
            ports: peer_ports.to_vec(),
            status: 0,
        });
    }
    groups.sort_by_key(|g| g.id);
    AluaPicture {
        groups,
        explicit: false,
        transition_time: 0,
    }
}

/// The facts of a controller running alone: primary here, no peer.
pub fn standalone_view() -> LunView {
    LunView {
        mode: HaMode::ActiveStandby,
        primary: PrimaryView::Local,
        peer: PeerReach::Down,
    }
}

/// What other connections may be told to do.
#[derive(Debug, Clone)]
enum ConnMsg {
    /// Abort this session's tasks on the LUN (all when `None`): a reset from another nexus.
    AbortTasks(Option<u16>),
    /// Close the connection now (session reinstated, cold reset).
    Close,
    /// A task management function finished after the primary confirmed its part.
    TmfDone { itt: u32, resp: TmfResponse },
}

struct SessionEntry {
    identity: SessionIdentity,
    tx: mpsc::UnboundedSender<ConnMsg>,
}

/// State shared by every connection.
pub struct Shared {
    pub config: Config,
    pub targets: HashMap<String, Arc<Target>>,
    /// iSCSI configuration per portal group name.
    iscsi: HashMap<String, Arc<IscsiConfig>>,
    tsih: Mutex<TsihAllocator>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    next_conn: AtomicU64,
    epoch: Instant,
    /// The HA runtime, when the configuration has an `[ha]` section and it has started.
    pub ha: crate::ha::runtime::HaSlot,
    /// Per-LUN and per-port I/O statistics (`duetctl stat`).
    pub stats: Arc<Stats>,
    /// The threads that run connections.
    threads: ConnThreads,
}

impl Shared {
    /// The runtime of the first connection thread.
    pub(crate) fn first_conn_thread(&self) -> tokio::runtime::Handle {
        self.threads.handles[0].clone()
    }

    fn now(&self) -> Millis {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn target_by_name(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.get(&name.to_ascii_lowercase())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionEntry>> {
        match self.sessions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Tells every other session on `target` to do `msg`.
    fn broadcast(&self, except: u64, target: &str, msg: ConnMsg) {
        for (id, s) in self.sessions().iter() {
            if *id != except
                && s.identity
                    .target_name
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(target))
            {
                let _ = s.tx.send(msg.clone());
            }
        }
    }

    /// Flushes every backend (shutdown).
    pub fn flush_all(&self) {
        for t in self.targets.values() {
            for lu in t.luns.values() {
                if let Err(e) = lu.store.flush() {
                    tracing::error!(target = %t.name, lun = lu.number, "flush failed: {e}");
                }
            }
        }
    }
}

fn chap_configs(ag: &AuthGroup) -> Vec<ChapConfig> {
    ag.chap
        .iter()
        .map(|c| ChapConfig {
            initiator: ChapCredentials {
                user: c.user.clone(),
                secret: c.secret.as_bytes().to_vec(),
            },
            target: match (&c.mutual_user, &c.mutual_secret) {
                (Some(u), Some(s)) => Some(ChapCredentials {
                    user: u.clone(),
                    secret: s.as_bytes().to_vec(),
                }),
                _ => None,
            },
        })
        .collect()
}

fn allowed_initiators(ag: &AuthGroup) -> Vec<String> {
    ag.initiator_names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

/// The CHAP credentials an auth group accepts (any of them may log in); none = no CHAP.
fn chap_for(ag: &AuthGroup) -> Vec<ChapConfig> {
    match ag.auth_type {
        AuthType::None | AuthType::Deny => Vec::new(),
        AuthType::Chap | AuthType::ChapMutual => chap_configs(ag),
    }
}

fn portal_address(addr: &SocketAddr, tpgt: u16) -> String {
    format!("{addr},{tpgt}")
}

/// Builds every target, opens every backend and restores persisted reservations.
pub fn build(config: Config, limits: TargetLimits) -> Result<Shared, StartError> {
    let mut targets = HashMap::new();
    let ha_id = config.ha_id();
    let ha = ha_id != 0;
    let ha_id = if ha { ha_id } else { STANDALONE_HA_ID };
    for t in &config.targets {
        let pg = config
            .portal_group(&t.portal_group)
            .cloned()
            .ok_or_else(|| StartError::Lun {
                target: t.name.clone(),
                lun: 0,
                message: format!("no portal group `{}`", t.portal_group),
            })?;
        let rtpi = alua::relative_port_id(ha_id, pg.tag.saturating_sub(1));
        let peer_rtpi = ha.then(|| alua::relative_port_id(3 - ha_id, pg.tag.saturating_sub(1)));
        let peer_ports: Vec<u16> = peer_rtpi.into_iter().collect();
        // Until the HA node has spoken, a controller of a pair serves nothing: Transitioning.
        let first_view = if ha {
            LunView {
                mode: config.ha_mode(),
                primary: PrimaryView::None,
                peer: PeerReach::Unknown,
            }
        } else {
            standalone_view()
        };
        let first_picture = alua_picture(first_view, ha_id, &[rtpi], &peer_ports);
        let mut luns = BTreeMap::new();
        for l in &t.luns {
            let store = FileStore::open(&OpenSpec {
                path: &l.path,
                size: l.size,
                block_size: l.block_size,
                read_only: l.read_only,
                create: l.create,
            })?;
            let mut cfg = LuConfig::new(
                u64::from(l.number),
                l.block_size,
                store.len() / u64::from(l.block_size),
                &l.serial,
            );
            cfg.naa = Some(l.naa);
            cfg.read_only = l.read_only;
            cfg.vendor = VENDOR.to_string();
            cfg.product = PRODUCT.to_string();
            cfg.revision = env!("CARGO_PKG_VERSION")
                .chars()
                .filter(|c| *c != '.')
                .take(4)
                .collect();
            cfg.thin = !store.is_block_device();
            // One WRITE SAME may cover no more than one WRITE: initiators size their requests
            // (and libiscsi its tests) by either limit.
            cfg.max_write_same_blocks = cfg
                .max_write_same_blocks
                .min(u64::from(cfg.max_transfer_blocks));
            let mut lu = LogicalUnit::new(cfg).map_err(|e| StartError::Lun {
                target: t.name.clone(),
                lun: l.number,
                message: e.to_string(),
            })?;
            let pr_path = pr_state_path(&l.path);
            if let Ok(data) = std::fs::read(&pr_path) {
                match serde_json::from_slice::<PrState>(&data) {
                    Ok(st) => {
                        tracing::info!(target = %t.name, lun = l.number, path = %pr_path.display(),
                            "restored persistent reservations (APTPL)");
                        lu.restore_pr(st);
                    }
                    Err(e) => {
                        return Err(StartError::Lun {
                            target: t.name.clone(),
                            lun: l.number,
                            message: format!(
                                "{}: unreadable reservation state: {e}",
                                pr_path.display()
                            ),
                        })
                    }
                }
            }
            tracing::info!(target = %t.name, lun = l.number, path = %l.path.display(),
                bytes = store.len(), block_size = l.block_size, read_only = l.read_only, "LUN ready");
            luns.insert(
                l.number,
                Arc::new(Lu {
                    number: l.number,
                    state: Mutex::new(lu),
                    io_lock: Arc::new(tokio::sync::RwLock::new(())),
                    gate: IoGate::new(!ha),
                    alua: RwLock::new(first_picture.clone()),
                    store: Arc::new(store),
                    pr_path,
                }),
            );
        }
        let lun_list = luns.keys().map(|n| u64::from(*n)).collect();
        targets.insert(
            t.name.to_ascii_lowercase(),
            Arc::new(Target {
                name: t.name.clone(),
                tpgt: pg.tag,
                rtpi,
                luns,
                lun_list,
                ha_id,
                peer_rtpi,
            }),
        );
    }
    let mut iscsi = HashMap::new();
    for pg in &config.portal_groups {
        let mut tcs = Vec::new();
        for t in config.targets_in(&pg.name) {
            let ag = config.auth_group(&t.auth_group);
            tcs.push(TargetConfig {
                name: t.name.clone(),
                alias: t.alias.clone(),
                allowed_initiators: ag.map(allowed_initiators).unwrap_or_default(),
                chap: ag.map(chap_for).unwrap_or_default(),
                deny_all: ag.is_none_or(|a| a.auth_type == AuthType::Deny),
                addresses: pg
                    .listen
                    .iter()
                    .filter(|a| !a.ip().is_unspecified())
                    .map(|a| portal_address(a, pg.tag))
                    .collect(),
            });
        }
        let dag = config.auth_group(&pg.discovery_auth_group);
        iscsi.insert(
            pg.name.clone(),
            Arc::new(IscsiConfig {
                targets: tcs,
                discovery_chap: dag.map(chap_for).unwrap_or_default(),
                discovery_deny: dag.is_none_or(|a| a.auth_type == AuthType::Deny),
                limits: limits.clone(),
            }),
        );
    }
    let threads = ConnThreads::start(config.io_threads).map_err(StartError::Threads)?;
    Ok(Shared {
        config,
        targets,
        iscsi,
        tsih: Mutex::new(TsihAllocator::new()),
        sessions: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        epoch: Instant::now(),
        ha: crate::ha::runtime::HaSlot::new(),
        stats: Arc::new(Stats::new()),
        threads,
    })
}

/// The iSCSI limits for a configuration (ping interval and timeout from `ping_timeout`).
pub fn limits_for(config: &Config) -> TargetLimits {
    let ms = config.ping_timeout.saturating_mul(1000);
    TargetLimits {
        nop_in_interval_ms: ms,
        nop_in_timeout_ms: ms,
        ..TargetLimits::default()
    }
}

/// Random values for one login, from the operating system.
fn login_entropy(tsih: u16) -> LoginEntropy {
    let mut buf = [0u8; 33];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        // /dev/urandom is always present on Linux; if it is not, fall back to the hasher's
        // per-process random keys rather than a fixed challenge.
        use std::hash::{BuildHasher, Hasher};
        for chunk in buf.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(tsih as u64);
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    let mut chap_challenge = [0u8; 32];
    chap_challenge.copy_from_slice(&buf[1..33]);
    LoginEntropy {
        chap_id: buf[0],
        chap_challenge,
        tsih,
    }
}

/// Runs the daemon until `shutdown` turns true: binds every portal, serves, then drains.
pub async fn serve(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let mut listeners = Vec::new();
    for pg in &shared.config.portal_groups {
        if !shared
            .config
            .targets
            .iter()
            .any(|t| t.portal_group == pg.name)
        {
            tracing::info!(portal_group = %pg.name, "no target uses this portal group; not listening");
            continue;
        }
        for addr in &pg.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
                    addr: *addr,
                    source,
                })?;
            tracing::info!(portal_group = %pg.name, tag = pg.tag, %addr, "listening");
            listeners.push((l, pg.name.clone(), pg.tag));
        }
    }
    tracing::info!(threads = shared.threads.len(), "connection threads");
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, pg, tag) in listeners {
        let shared = shared.clone();
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    r = listener.accept() => match r {
                        Ok((sock, peer)) => {
                            let shared = shared.clone();
                            let pg = pg.clone();
                            let stop = stop.clone();
                            let thread = shared.threads.next().clone();
                            conns.spawn_on(async move {
                                run_connection(shared, sock, peer, pg, tag, stop).await;
                            }, &thread);
                        }
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            while conns.join_next().await.is_some() {}
        });
    }
    // Wait for the shutdown request, then for every listener task to finish its connections.
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    tracing::info!("shutting down: no new connections; finishing sessions");
    while tasks.join_next().await.is_some() {}
    shared.flush_all();
    tracing::info!("backends flushed; exiting");
    Ok(())
}

/// The threads that run iSCSI connections, each a single-threaded runtime. A connection lives
/// on one of them (round-robin), so a request wakes one thread, which reads, executes and
/// answers it before it sleeps again: no hand-off between worker threads, the lowest latency at
/// queue depth 1, and connections spread over the CPUs. Dropping it ends the threads.
struct ConnThreads {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl ConnThreads {
    /// Starts `n` threads (0: one per CPU).
    fn start(n: usize) -> std::io::Result<ConnThreads> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n
        };
        let mut t = ConnThreads {
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            t.handles.push(rt.handle().clone());
            t.stops.push(stop_tx);
            std::thread::Builder::new()
                .name(format!("duetd-conn-{i}"))
                .spawn(move || {
                    let _ = rt.block_on(stop_rx);
                })?;
        }
        Ok(t)
    }

    fn len(&self) -> usize {
        self.handles.len()
    }

    /// The runtime of the thread whose turn it is.
    fn next(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

impl Drop for ConnThreads {
    fn drop(&mut self) {
        // Each thread ends (dropping what still runs there) once told; it is not joined, as the
        // last owner may be a task on one of them.
        self.stops.clear();
    }
}

/// Encoded PDUs waiting for the socket, in order. The connection task writes them itself with
/// vectored writes, as many PDUs per system call as the socket takes.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

/// Buffers handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// While this many bytes wait for the socket, the connection reads no new PDUs (the initiator
/// is not reading its responses; CmdSN windows bound the rest).
const OUTBOX_HIGH_WATER: usize = 8 << 20;
/// Receive buffer: grown by this much when less than [`READ_MIN_SPACE`] is free, so one read
/// takes a large Data-Out or many small PDUs.
const READ_CHUNK: usize = 256 << 10;
const READ_MIN_SPACE: usize = 32 << 10;
/// How long a closing connection waits for the initiator to take its last PDUs.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Outbox {
    fn push_pdu(&mut self, parts: [Bytes; 3]) {
        for p in parts {
            if !p.is_empty() {
                self.bytes += p.len();
                self.queue.push_back(p);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes as much as the socket takes without waiting. `Ok(true)`: everything is written.
    fn write_some(&mut self, sock: &TcpStream) -> std::io::Result<bool> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.queue.len().min(MAX_IOVECS);
            for (slot, b) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(b);
            }
            match sock.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    self.bytes -= written;
                    while written > 0 {
                        let Some(front) = self.queue.front_mut() else {
                            break;
                        };
                        if written >= front.len() {
                            written -= front.len();
                            self.queue.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes everything, waiting for the socket (at most [`CLOSE_FLUSH_TIMEOUT`]).
    async fn flush(&mut self, sock: &TcpStream) {
        let deadline = tokio::time::Instant::now() + CLOSE_FLUSH_TIMEOUT;
        loop {
            match self.write_some(sock) {
                Ok(true) | Err(_) => return,
                Ok(false) => {}
            }
            match tokio::time::timeout_at(deadline, sock.writable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// A command's result on its way back to the connection task.
struct Done {
    itt: u32,
    completion: Completion,
}

struct ConnCtx {
    shared: Arc<Shared>,
    id: u64,
    codec: Codec,
    out: Outbox,
    done_tx: mpsc::UnboundedSender<Done>,
    msg_tx: mpsc::UnboundedSender<ConnMsg>,
    identity: Option<SessionIdentity>,
    target: Option<Arc<Target>>,
    nexus: Option<Nexus>,
    /// Commands running off this task (blocking pool, HA link).
    in_flight: usize,
    closing: bool,
    peer: SocketAddr,
    /// The status of a failing Login Response, for the log.
    login_status: Option<(u8, u8)>,
    /// A reset that the primary must also perform before the TMF is answered (HA).
    peer_reset: Option<(Vec<u32>, bool)>,
}

impl ConnCtx {
    /// Counts command `itt` as running off this task and returns what completes it: its
    /// completion comes back through `done_tx`.
    fn reply_later(&mut self, itt: u32) -> impl FnOnce(Completion) + Send + 'static {
        self.in_flight += 1;
        let done_tx = self.done_tx.clone();
        move |completion| {
            let _ = done_tx.send(Done { itt, completion });
        }
    }
}

/// One connection, run to completion on one task: it reads and decodes PDUs, feeds them to the
/// core's [`Connection`], runs short medium phases in place ([`run_inline`]), and writes the
/// responses itself in batches. Only medium phases that may wait for a device, and commands
/// forwarded over the HA link, leave the task.
async fn run_connection(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    pg: String,
    tag: u16,
    mut stop: watch::Receiver<bool>,
) {
    // The listener accepted the socket on the main runtime; register it with this thread's own
    // runtime, so that its readiness wakes this thread directly.
    let Ok(sock) = sock.into_std().and_then(TcpStream::from_std) else {
        return;
    };
    let _ = sock.set_nodelay(true);
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let Some(iscsi) = shared.iscsi.get(&pg).cloned() else {
        return;
    };
    let tsih = {
        let mut a = match shared.tsih.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        a.allocate()
    };
    let Some(tsih) = tsih else {
        tracing::warn!(%peer, "no free TSIH; refusing the connection");
        return;
    };
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, %local, conn = id, "connection accepted");
    let login_timeout = iscsi.limits.login_timeout_ms;
    let mut conn = Connection::new(
        iscsi,
        PortalInfo {
            address: portal_address(&local, tag),
            portal_group_tag: tag,
        },
        login_entropy(tsih),
    );
    if login_timeout > 0 {
        conn.set_login_deadline(shared.now().saturating_add(login_timeout));
    }
    let mut sock = sock;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<ConnMsg>();
    let mut cx = ConnCtx {
        shared: shared.clone(),
        id,
        codec: Codec::new(),
        out: Outbox::default(),
        done_tx,
        msg_tx,
        identity: None,
        target: None,
        nexus: None,
        in_flight: 0,
        closing: false,
        peer,
        login_status: None,
        peer_reset: None,
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut shutting_down = *stop.borrow();
    let mut read_open = true;
    let mut write_open = true;
    // After the connection was busy, its thread polls the socket for a moment before it sleeps:
    // the next command of a host that answers at once then costs no wake-up of this thread.
    let mut idle = IdlePoll::new(Duration::from_micros(shared.config.poll_us));
    loop {
        // Send what the last step produced before waiting for anything.
        if write_open && !cx.out.is_empty() {
            if let Err(e) = cx.out.write_some(&sock) {
                tracing::debug!(conn = id, "write failed: {e}");
                write_open = false;
                read_open = false;
                conn.shutdown(shared.now());
                cx.closing = true;
            }
        }
        if cx.closing {
            break;
        }
        if shutting_down && cx.in_flight == 0 {
            break;
        }
        // Connections share their thread: a busy one gives way now and then.
        tokio::task::consume_budget().await;
        let want_read = read_open && !shutting_down && cx.out.bytes < OUTBOX_HIGH_WATER;
        let want_write = write_open && !cx.out.is_empty();
        let interest = match (want_read, want_write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        let timeout = conn.next_timeout();
        let sleep_for = timeout.map(|t| Duration::from_millis(t.saturating_sub(shared.now())));
        tokio::select! {
            biased;
            Some(d) = done_rx.recv() => {
                // Everything completed meanwhile is answered together: one write for the batch.
                let mut next = Some(d);
                while let Some(d) = next {
                    cx.in_flight = cx.in_flight.saturating_sub(1);
                    conn.complete_command(d.itt, d.completion, shared.now());
                    drain(&mut conn, &mut cx);
                    next = done_rx.try_recv().ok();
                }
            }
            Some(m) = msg_rx.recv() => match m {
                ConnMsg::AbortTasks(lun) => {
                    let _ = conn.abort_tasks(lun.map(WireLun::from_number), shared.now());
                }
                ConnMsg::Close => {
                    conn.shutdown(shared.now());
                    cx.closing = true;
                }
                ConnMsg::TmfDone { itt, resp } => {
                    conn.complete_task_management(itt, resp, shared.now());
                }
            },
            _ = stop.changed(), if !shutting_down => {
                shutting_down = true;
                // Ask the initiator to log out; in-flight commands finish before we close.
                conn.request_logout(0, shared.now());
            }
            r = async {
                match interest {
                    Some(i) => sock.ready(i).await,
                    None => std::future::pending().await,
                }
            } => {
                let readable = match r {
                    Ok(ready) => ready.is_readable() || ready.is_read_closed(),
                    Err(_) => true,
                };
                if want_read && readable && !read_pdus(&sock, &mut buf, &mut conn, &mut cx) {
                    read_open = false;
                }
                // Writability is used at the top of the loop.
            }
            _ = async {
                match sleep_for {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                conn.handle_timeout(shared.now());
            }
            // Lowest priority: one polling round, then look again.
            _ = idle.round(), if want_read && idle.active() => continue,
        }
        idle.busy();
        drain(&mut conn, &mut cx);
    }
    // Tear down: abort what is left, send the last PDUs, tell the LUs the nexus is gone, release
    // the TSIH.
    conn.shutdown(shared.now());
    drain(&mut conn, &mut cx);
    if write_open {
        cx.out.flush(&sock).await;
        let _ = sock.shutdown().await;
    }
    if let (Some(t), Some(n)) = (&cx.target, &cx.nexus) {
        for lu in t.luns.values() {
            lu.lock().nexus_lost(n);
            if let Some(ha) = shared.ha.get() {
                ha.peer_nexus_lost(u32::from(lu.number), n.clone());
            }
        }
    }
    shared.sessions().remove(&id);
    if let Ok(mut a) = shared.tsih.lock() {
        a.release(tsih);
    }
    if let Some(idn) = &cx.identity {
        tracing::info!(conn = id, initiator = %idn.initiator_name, peer = %cx.peer, "session ended");
    }
}

/// Reads what the socket holds, without waiting, and hands every complete PDU to `conn`.
/// Returns `false` when the initiator closed the connection (or it failed): the connection is
/// then shutting down.
fn read_pdus(
    sock: &TcpStream,
    buf: &mut BytesMut,
    conn: &mut Connection,
    cx: &mut ConnCtx,
) -> bool {
    if buf.capacity() - buf.len() < READ_MIN_SPACE {
        buf.reserve(READ_CHUNK);
    }
    match sock.try_read_buf(buf) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::Interrupted =>
        {
            true
        }
        Ok(0) | Err(_) => {
            conn.shutdown(cx.shared.now());
            cx.closing = true;
            false
        }
        Ok(_) => {
            loop {
                match cx.codec.decode(buf) {
                    Ok(Some(pdu)) => {
                        conn.handle_pdu(pdu, cx.shared.now());
                        drain(conn, cx);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        tracing::debug!(conn = cx.id, "bad PDU: {e}");
                        conn.handle_decode_error(e, cx.shared.now());
                        drain(conn, cx);
                        if fatal {
                            break;
                        }
                    }
                }
                if cx.closing {
                    break;
                }
            }
            true
        }
    }
}

/// Words for a Login Response status (RFC 7143 §11.13.5).
fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, _) => "redirection",
        (2, 0) => "initiator error",
        (2, 1) => "authentication failed",
        (2, 2) => "initiator not allowed",
        (2, 3) => "target not found",
        (2, 4) => "target removed",
        (2, 5) => "unsupported version",
        (2, 6) => "too many connections",
        (2, 7) => "missing parameter",
        (2, 8) => "cannot include in session",
        (2, 9) => "session type not supported",
        (2, 10) => "session does not exist",
        (2, 11) => "invalid request during login",
        (3, 0) => "target error",
        (3, 1) => "service unavailable",
        (3, 2) => "out of resources",
        _ => "login failed",
    }
}

/// Performs every pending action of the connection, in order.
fn drain(conn: &mut Connection, cx: &mut ConnCtx) {
    while let Some(a) = conn.poll_action() {
        match a {
            Action::Send(pdu) => {
                if pdu.opcode() == Some(Opcode::LoginResponse) && pdu.status_class() != 0 {
                    cx.login_status = Some((pdu.status_class(), pdu.status_detail()));
                }
                cx.out.push_pdu(cx.codec.encode_vectored(&pdu));
            }
            Action::LoginComplete(done) => {
                cx.codec.configure(&done.params);
                let idn = done.identity;
                tracing::info!(conn = cx.id, initiator = %idn.initiator_name,
                    target = idn.target_name.as_deref().unwrap_or("(discovery)"),
                    peer = %cx.peer, "login");
                if idn.session_type == SessionType::Normal {
                    if let Some(t) = idn
                        .target_name
                        .as_deref()
                        .and_then(|n| cx.shared.target_by_name(n))
                    {
                        cx.target = Some(t.clone());
                        cx.nexus = Some(Nexus::new(&idn.initiator_name, idn.isid, t.rtpi));
                    }
                }
                // Session reinstatement: an older session of the same nexus is closed.
                let tx = cx.msg_tx.clone();
                {
                    let mut sessions = cx.shared.sessions();
                    for s in sessions.values() {
                        if s.identity.same_nexus(&idn) {
                            let _ = s.tx.send(ConnMsg::Close);
                        }
                    }
                    sessions.insert(
                        cx.id,
                        SessionEntry {
                            identity: idn.clone(),
                            tx,
                        },
                    );
                }
                cx.identity = Some(idn);
            }
            Action::Execute(cmd) => {
                if let Some(d) = execute(cx, cmd) {
                    conn.complete_command(d.itt, d.completion, cx.shared.now());
                }
            }
            Action::Abort { itts } => {
                tracing::debug!(conn = cx.id, ?itts, "tasks aborted");
            }
            Action::TaskManagement(req) => {
                let resp = task_management(cx, &req);
                match (cx.peer_reset.take(), cx.shared.ha.get()) {
                    (Some((luns, cold)), Some(ha)) if !luns.is_empty() => {
                        // The LU that serves is the primary's: answer once it has reset too.
                        let (ha, tx, itt) = (ha.clone(), cx.msg_tx.clone(), req.itt);
                        tokio::spawn(async move {
                            ha.peer_reset(luns, cold).await;
                            let _ = tx.send(ConnMsg::TmfDone { itt, resp });
                        });
                    }
                    _ => conn.complete_task_management(req.itt, resp, cx.shared.now()),
                }
            }
            Action::Close(reason) => {
                match &reason {
                    CloseReason::LoggedOut => tracing::debug!(conn = cx.id, "logged out"),
                    CloseReason::LoginFailed => {
                        let (class, detail) = cx.login_status.unwrap_or((0, 0));
                        tracing::info!(
                            conn = cx.id,
                            peer = %cx.peer,
                            "login refused: status {class}/{detail} ({})",
                            login_status_text(class, detail)
                        )
                    }
                    other => tracing::warn!(conn = cx.id, peer = %cx.peer, "closing: {other:?}"),
                }
                cx.closing = true;
            }
        }
    }
}

/// The iSCSI completion of a SCSI outcome.
pub fn completion_of(o: Outcome) -> Completion {
    Completion {
        status: o.status,
        sense: o.sense.map(Bytes::from),
        data_in: Bytes::from(o.data_in),
        wanted_len: o.wanted_len,
    }
}

/// A CHECK CONDITION completion with fixed-format sense `code`.
pub fn check(code: SenseCode) -> Completion {
    Completion {
        status: status::CHECK_CONDITION,
        sense: Some(Bytes::from(Sense::new(code).to_bytes(false))),
        data_in: Bytes::new(),
        wanted_len: 0,
    }
}

/// Answers a command for a LUN the target does not have (SPC-4 §4.6.4): INQUIRY reports
/// "no logical unit" (peripheral qualifier 3), REPORT LUNS lists the real ones, REQUEST SENSE
/// reports LOGICAL UNIT NOT SUPPORTED, everything else fails with it.
fn no_such_lun(target: &Target, cmd: &ScsiCommand, ctx: &CommandContext<'_>) -> Completion {
    let op = cmd.cdb.first().copied().unwrap_or(0xFF);
    match op {
        0xA0 => {
            if let Some(lu) = target.luns.values().next() {
                let out = lu.lock().prepare(ctx, &cmd.cdb, &cmd.data_out);
                if let Prepared::Done(o) = out {
                    return completion_of(o);
                }
            }
            check(SenseCode::LUN_NOT_SUPPORTED)
        }
        0x12 => {
            let alloc = cmd
                .cdb
                .get(3..5)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .unwrap_or(0);
            let mut data = vec![0u8; 36];
            data[0] = 0x7F; // qualifier 011b, type 1Fh
            data[2] = 0x06;
            data[3] = 0x02;
            data[4] = 31;
            data[8..12].copy_from_slice(b"DUET");
            data[16..20].copy_from_slice(b"duet");
            data[12..16].copy_from_slice(b"    ");
            for b in &mut data[20..36] {
                *b = b' ';
            }
            let wanted = alloc as u32;
            data.truncate(alloc);
            Completion {
                status: status::GOOD,
                sense: None,
                data_in: Bytes::from(data),
                wanted_len: wanted,
            }
        }
        0x03 => {
            let alloc = cmd.cdb.get(4).copied().unwrap_or(0) as usize;
            let mut data = Sense::new(SenseCode::LUN_NOT_SUPPORTED).to_bytes(false);
            data.truncate(alloc);
            Completion {
                status: status::GOOD,
                sense: None,
                wanted_len: alloc as u32,
                data_in: Bytes::from(data),
            }
        }
        _ => check(SenseCode::LUN_NOT_SUPPORTED),
    }
}

/// Counts a command in the statistics when it finishes.
struct CommandTimer {
    stats: Arc<Stats>,
    lun: u32,
    port: u16,
    op: u8,
    started: Instant,
}

impl CommandTimer {
    fn finish(self, c: Completion) -> Completion {
        let kind = op_kind(self.op);
        let bytes = match kind {
            OpKind::Read => c.data_in.len() as u64,
            OpKind::Write => u64::from(c.wanted_len),
            OpKind::Other => 0,
        };
        self.stats
            .record(self.lun, self.port, kind, bytes, self.started.elapsed());
        c
    }
}

/// Runs one SCSI command: phase 1 here (under the LU lock), then the medium phase, in place when
/// it cannot wait ([`run_inline`]) and on the blocking pool otherwise. On a controller of an HA
/// pair that is not serving the LUN, the command goes to the primary. Returns the completion
/// when the command finished here and now; otherwise it arrives later through `done_tx`.
fn execute(cx: &mut ConnCtx, cmd: ScsiCommand) -> Option<Done> {
    let itt = cmd.itt;
    let (Some(target), Some(nexus)) = (cx.target.clone(), cx.nexus.clone()) else {
        return Some(Done {
            itt,
            completion: check(SenseCode::LUN_NOT_SUPPORTED),
        });
    };
    let lu = cmd.lun.number().and_then(|n| target.luns.get(&n)).cloned();
    let Some(lu) = lu else {
        let alua_pic = target.alua();
        let ctx = CommandContext {
            nexus: &nexus,
            alua: &alua_pic,
            target_name: &target.name,
            tpgt: target.tpgt,
            luns: &target.lun_list,
        };
        return Some(Done {
            itt,
            completion: no_such_lun(&target, &cmd, &ctx),
        });
    };
    let lun = u32::from(lu.number);
    let timer = CommandTimer {
        stats: cx.shared.stats.clone(),
        lun,
        port: target.rtpi,
        op: cmd.cdb.first().copied().unwrap_or(0xFF),
        started: Instant::now(),
    };
    if let Some(ha) = cx.shared.ha.get().cloned() {
        if let Some(plan_only) = ha.forward_mode(lun) {
            let reply = cx.reply_later(itt);
            ha.forward(&lu, nexus, cmd.cdb, cmd.data_out, plan_only, move |c| {
                reply(timer.finish(c))
            });
            return None;
        }
    }
    let prepared = prepare_local(&target, &lu, &nexus, &cmd.cdb, &cmd.data_out);
    match prepared {
        Prepared::Done(o) => {
            after_command(&cx.shared, &lu, &cmd.cdb, &o.effects);
            Some(Done {
                itt,
                completion: timer.finish(completion_of(o)),
            })
        }
        Prepared::Io(plan) => {
            if let Some(c) = run_inline(&lu, &plan, &cmd.data_out) {
                return Some(Done {
                    itt,
                    completion: timer.finish(c),
                });
            }
            let reply = cx.reply_later(itt);
            tokio::spawn(async move {
                reply(timer.finish(run_medium(lu, plan, cmd.data_out).await));
            });
            None
        }
    }
}

/// Whether `plan` is a read or write of at most [`INLINE_MAX_BYTES`] on a store that never
/// waits for a device: cheaper to run on the calling task than to hand to another thread.
pub fn never_waits(lu: &Lu, plan: &IoPlan) -> bool {
    lu.store.never_blocks()
        && match plan.op {
            IoOp::Read { len, .. } | IoOp::Write { len, .. } => len <= INLINE_MAX_BYTES,
            _ => false,
        }
}

/// The largest medium phase that [`run_inline`] runs in place.
const INLINE_MAX_BYTES: u64 = 1 << 20;

/// Runs a read or write of at most [`INLINE_MAX_BYTES`] on the calling task when the store never
/// waits for a device (tmpfs), the I/O lock is free to share and the fencing gate is open: a
/// copy to or from memory costs less than handing the work to another thread and back. Returns
/// `None` (the caller takes the blocking pool) otherwise.
pub fn run_inline(lu: &Lu, plan: &IoPlan, data_out: &Bytes) -> Option<Completion> {
    // (Reads and writes never need the I/O lock exclusively.)
    if !never_waits(lu, plan) {
        return None;
    }
    let _shared = lu.io_lock.try_read().ok()?;
    let _pass = lu.gate.enter()?;
    Some(run_plan_now(lu, plan, data_out))
}

/// How the statistics count an opcode.
fn op_kind(op: u8) -> OpKind {
    match op {
        0x08 | 0x28 | 0xA8 | 0x88 => OpKind::Read,
        0x0A | 0x2A | 0xAA | 0x8A | 0x2E | 0xAE | 0x8E | 0x89 => OpKind::Write,
        _ => OpKind::Other,
    }
}

/// Phase 1 of a command on this controller's copy of the LU, for `nexus`.
pub fn prepare_local(
    target: &Target,
    lu: &Lu,
    nexus: &Nexus,
    cdb: &[u8],
    data_out: &[u8],
) -> Prepared {
    let pic = lu.alua();
    let ctx = CommandContext {
        nexus,
        alua: &pic,
        target_name: &target.name,
        tpgt: target.tpgt,
        luns: &target.lun_list,
    };
    lu.lock().prepare(&ctx, cdb, data_out)
}

/// The I/O lock held for one medium phase.
pub enum IoGuard {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// Takes the LU's I/O lock for `plan`: exclusive for COMPARE AND WRITE and friends.
pub async fn io_guard(lu: &Lu, plan: &IoPlan) -> IoGuard {
    if plan.needs_exclusive() {
        IoGuard::Exclusive(lu.io_lock.clone().write_owned().await)
    } else {
        IoGuard::Shared(lu.io_lock.clone().read_owned().await)
    }
}

/// [`io_guard`] if the lock is free now.
pub fn try_io_guard(lu: &Lu, plan: &IoPlan) -> Option<IoGuard> {
    if plan.needs_exclusive() {
        lu.io_lock
            .clone()
            .try_write_owned()
            .ok()
            .map(IoGuard::Exclusive)
    } else {
        lu.io_lock
            .clone()
            .try_read_owned()
            .ok()
            .map(IoGuard::Shared)
    }
}

/// The medium phase of a command on this controller's backend, through the fencing gate.
pub async fn run_medium(lu: Arc<Lu>, plan: IoPlan, data_out: Bytes) -> Completion {
    let guard = io_guard(&lu, &plan).await;
    run_medium_locked(lu, plan, data_out, guard).await
}

/// [`run_medium`] with the I/O lock already held (by this controller or, in mode 1, by the
/// primary on this controller's behalf).
pub async fn run_medium_locked(
    lu: Arc<Lu>,
    plan: IoPlan,
    data_out: Bytes,
    guard: impl Send + 'static,
) -> Completion {
    let Some(pass) = lu.gate.enter() else {
        // Fenced: this controller may not touch the disk now; the initiator retries (on the
        // other path once the ALUA states say so).
        return check(SenseCode::ALUA_TRANSITIONING);
    };
    run_plan(lu, plan, data_out, (guard, pass)).await
}

/// Runs `plan` on the calling thread; for plans that [never wait](never_waits), with whatever
/// locks and gate pass they need already held.
pub fn run_plan_now(lu: &Lu, plan: &IoPlan, data_out: &[u8]) -> Completion {
    let o = run_io(plan, &*lu.store, data_out);
    apply_effects(lu, &o.effects);
    completion_of(o)
}

/// Runs `plan` on the blocking pool (in place when it [never waits](never_waits)), keeping
/// `hold` (locks, gate pass) until it returns.
pub async fn run_plan(
    lu: Arc<Lu>,
    plan: IoPlan,
    data_out: Bytes,
    hold: impl Send + 'static,
) -> Completion {
    if never_waits(&lu, &plan) {
        let c = run_plan_now(&lu, &plan, &data_out);
        drop(hold);
        return c;
    }
    let lu2 = lu.clone();
    let r = tokio::task::spawn_blocking(move || {
        let _hold = hold;
        // (WCE=0 is honoured by the plan itself: the LU sets FUA on every write.)
        run_io(&plan, &*lu2.store, &data_out)
    })
    .await;
    match r {
        Ok(o) => {
            apply_effects(&lu, &o.effects);
            completion_of(o)
        }
        Err(e) => {
            tracing::error!(lun = lu.number, "I/O task failed: {e}");
            check(SenseCode::INTERNAL_TARGET_FAILURE)
        }
    }
}

/// Bookkeeping after a command finished on this controller's LU: persisted reservations, and
/// in an HA pair the replication of reservations and mode pages to the peer.
pub fn after_command(shared: &Shared, lu: &Lu, cdb: &[u8], effects: &[Effect]) {
    apply_effects(lu, effects);
    if let Some(ha) = shared.ha.get() {
        if changes_shared_state(cdb.first().copied().unwrap_or(0)) {
            ha.sync_lu(lu);
        }
    }
}

/// Commands that may change what both controllers keep identical (reservations, mode pages).
pub fn changes_shared_state(op: u8) -> bool {
    matches!(op, 0x5F | 0x15 | 0x55 | 0x16 | 0x56 | 0x17 | 0x57)
}

/// Carries out what a command asked of the runtime.
pub fn apply_effects(lu: &Lu, effects: &[Effect]) {
    for e in effects {
        match e {
            Effect::PrChanged { aptpl } => lu.persist_pr(*aptpl),
            Effect::SetTargetPortGroups(changes) => {
                let desc: Vec<String> = changes
                    .iter()
                    .map(|(g, s): &(u16, AluaState)| format!("group {g} -> {}", s.name()))
                    .collect();
                tracing::info!(
                    lun = lu.number,
                    "SET TARGET PORT GROUPS requested: {}",
                    desc.join(", ")
                );
            }
        }
    }
}

/// Carries out a task management function at the LU / target level.
fn task_management(cx: &mut ConnCtx, req: &TmfRequest) -> TmfResponse {
    let Some(target) = cx.target.clone() else {
        return TmfResponse::Rejected;
    };
    let lun = req.lun.number();
    let lu = lun.and_then(|n| target.luns.get(&n)).cloned();
    match req.function {
        TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
            if lu.is_none() {
                return TmfResponse::LunNotFound;
            }
            if req.function == TmfFunction::ClearTaskSet {
                cx.shared
                    .broadcast(cx.id, &target.name, ConnMsg::AbortTasks(lun));
            }
            TmfResponse::Complete
        }
        TmfFunction::LunReset => {
            let Some(lu) = lu else {
                return TmfResponse::LunNotFound;
            };
            tracing::info!(target = %target.name, lun = lu.number, "LUN reset");
            cx.shared
                .broadcast(cx.id, &target.name, ConnMsg::AbortTasks(lun));
            lu.lock().reset(ResetKind::LunReset);
            if let Some(ha) = cx.shared.ha.get() {
                cx.peer_reset = Some((ha.resets_to_forward(&[u32::from(lu.number)]), false));
            }
            TmfResponse::Complete
        }
        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
            let cold = req.function == TmfFunction::TargetColdReset;
            tracing::info!(target = %target.name, cold, "target reset");
            cx.shared.broadcast(
                cx.id,
                &target.name,
                if cold {
                    ConnMsg::Close
                } else {
                    ConnMsg::AbortTasks(None)
                },
            );
            for lu in target.luns.values() {
                lu.lock().reset(if cold {
                    ResetKind::TargetCold
                } else {
                    ResetKind::TargetWarm
                });
            }
            if let Some(ha) = cx.shared.ha.get() {
                let luns: Vec<u32> = target.luns.keys().map(|&n| u32::from(n)).collect();
                cx.peer_reset = Some((ha.resets_to_forward(&luns), cold));
            }
            TmfResponse::Complete
        }
        TmfFunction::ClearAca => TmfResponse::NotSupported,
        TmfFunction::TaskReassign => TmfResponse::NotSupported,
        TmfFunction::AbortTask => TmfResponse::Complete,
        TmfFunction::Unknown(_) => TmfResponse::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("duet-server-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config_in(dir: &std::path::Path) -> Config {
        let text = format!(
            "[portal_group.p]\nlisten = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\n[[target.lun]]\nnumber = 3\npath = \"{}\"\nsize = \"1MiB\"\ncreate = true\n",
            dir.join("lun3.img").display()
        );
        Config::parse("test.toml", &text).unwrap()
    }

    /// PERSISTENT RESERVE OUT, REGISTER (service action 0) of `key`, with APTPL as given.
    fn register(shared: &Shared, key: u64, aptpl: bool) -> Outcome {
        let t = shared
            .target_by_name("iqn.2026-11.dev.duet:t")
            .unwrap()
            .clone();
        let lu = t.luns.get(&3).unwrap().clone();
        let nexus = Nexus::new("iqn.2026-11.test:init1", [0x80, 0, 0, 0, 0, 1], t.rtpi);
        let pic = t.alua();
        let ctx = CommandContext {
            nexus: &nexus,
            alua: &pic,
            target_name: &t.name,
            tpgt: t.tpgt,
            luns: &t.lun_list,
        };
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5F;
        cdb[8] = 24;
        let mut params = [0u8; 24];
        params[8..16].copy_from_slice(&key.to_be_bytes());
        if aptpl {
            params[20] = 0x01;
        }
        // The first command of a new nexus reports the power-on unit attention; repeat then.
        let mut o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        if o.status == status::CHECK_CONDITION {
            o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        }
        apply_effects(&lu, &o.effects);
        o
    }

    #[test]
    fn aptpl_registrations_survive_a_restart_and_vanish_without_aptpl() {
        let d = tmpdir("aptpl");
        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let o = register(&shared, 0xABCD, true);
        assert_eq!(o.status, status::GOOD, "{o:?}");
        let pr_file = pr_state_path(&d.join("lun3.img"));
        assert!(pr_file.exists(), "no reservation file written");
        drop(shared);

        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let t = shared.target_by_name("iqn.2026-11.dev.duet:t").unwrap();
        let st = t.luns.get(&3).unwrap().lock().pr_state().clone();
        assert_eq!(st.registrations.len(), 1);
        assert_eq!(st.registrations[0].key, 0xABCD);
        assert!(st.aptpl);

        // Unregister (new key 0) without APTPL: the file goes away.
        let t2 = t.clone();
        let lu = t2.luns.get(&3).unwrap().clone();
        let nexus = Nexus::new("iqn.2026-11.test:init1", [0x80, 0, 0, 0, 0, 1], t2.rtpi);
        let pic = t2.alua();
        let ctx = CommandContext {
            nexus: &nexus,
            alua: &pic,
            target_name: &t2.name,
            tpgt: t2.tpgt,
            luns: &t2.lun_list,
        };
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5F;
        cdb[8] = 24;
        let mut params = [0u8; 24];
        params[0..8].copy_from_slice(&0xABCDu64.to_be_bytes());
        let mut o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        if o.status == status::CHECK_CONDITION {
            o = lu.lock().execute(&ctx, &cdb, &params, &*lu.store);
        }
        assert_eq!(o.status, status::GOOD, "{o:?}");
        apply_effects(&lu, &o.effects);
        assert!(!pr_file.exists(), "reservation file kept without APTPL");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_reservation_file_stops_start_up_with_its_name() {
        let d = tmpdir("corrupt");
        std::fs::write(pr_state_path(&d.join("lun3.img")), b"not json").unwrap();
        let e = build(config_in(&d), TargetLimits::default())
            .err()
            .expect("start-up should fail");
        assert!(e.to_string().contains("lun3.img.pr"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lone_controller_reports_its_group_active_optimized() {
        let d = tmpdir("alua");
        let shared = build(config_in(&d), TargetLimits::default()).unwrap();
        let t = shared.target_by_name("iqn.2026-11.dev.duet:t").unwrap();
        let pic = t.alua();
        assert_eq!(pic.groups.len(), 1);
        assert_eq!(pic.groups[0].id, 1);
        assert_eq!(pic.groups[0].state, AluaState::ActiveOptimized);
        assert_eq!(pic.groups[0].ports, vec![alua::relative_port_id(1, 0)]);
        // The HA runtime changes only the inputs: a peer that is primary and reachable makes
        // this group Standby (mode 0) and reports the peer's group Active/Optimized.
        t.set_alua(
            LunView {
                mode: HaMode::ActiveStandby,
                primary: PrimaryView::Peer,
                peer: PeerReach::Up,
            },
            &[alua::relative_port_id(2, 0)],
        );
        let pic = t.alua();
        assert_eq!(pic.state_of(t.rtpi), AluaState::Standby);
        assert_eq!(
            pic.state_of(alua::relative_port_id(2, 0)),
            AluaState::ActiveOptimized
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn login_entropy_differs_between_logins() {
        let a = login_entropy(1);
        let b = login_entropy(2);
        assert_ne!(a.chap_challenge, b.chap_challenge);
        assert_eq!(b.tsih, 2);
    }

    #[test]
    fn ping_timeout_sets_the_nop_in_timers() {
        let d = tmpdir("ping");
        let mut c = config_in(&d);
        c.ping_timeout = 7;
        let l = limits_for(&c);
        assert_eq!((l.nop_in_interval_ms, l.nop_in_timeout_ms), (7000, 7000));
        c.ping_timeout = 0;
        let l = limits_for(&c);
        assert_eq!((l.nop_in_interval_ms, l.nop_in_timeout_ms), (0, 0));
        let _ = std::fs::remove_dir_all(&d);
    }
}

//! The driver of one controller's HA state machine.
//!
//! [`duet_core::ha::Node`] decides every role, epoch and ALUA state; this module only feeds it
//! its inputs (link events, peer messages, timer expiries, quorum I/O results, fencing results,
//! admin commands) and carries out its outputs (peer messages, quorum I/O, ALUA pictures, unit
//! attentions, fencing, the I/O gate, log lines). A backing device that refuses this
//! controller's I/O with a reservation conflict (the peer fenced it at the disk) becomes the
//! node's `Backend(Fenced)`; when the node has rejoined it asks for its access back
//! (`Output::RestoreDiskAccess`), which the fencing agent restores
//! ([`fence::restore_access`]) before the node hears `Backend(Ok)`. It also moves commands between the
//! controllers: a controller that does not serve a LUN forwards what it receives for it to the
//! primary ([`forward`], where the runtime plugs into command execution as its
//! [`Pair`](crate::exec::Pair)), the primary runs them and lends mode-1 grants ([`serve`]), and
//! the primary replicates reservations and mode pages to its peer.
//!
//! The link's control channel, the driver and the receipt of link events run on a thread of
//! their own ([`thread`]), so that no I/O load delays a heartbeat or the node's timers; the
//! driver records what the last takeover waited for and how long it took ([`takeover`]).
//!
//! It touches the LUs only through [`crate::lu`] and [`crate::exec`], never the daemon's
//! connections or listeners.

use duet_core::LunNumber;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use duet_core::alua::HaMode;
use duet_core::ha::grant::{Answer, Received};
use duet_core::ha::{
    self, AdminCmd, BackendHealth, Grantee, HaMsg, HaStatus, Input, Node, Output, QuorumOp,
    QuorumResult, Role,
};

use super::config::HaConfig;
use super::fence::{self, FenceAgent};
use super::gate::GatePass;
use super::link::{self, Channel, DownKind, LinkEvent, LinkHandle};
use super::proto::{self, LinkMsg, PeerReply};
use super::quorum::Arbiter;
use super::tables::{GrantTable, LunFacts, PendingTable, Published};
use crate::admin::TakeoverInfo;
use crate::exec::{IoGuard, Pair};
use crate::lu::{Lu, Target};
use crate::sync::{lock, Mutex};

mod forward;
mod serve;
mod stpg;
mod takeover;
mod thread;

/// How long closing the fencing gate waits for admitted I/O.
const GATE_DRAIN: Duration = Duration::from_secs(5);
/// Log events kept for `duetctl ha`.
const EVENTS_KEPT: usize = 32;

/// A grant held on behalf of the peer (mode 1): the I/O lock and a pass through the gate.
struct Grant {
    _guard: IoGuard,
    _pass: GatePass,
}

/// Where the answer to a request sent to the peer goes. The callback runs exactly once: with
/// the reply, or with `None` when the request is cancelled (link down, timeout, never sent),
/// which is what dropping an unanswered `ReplyTo` does.
struct ReplyTo {
    callback: Option<Box<dyn FnOnce(Option<PeerReply>) + Send>>,
    sent: Instant,
}

impl ReplyTo {
    fn new(callback: impl FnOnce(Option<PeerReply>) + Send + 'static) -> ReplyTo {
        ReplyTo {
            callback: Some(Box::new(callback)),
            sent: Instant::now(),
        }
    }

    fn answer(mut self, reply: PeerReply) {
        if let Some(f) = self.callback.take() {
            f(Some(reply));
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(f) = self.callback.take() {
            f(None);
        }
    }
}

/// What the driver task receives.
enum DriverIn {
    Node(Input),
}

/// One controller's HA runtime. Create it with [`HaRuntime::start`].
pub struct HaRuntime {
    cfg: HaConfig,
    peer_id: u8,
    mode: HaMode,
    luns: BTreeMap<LunNumber, (Arc<Target>, Arc<Lu>)>,
    link: LinkHandle,
    tx: mpsc::UnboundedSender<DriverIn>,
    /// The role facts every I/O path reads (loom-checked: never torn).
    published: Published,
    events: Mutex<VecDeque<String>>,
    /// The last takeover (kept by the driver).
    takeovers: Mutex<takeover::Takeovers>,
    /// Forwarded requests waiting for the primary's answer.
    pending: PendingTable<ReplyTo>,
    /// Mode 1, primary side: grants held for the peer, per link session, decided by core's
    /// grantor; requests queued for the lock wait here with what their answer needs.
    grants: GrantTable<Grant, serve::GrantWaiter>,
    /// Mode 1, secondary side: core's grantee (requests sent, grants held).
    grantee: Mutex<Grantee>,
    start: Instant,
    arbiter: Arc<dyn Arbiter>,
    agent: FenceAgent,
    /// A reservation conflict was reported to the node and its access is not restored yet
    /// (later conflicts are not reported again meanwhile).
    disk_fenced: AtomicBool,
    /// The node's clean stop is complete ([`Node::stopped`]).
    stopped: watch::Sender<bool>,
    /// During a clean stop, some LUN's I/O did not drain within the gate's bound: the peer must
    /// not be told that this controller left cleanly (it will fence it instead).
    stop_undrained: AtomicBool,
}

/// How [`HaRuntime::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Every LUN this controller served is served by the peer (or was released with the peer
    /// down), the quorum slot says so, and the peer was told: it will not fence this controller.
    Clean,
    /// The stop did not complete within the bound: the peer treats the exit as a crash.
    TimedOut,
}

/// Why the HA runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum HaStartError {
    #[error("HA: LUN {lun} appears in two targets; LUN numbers must be unique in an HA pair")]
    DuplicateLun { lun: LunNumber },
    #[error("HA: {0}")]
    Config(String),
    #[error("HA: cannot start the HA thread: {0}")]
    Thread(std::io::Error),
}

impl HaRuntime {
    /// Builds the runtime for the LUs of `targets` and starts the HA thread with the link and
    /// the driver task. The link's data channel runs on `data_thread` and polls for `poll_us`
    /// microseconds when idle (as the connections do). The caller makes the runtime the daemon's
    /// [`Pair`](crate::exec::Pair).
    pub fn start<'a>(
        targets: impl IntoIterator<Item = &'a Arc<Target>>,
        (data_thread, poll_us): (tokio::runtime::Handle, u64),
        cfg: HaConfig,
        arbiter: Arc<dyn Arbiter>,
        agent: FenceAgent,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<HaRuntime>, HaStartError> {
        let mut luns = BTreeMap::new();
        for t in targets {
            for lu in t.luns.values() {
                let key = lu.number;
                if luns.insert(key, (t.clone(), lu.clone())).is_some() {
                    return Err(HaStartError::DuplicateLun { lun: key });
                }
            }
        }
        let keys: Vec<LunNumber> = luns.keys().copied().collect();
        let core_cfg = cfg.core_config(&keys);
        core_cfg
            .validate()
            .map_err(|e| HaStartError::Config(e.to_string()))?;
        let mode = core_cfg.mode;
        // The link's control channel runs on the HA thread, with the driver and nothing else:
        // heartbeats and the node's timers never wait behind I/O. Its data channel (forwarded
        // commands, which have no heartbeats) runs on the first connection thread and polls like
        // the connections do: a command forwarded from a connection on that thread, and its
        // answer, cross no thread.
        let ha_thread = thread::start(shutdown.clone()).map_err(HaStartError::Thread)?;
        let _on_ha_thread = ha_thread.enter();
        let mut link_cfg = cfg.link_config();
        link_cfg.data_poll = Duration::from_micros(poll_us);
        let (link, link_rx) = link::spawn_on(link_cfg, shutdown.clone(), data_thread);
        let (tx, rx) = mpsc::unbounded_channel();
        let rt = Arc::new(HaRuntime {
            peer_id: ha::peer_of(cfg.id),
            mode,
            luns,
            link,
            tx,
            published: Published::new(ha::peer_of(cfg.id), mode),
            events: Mutex::new(VecDeque::new()),
            takeovers: Mutex::new(takeover::Takeovers::default()),
            pending: PendingTable::new(),
            grants: GrantTable::new(),
            grantee: Mutex::new(Grantee::new()),
            start: Instant::now(),
            arbiter,
            agent,
            disk_fenced: AtomicBool::new(false),
            stopped: watch::channel(false).0,
            stop_undrained: AtomicBool::new(false),
            cfg,
        });
        for (_, lu) in rt.luns.values() {
            let weak = Arc::downgrade(&rt);
            lu.on_backend_fenced(Box::new(move |lun| {
                if let Some(rt) = weak.upgrade() {
                    rt.backend_fenced(lun);
                }
            }));
        }
        let node = Node::new(core_cfg, rt.now());
        // The data channel (forwarded commands and their answers) is handled on the link's
        // reader task: no hand-off to the receive task.
        let weak = Arc::downgrade(&rt);
        rt.link.handle_data(Box::new(move |payload| {
            if let Some(rt) = weak.upgrade() {
                rt.on_payload(&payload);
            }
        }));
        tokio::spawn(rt.clone().drive(node, rx, shutdown.clone()));
        tokio::spawn(rt.clone().receive(link_rx));
        tokio::spawn(rt.clone().expire_requests(shutdown.clone()));
        Ok(rt)
    }

    /// The driver's clock: milliseconds since start (monotonic).
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// This controller's HA id.
    pub fn ha_id(&self) -> u8 {
        self.cfg.id
    }

    /// The HA mode (0, 1 or 2).
    pub fn mode(&self) -> HaMode {
        self.mode
    }

    /// The configuration.
    pub fn config(&self) -> &HaConfig {
        &self.cfg
    }

    /// The link's handle (state and counters).
    pub fn link(&self) -> &LinkHandle {
        &self.link
    }

    /// The node's last status, the time since the last successful quorum write and whether
    /// the peer is known fenced.
    pub fn status(&self) -> (Option<HaStatus>, Option<u64>, bool) {
        let h = self.published.health();
        let age = h.last_quorum_write.map(|t| self.now().saturating_sub(t));
        (h.status, age, h.peer_fenced)
    }

    /// The last log events of the node, oldest first.
    pub fn events(&self) -> Vec<String> {
        lock(&self.events).iter().cloned().collect()
    }

    /// The last takeover (primary by a claim, not a switchover), if there was one, and how many
    /// there were since start.
    pub fn last_takeover(&self) -> (Option<TakeoverInfo>, u64) {
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let t = lock(&self.takeovers);
        (t.last(self.now(), unix_ms), t.count())
    }

    /// Hands an admin command to the node.
    pub fn admin(&self, cmd: AdminCmd) {
        let _ = self.tx.send(DriverIn::Node(Input::Admin(cmd)));
    }

    /// Stops this controller cleanly (SIGTERM, `duetctl shutdown`): hands every LUN it serves
    /// to a live peer, drains, records the release in the quorum area and tells the peer, so
    /// that the peer takes over at once and fences nothing (see `duet_core::ha` `stop`). Waits
    /// at most `bound`; the daemon then exits either way.
    pub async fn stop(&self, bound: Duration) -> StopOutcome {
        let mut rx = self.stopped.subscribe();
        let _ = self.tx.send(DriverIn::Node(Input::Stop));
        let done = tokio::time::timeout(bound, async { rx.wait_for(|v| *v).await.is_ok() }).await;
        if done == Ok(true) {
            StopOutcome::Clean
        } else {
            StopOutcome::TimedOut
        }
    }

    /// The LUN numbers under HA.
    pub fn lun_numbers(&self) -> Vec<LunNumber> {
        self.luns.keys().copied().collect()
    }

    /// Whether this controller is the serving primary of `lun`.
    pub fn serving(&self, lun: LunNumber) -> bool {
        self.published.serving(lun)
    }

    // ---- the driver ------------------------------------------------------------------------

    async fn drive(
        self: Arc<Self>,
        mut node: Node,
        mut rx: mpsc::UnboundedReceiver<DriverIn>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            self.carry_out(&mut node).await;
            self.publish(&node);
            if self.mode == HaMode::ActiveActiveShared {
                // The step may have changed what the grantor may grant (role, epoch, link).
                for &lun in self.luns.keys() {
                    self.update_grants(lun);
                }
            }
            let now = self.now();
            let sleep = node
                .next_timeout()
                .map(|t| Duration::from_millis(t.saturating_sub(now)));
            tokio::select! {
                m = rx.recv() => match m {
                    Some(DriverIn::Node(input)) => {
                        let now = self.now();
                        match input {
                            Input::PeerLinkUp => lock(&self.takeovers).link_up(),
                            Input::PeerLinkClosed => lock(&self.takeovers).link_down(now, true),
                            Input::PeerLinkDown => lock(&self.takeovers).link_down(now, false),
                            _ => {}
                        }
                        node.handle(now, input)
                    }
                    None => break,
                },
                _ = async {
                    match sleep {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    let now = self.now();
                    let due: Vec<_> = node.due_timers(now).collect();
                    for k in due {
                        node.handle(now, Input::Timer(k));
                    }
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("HA driver stopped");
    }

    /// Performs every pending output of the node, in order. Only closing the fencing gate waits
    /// (for the I/O it admitted, off this thread); the outputs after it wait with it.
    async fn carry_out(self: &Arc<Self>, node: &mut Node) {
        while let Some(out) = node.poll_output() {
            match out {
                Output::SendPeer(HaMsg::Leaving) if self.stop_undrained.load(Ordering::Acquire) => {
                    tracing::warn!(
                        "stopping: I/O still in flight after the drain bound; the peer is not told \
                         that this controller left cleanly and will fence it"
                    );
                }
                Output::SendPeer(msg) => self.send(Channel::Control, LinkMsg::Ha(msg)),
                Output::Quorum(op) => self.quorum_io(op),
                Output::SetTimer { .. } => {}
                Output::AluaChanged { lun, .. } => {
                    if let Some((t, lu)) = self.luns.get(&lun) {
                        let pic = t.picture(node.lun_view(lun));
                        if lu.set_alua(pic) {
                            let g = node.alua(lun);
                            tracing::info!(
                                lun,
                                "ALUA: this controller {}, peer {}",
                                g.local.name(),
                                g.peer.name()
                            );
                        }
                    }
                }
                Output::RaiseUa { lun, sense } => {
                    if let Some((_, lu)) = self.luns.get(&lun) {
                        lu.lock().raise_ua_all(sense, None);
                    }
                }
                Output::FencePeer => self.fence_peer(),
                Output::RestoreDiskAccess => self.restore_disk_access(),
                Output::FenceIo { lun } => {
                    if let Some((_, lu)) = self.luns.get(&lun) {
                        let drained = close_gate(lu).await;
                        if !drained && node.stopping() {
                            self.stop_undrained.store(true, Ordering::Release);
                        }
                        tracing::info!(lun, drained, "I/O fenced on this controller");
                    }
                }
                Output::ResumeIo { lun } => {
                    if let Some((_, lu)) = self.luns.get(&lun) {
                        lu.gate.open();
                        tracing::info!(lun, "I/O resumed on this controller");
                    }
                }
                Output::Log(ev) => {
                    lock(&self.takeovers).event(self.now(), &ev);
                    let line = ev.to_string();
                    match &ev {
                        ha::Event::QuorumFailed { .. }
                        | ha::Event::FencedAtDisk
                        | ha::Event::FenceFailed
                        | ha::Event::LeaseExpired
                        | ha::Event::LinkRefused { .. } => tracing::warn!("{line}"),
                        // The link logs its own state changes (CTL's wording) once.
                        ha::Event::LinkChanged { .. } | ha::Event::StaleMessage { .. } => {
                            tracing::debug!("{line}")
                        }
                        _ => tracing::info!("{line}"),
                    }
                    let mut ev = lock(&self.events);
                    if ev.len() == EVENTS_KEPT {
                        ev.pop_front();
                    }
                    ev.push_back(line);
                }
            }
        }
    }

    fn publish(&self, node: &Node) {
        if node.stopped() {
            self.stopped
                .send_if_modified(|v| !std::mem::replace(v, true));
        }
        self.published.publish(
            self.luns.keys().map(|&lun| {
                (
                    lun,
                    LunFacts {
                        primary_here: node.is_primary(lun) && node.serving(lun),
                        may_io: node.serving(lun),
                        primary: node.primary_of(lun),
                        epoch: node.epoch(lun),
                    },
                )
            }),
            node.link_state() == 2 && self.link.is_up(),
            node.status(self.now()),
        );
    }

    fn quorum_io(self: &Arc<Self>, op: QuorumOp) {
        let me = self.clone();
        tokio::spawn(async move {
            let arb = me.arbiter.clone();
            let op2 = op.clone();
            let r = tokio::task::spawn_blocking(move || match op2 {
                QuorumOp::Read { slot } => match arb.read(slot) {
                    Ok(record) => QuorumResult::ReadOk { slot, record },
                    Err(e) => QuorumResult::Failed {
                        slot,
                        reason: e.to_string(),
                    },
                },
                QuorumOp::Write { slot, record } => match arb.write(slot, &record) {
                    Ok(()) => QuorumResult::WriteOk { slot },
                    Err(e) => QuorumResult::Failed {
                        slot,
                        reason: e.to_string(),
                    },
                },
            })
            .await;
            let result = match r {
                Ok(r) => r,
                Err(e) => QuorumResult::Failed {
                    slot: match op {
                        QuorumOp::Read { slot } | QuorumOp::Write { slot, .. } => slot,
                    },
                    reason: format!("quorum I/O task failed: {e}"),
                },
            };
            if matches!(result, QuorumResult::WriteOk { .. }) {
                me.published.quorum_written(me.now());
            }
            let _ = me.tx.send(DriverIn::Node(Input::Quorum(result)));
        });
    }

    fn fence_peer(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(me.cfg.fence_timeout_ms);
            let r = fence::fence(&me.agent, timeout).await;
            let ok = match r {
                Ok(()) => {
                    tracing::info!("fencing agent: peer controller {} stopped", me.peer_id);
                    true
                }
                Err(e) => {
                    tracing::error!("fencing agent failed: {e}");
                    false
                }
            };
            me.published.set_peer_fenced(ok);
            let _ = me.tx.send(DriverIn::Node(Input::FenceResult { ok }));
        });
    }

    /// The backing device of `lun` refused this controller's I/O with a reservation conflict.
    fn backend_fenced(&self, lun: LunNumber) {
        if !self.disk_fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                lun,
                "the backing device refused this controller's I/O (reservation conflict): the \
                 peer fenced it at the disk"
            );
            let _ = self
                .tx
                .send(DriverIn::Node(Input::Backend(BackendHealth::Fenced)));
        }
    }

    /// The node, fenced at the disk, has rejoined as secondary: once no I/O admitted before the
    /// fence is in flight any more, the agent restores this controller's access to the backing
    /// devices, and the node hears `Backend(Ok)`. Not sooner than a renew interval after the
    /// request, so that a device that keeps refusing costs one rejoin per interval at most.
    fn restore_disk_access(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let pause = Duration::from_millis(me.cfg.timing.renew_ms);
            let timeout = Duration::from_millis(me.cfg.fence_timeout_ms);
            let gates: Vec<_> = me.luns.values().map(|(_, lu)| lu.gate.clone()).collect();
            loop {
                tokio::time::sleep(pause).await;
                let gates = gates.clone();
                let drained = tokio::task::spawn_blocking(move || {
                    gates.iter().all(|g| g.wait_drained(GATE_DRAIN))
                })
                .await
                .unwrap_or(false);
                if !drained {
                    tracing::warn!(
                        "I/O from before the fence at the disk is still in flight; not restoring \
                         access yet"
                    );
                    continue;
                }
                match fence::restore_access(&me.agent, timeout).await {
                    Ok(()) => break,
                    Err(e) => tracing::error!(
                        "cannot restore this controller's access to the backing devices: {e}"
                    ),
                }
            }
            tracing::info!("access to the backing devices restored after the fence at the disk");
            me.disk_fenced.store(false, Ordering::Release);
            let _ = me
                .tx
                .send(DriverIn::Node(Input::Backend(BackendHealth::Ok)));
        });
    }

    // ---- the link ---------------------------------------------------------------------------

    fn send(&self, channel: Channel, msg: LinkMsg) {
        match proto::encode(msg) {
            Ok(e) => {
                let _ = self.link.send_parts(channel, e.head, e.bulk);
            }
            Err(e) => tracing::error!("HA link: cannot encode a message: {e}"),
        }
    }

    async fn receive(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<LinkEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                LinkEvent::Up { peer_id } => {
                    tracing::debug!(peer_id, "HA link up");
                    self.published.set_peer_fenced(false);
                    self.pending.open();
                    let _ = self.tx.send(DriverIn::Node(Input::PeerLinkUp));
                    // A primary brings a (re)joining peer's copy of the shared state up to date.
                    for (&lun, (_, lu)) in &self.luns {
                        if self.serving(lun) {
                            self.sync_lu(lu);
                        }
                    }
                }
                LinkEvent::Down { reason, kind } => {
                    tracing::debug!("HA link down ({kind}): {reason}");
                    // Only a link the peer closed (its process most likely exited) is
                    // `PeerLinkClosed`; silence, and a failure on this side, is `PeerLinkDown`.
                    let input = match kind {
                        DownKind::Closed => Input::PeerLinkClosed,
                        DownKind::Silent => Input::PeerLinkDown,
                    };
                    let _ = self.tx.send(DriverIn::Node(input));
                    // Forwarded commands in flight are answered "transitioning" and retried.
                    self.pending.close();
                    // The peer's grants end with the link; the node suspends I/O until the peer
                    // is fenced, so its writes in flight cannot race ours.
                    self.grants.clear();
                    // Our requests and unstarted grants end with it too. Their commands were
                    // failed (Transitioning) by `pending.close()` above, or are by `start` (a
                    // grant's answer and its start are one step of the grantee); started grants
                    // finish and are not released.
                    let _ = lock(&self.grantee).link_down();
                }
                LinkEvent::Message { payload, .. } => self.on_payload(&payload),
            }
        }
    }

    fn on_payload(self: &Arc<Self>, payload: &Bytes) {
        match proto::decode(payload) {
            Ok(msg) => self.on_message(msg),
            Err(e) => tracing::warn!("HA link: undecodable message dropped: {e}"),
        }
    }

    fn on_message(self: &Arc<Self>, msg: LinkMsg) {
        match msg {
            LinkMsg::Ha(m) => {
                let _ = self.tx.send(DriverIn::Node(Input::PeerMsg(m)));
            }
            LinkMsg::LuSync { lun, state } => {
                if let Some((_, lu)) = self.luns.get(&lun) {
                    if !self.serving(lun) {
                        lu.lock().restore_shared(state);
                    }
                }
            }
            LinkMsg::Request { id, req } => {
                let session = self.grants.session();
                // Answer at once what needs no waiting; only the rest leaves this task, and a
                // queued grant request is answered by the grantor later.
                match self.serve_now(id, req, session) {
                    Ok(reply) => self.send(Channel::Data, LinkMsg::Reply { id, reply }),
                    Err(serve::Unfinished::Queued) => {}
                    Err(rest) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            if let Some(reply) = me.serve_later(rest).await {
                                me.send(Channel::Data, LinkMsg::Reply { id, reply });
                            }
                        });
                    }
                }
            }
            LinkMsg::Reply { id, reply } => match self.pending.take(id) {
                Some(reply_to) => reply_to.answer(reply),
                // Its waiter gave up (expired): a grant nobody waits for is given back.
                None => {
                    if let PeerReply::Plan {
                        ask, grant, epoch, ..
                    } = reply
                    {
                        let got =
                            lock(&self.grantee).on_answer(ask, Answer::Granted { grant, epoch });
                        if let Received::Unwanted(grant) = got {
                            self.send(Channel::Control, LinkMsg::Release { grant });
                        }
                    }
                }
            },
            LinkMsg::Release { grant } => {
                if let Some(lun) = self.grants.release(grant) {
                    self.update_grants(lun);
                }
            }
        }
    }

    /// Role change at run time (CTL's ha_role): `lun` None = every LUN.
    pub fn set_role(&self, role: Role, lun: Option<LunNumber>) -> Result<String, String> {
        if let Some(l) = lun {
            if !self.luns.contains_key(&l) {
                return Err(format!("no LUN {l}"));
            }
        }
        if role == Role::Primary && self.cfg.failover_manual() {
            self.admin(AdminCmd::SetPrimary { lun });
        }
        self.admin(AdminCmd::SetRole { lun, role });
        Ok(format!(
            "role of {} set to {}",
            lun.map_or("every LUN".to_string(), |l| format!("LUN {l}")),
            match role {
                Role::Primary => "primary",
                Role::Secondary => "secondary",
            }
        ))
    }

    /// Planned switchover of `lun` (None: every LUN this controller serves) to the peer.
    pub fn switchover(&self, lun: Option<LunNumber>) -> Result<String, String> {
        let luns: Vec<LunNumber> = match lun {
            Some(l) if !self.luns.contains_key(&l) => return Err(format!("no LUN {l}")),
            Some(l) => vec![l],
            None => self
                .luns
                .keys()
                .copied()
                .filter(|&l| self.serving(l))
                .collect(),
        };
        if luns.is_empty() {
            return Err("this controller is primary for no LUN".into());
        }
        if !self.published.link_up() {
            return Err("the HA link is down: a switchover needs the peer".into());
        }
        for &l in &luns {
            if !self.serving(l) {
                return Err(format!("this controller is not primary for LUN {l}"));
            }
        }
        for &l in &luns {
            self.admin(AdminCmd::Switchover { lun: l });
        }
        Ok(format!(
            "switchover of LUN {luns:?} to controller {} started",
            self.peer_id
        ))
    }
}

/// Closes a LUN's fencing gate at once and waits for the I/O it admitted, at most
/// [`GATE_DRAIN`], on the blocking pool: the HA thread keeps sending and reading heartbeats
/// meanwhile. Returns whether the gate drained.
async fn close_gate(lu: &Lu) -> bool {
    let gate = lu.gate.clone();
    gate.close_begin();
    tokio::task::spawn_blocking(move || gate.wait_drained(GATE_DRAIN))
        .await
        .unwrap_or(false)
}

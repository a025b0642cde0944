//! Stateright models of a Duet controller pair.
//!
//! [`ClusterModel`] is a plain [`stateright::Model`] whose two controllers run
//! [`duet_core::ha::Node`] itself: every role, epoch, lease and ALUA decision in a trace is the
//! daemon's own code. Around the nodes the model keeps, explicitly:
//!
//! - **Time.** Each controller has its own clock (milliseconds, advanced in ticks of
//!   [`ModelOptions::tick_ms`]). A tick advances both clocks, or one of them alone, as long as the
//!   two stay within the drift bound of each other (controller 2's clock leads controller 1's by
//!   0 to `drift` ticks, so any interval measured by both differs by at most the bound). Time does
//!   not move while a controller has a timer due: timers fire on time.
//! - **The quorum area**: two slots; a node's quorum operation is pending until the checker
//!   completes it (any time later, possibly after ticks: slow I/O) or fails it.
//! - **The HA link**: a physical link that can be cut and healed; a connection exists while the
//!   link is up and both controllers run. In-flight messages form a bounded multiset (reordering);
//!   the checker may deliver, lose or duplicate any of them.
//! - **The backend**: one register (the LUN's one block). Each controller has a FIFO of pending
//!   backend writes that land whenever the checker says (a paused controller's writes land late),
//!   unless the controller is killed first.
//! - **Clients**: each writes and reads the register through either controller, like a multipath
//!   host: on 04/0A, 04/0B, 04/0C or a dropped connection it retries on the other path, inside one
//!   operation (the linearizability tester allows one operation in flight per client). A client
//!   may also time out while its write is pending and retry on the other path; the pending write
//!   stays where it is.
//! - **Faults** (bounded by [`ModelOptions`]): crash and restart of a controller (a restart is a
//!   fresh `Node::new`), link cut and heal, message loss and duplication, quorum I/O failures,
//!   fence failures, client time-outs. Faults happen only before `fault_ticks`; after that,
//!   pending quorum I/O, fences and messages complete before time moves on (so liveness can be
//!   judged at `max_ticks`).
//!
//! Properties (always, unless marked):
//! - `single-primary`: at no time do two controllers serve the LUN as primary (`is_primary` and
//!   `serving`).
//! - `linearizable`: the clients' history of writes and reads is linearizable
//!   ([`LinearizabilityTester`] over a [`Register`]).
//! - `acked-writes-durable`: while no client has a write in flight, the backend holds the value of
//!   the last acknowledged write: no failover loses or overwrites an acknowledged write.
//! - `alua-truthful`: a controller that reports its own port group Active/Optimized or
//!   Active/Non-optimized would serve a data command sent there now, correctly: as the only
//!   serving primary, or (modes 1 and 2) as a secondary whose primary serves at the same epoch over
//!   a live connection. (What a node reports about the *peer's* group is advisory and not judged:
//!   after a crash it is stale until the node notices.)
//! - `primary-eventually` (eventually): at the horizon, if a primary was lost (crash or fence)
//!   and some controller is up, a controller serves as primary. Faults stop at `fault_ticks`,
//!   pending quorum I/O, fences and messages complete before time moves on after that, and every
//!   loop is bounded (ticks, budgets), so paths are finite.
//!
//! Not covered: planned switchover and other admin commands; several LUNs (the model has one);
//! messages delayed across a tick (messages are delivered, lost or duplicated before time moves
//! on); a dead controller's quorum write landing after its death (it is discarded); backend
//! failures; the mode 1 grant exchange itself (a grant is the primary's state at the moment of
//! the request, and the block lock is held until the granted write lands).
//!
//! A controller serves a client command only if the ALUA gate for its own port group allows it
//! and it can execute it: as primary when `serving`, in mode 1 as a secondary with the primary's
//! grant (the primary serves at the same epoch over a live connection, and neither holds the
//! other's pending writes: the block lock), in mode 2 by forwarding to such a primary. Fencing
//! (the agent) kills the fenced controller: its pending writes are discarded.

use duet_core::alua::{self, AluaState, HaMode};
use duet_core::ha::{
    Config, Input, LunConfig, Node, Output, QuorumOp, QuorumResult, Role, TimerKind, Timing,
};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use stateright::{Model, Property};
use std::fmt::Write as _;

pub use duet_core::ha::{Fencing, HaMsg, Policy};

/// The properties the model checks, by name.
pub const PROPERTY_NAMES: [&str; 5] = [
    "single-primary",
    "linearizable",
    "acked-writes-durable",
    "alua-truthful",
    "primary-eventually",
];

/// The LUN the model's clients use.
pub const LUN: u32 = 0;

const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// What to check, and how far.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelOptions {
    pub policy: Policy,
    pub mode: HaMode,
    pub fencing: Fencing,
    /// Mutation: the safety margin is set below the clock-drift bound.
    pub margin_below_drift: bool,
    /// Number of clients (1 or 2).
    pub clients: usize,
    /// Operations per client: all writes (of distinct values) but the last, which is a read.
    pub ops_per_client: u8,
    /// States with a larger epoch are outside the model.
    pub max_epoch: u64,
    /// Restarts per controller.
    pub restarts: u8,
    /// Crashes in all.
    pub crashes: u8,
    /// Link cuts in all.
    pub link_cuts: u8,
    /// Messages in flight at once; a message sent beyond this is lost.
    pub max_in_flight: usize,
    pub msg_losses: u8,
    pub msg_dups: u8,
    pub quorum_failures: u8,
    /// Quorum stalls in all: a stalled controller's quorum operation stays pending while time
    /// passes (slow I/O), until the checker completes or fails it.
    pub quorum_stalls: u8,
    /// Pauses in all: a paused controller's queued backend writes stay pending while time passes
    /// and land whenever the checker says.
    pub pauses: u8,
    /// Clock-rate changes in all (each moves the offset between the clocks by one tick).
    pub drift_steps: u8,
    pub fence_failures: u8,
    pub client_timeouts: u8,
    /// The horizon: time (in ticks of controller 1's clock) stops here.
    pub max_ticks: u64,
    /// Faults happen only before this tick.
    pub fault_ticks: u64,
    /// Length of a tick in milliseconds.
    pub tick_ms: u64,
    /// Lease timing in ticks.
    pub lease_ticks: u64,
    pub renew_ticks: u64,
    pub drift_ticks: u64,
    pub margin_ticks: u64,
}

impl Default for ModelOptions {
    /// CI-sized bounds: automatic failover, mode 1, agent fencing, one client doing two writes
    /// and a read; one crash, one link cut, one quorum stall, one controller pause and one client
    /// time-out, all within the first 3 ticks; a 10-tick horizon (lease 3 ticks, renew 1, drift
    /// bound 1, margin 2: a claim waits 5 ticks). Restarts, message loss and duplication, quorum
    /// failures, fence failures and clock drift are off here and switched on by the knobs.
    fn default() -> Self {
        ModelOptions {
            policy: Policy::Automatic,
            mode: HaMode::ActiveActiveShared,
            fencing: Fencing::Agent,
            margin_below_drift: false,
            clients: 1,
            ops_per_client: 3,
            max_epoch: 4,
            restarts: 0,
            crashes: 1,
            link_cuts: 1,
            max_in_flight: 3,
            msg_losses: 0,
            msg_dups: 0,
            quorum_failures: 0,
            quorum_stalls: 1,
            pauses: 1,
            drift_steps: 0,
            fence_failures: 0,
            client_timeouts: 1,
            max_ticks: 10,
            fault_ticks: 3,
            tick_ms: 100,
            lease_ticks: 3,
            renew_ticks: 1,
            drift_ticks: 1,
            margin_ticks: 2,
        }
    }
}

impl ModelOptions {
    /// The lease timing the nodes run with (the mutation applied).
    pub fn timing(&self) -> Timing {
        let margin = if self.margin_below_drift {
            self.drift_ticks.saturating_sub(1)
        } else {
            self.margin_ticks
        };
        Timing {
            lease_ms: self.lease_ticks * self.tick_ms,
            renew_ms: self.renew_ticks * self.tick_ms,
            drift_ms: self.drift_ticks * self.tick_ms,
            margin_ms: margin * self.tick_ms,
        }
    }

    /// The configuration of controller `ha_id` (1 or 2).
    pub fn node_config(&self, ha_id: u8) -> Config {
        Config {
            ha_id,
            mode: self.mode,
            policy: self.policy,
            fencing: self.fencing,
            role: if ha_id == 1 {
                Role::Primary
            } else {
                Role::Secondary
            },
            luns: vec![LunConfig {
                lun: LUN,
                role: None,
            }],
            timing: self.timing(),
            failback: false,
        }
    }
}

/// One pending backend write: `value` for client `client`'s operation `op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingWrite {
    pub client: u8,
    pub op: u8,
    /// The client's attempt (it starts a new one after each time-out): only the attempt the
    /// client still waits for is acknowledged when it lands.
    pub attempt: u8,
    pub value: u8,
    /// Mode 1: issued by a secondary under the grant of controller `.0` at epoch `.1`.
    pub grant: Option<(u8, u64)>,
}

/// A controller as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Controller {
    /// `None` while crashed or fenced.
    pub node: Option<Node>,
    pub boots: u8,
    pub quorum: Option<QuorumOp>,
    /// The pending quorum operation is stalled (may stay pending while time passes).
    pub stalled: bool,
    pub fence: bool,
    pub writes: Vec<PendingWrite>,
    /// The controller is paused: its queued writes may stay pending while time passes.
    pub paused: bool,
}

/// A client and its current operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The controller (0 or 1) the next attempt goes to.
    pub path: u8,
    /// Index of the current operation.
    pub op: u8,
    /// The current operation has been invoked.
    pub invoked: bool,
    /// A write of the current operation is pending somewhere and the client waits for it.
    pub waiting: bool,
    /// Attempts abandoned so far (time-outs).
    pub attempt: u8,
}

/// Fault budgets left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub crashes: u8,
    pub link_cuts: u8,
    pub losses: u8,
    pub dups: u8,
    pub quorum_failures: u8,
    pub stalls: u8,
    pub pauses: u8,
    pub drift: u8,
    pub fence_failures: u8,
    pub timeouts: u8,
}

/// The state of the cluster.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct ClusterState {
    /// Each controller's clock, in milliseconds.
    pub clock: [u64; 2],
    pub ctl: [Controller; 2],
    pub slots: [Option<duet_core::ha::QuorumRecord>; 2],
    pub link_up: bool,
    /// Messages in flight: (receiver index, message), sorted.
    pub net: Vec<(u8, HaMsg)>,
    pub backend: u8,
    /// The value of the last acknowledged write (0: none yet).
    pub acked: u8,
    pub clients: Vec<Client>,
    pub history: LinearizabilityTester<u8, Register<u8>>,
    pub budget: Budget,
    /// A controller was lost (crash or fence) while it was primary.
    pub primary_lost: bool,
}

// Every field compares by plain equality (the register holds a `u8`), so equality is total.
impl Eq for ClusterState {}

/// How a tick moves the clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drift {
    /// Both clocks advance one tick.
    Both,
    /// Only controller 1's clock advances (controller 2's runs slow).
    Only1,
    /// Only controller 2's clock advances (controller 2's runs fast).
    Only2,
}

/// A step of the model. Controllers are numbered 0 and 1 (ha_id 1 and 2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Tick(Drift),
    Timer(u8, TimerKind),
    StallQuorum(u8),
    Pause(u8),
    QuorumOk(u8),
    QuorumFail(u8),
    /// A quorum write that lands on the disk but is reported failed (e.g. a timeout).
    QuorumFailApplied(u8),
    Deliver(u8, HaMsg),
    Lose(u8, HaMsg),
    Duplicate(u8, HaMsg),
    FenceOk(u8),
    FenceFail(u8),
    Crash(u8),
    Restart(u8),
    CutLink,
    HealLink,
    ClientSend(u8),
    ClientTimeout(u8),
    Land(u8),
}

/// The cluster model. See the crate documentation.
#[derive(Clone, Debug)]
pub struct ClusterModel {
    pub opts: ModelOptions,
    configs: [Config; 2],
}

/// What happens to a client command sent to a controller.
enum Served {
    /// Executed by controller `exec` (for a write: queued there, under a grant if any).
    By(usize, Option<(u8, u64)>),
    /// Refused or connection dropped: try the other path.
    Refused,
    /// Waits for the block lock (another controller's grant is in use).
    Blocked,
}

impl ClusterModel {
    pub fn new(opts: ModelOptions) -> Self {
        let configs = [opts.node_config(1), opts.node_config(2)];
        ClusterModel { opts, configs }
    }

    fn tick(&self) -> u64 {
        self.opts.tick_ms.max(1)
    }

    fn now_tick(&self, s: &ClusterState) -> u64 {
        s.clock[0] / self.tick()
    }

    fn faults_allowed(&self, s: &ClusterState) -> bool {
        self.now_tick(s) < self.opts.fault_ticks
    }

    fn op_of(&self, client: usize, op: u8) -> RegisterOp<u8> {
        if op + 1 >= self.opts.ops_per_client {
            RegisterOp::Read
        } else {
            RegisterOp::Write(1 + client as u8 * 10 + op)
        }
    }

    fn connected(s: &ClusterState) -> bool {
        s.link_up && s.ctl[0].node.is_some() && s.ctl[1].node.is_some()
    }

    /// Feeds `input` to controller `n` and routes its outputs.
    fn feed(&self, s: &mut ClusterState, n: usize, input: Input) {
        let now = s.clock[n];
        let Some(node) = s.ctl[n].node.as_mut() else {
            return;
        };
        node.handle(now, input);
        self.route(s, n);
    }

    fn route(&self, s: &mut ClusterState, n: usize) {
        let connected = Self::connected(s);
        loop {
            let Some(node) = s.ctl[n].node.as_mut() else {
                return;
            };
            let Some(out) = node.poll_output() else {
                return;
            };
            match out {
                Output::SendPeer(m) if connected && s.net.len() < self.opts.max_in_flight => {
                    s.net.push((1 - n as u8, m));
                    s.net.sort();
                }
                Output::Quorum(op) => s.ctl[n].quorum = Some(op),
                Output::FencePeer => s.ctl[n].fence = true,
                _ => {}
            }
        }
    }

    /// Controller `n` dies (crash or fence): its volatile state and pending I/O are gone.
    fn kill(&self, s: &mut ClusterState, n: usize) {
        if let Some(node) = &s.ctl[n].node {
            if node.is_primary(LUN) {
                s.primary_lost = true;
            }
        }
        let was_connected = Self::connected(s);
        let c = &mut s.ctl[n];
        c.node = None;
        c.quorum = None;
        c.stalled = false;
        c.fence = false;
        c.writes.clear();
        c.paused = false;
        if was_connected {
            s.net.clear();
            self.feed(s, 1 - n, Input::PeerLinkDown);
        }
    }

    fn link_up_both(&self, s: &mut ClusterState) {
        if Self::connected(s) {
            self.feed(s, 0, Input::PeerLinkUp);
            self.feed(s, 1, Input::PeerLinkUp);
        }
    }

    fn serving_primary(s: &ClusterState, n: usize) -> bool {
        s.ctl[n]
            .node
            .as_ref()
            .is_some_and(|x| x.is_primary(LUN) && x.serving(LUN))
    }

    /// Whether a secondary `n` can get its command executed by the primary (grant or forward).
    fn primary_reachable(s: &ClusterState, n: usize) -> bool {
        let p = 1 - n;
        let (Some(me), Some(peer)) = (&s.ctl[n].node, &s.ctl[p].node) else {
            return false;
        };
        Self::connected(s) && Self::serving_primary(s, p) && peer.epoch(LUN) == me.epoch(LUN)
    }

    fn local_state(s: &ClusterState, n: usize) -> Option<AluaState> {
        s.ctl[n].node.as_ref().map(|x| x.alua(LUN).local)
    }

    /// What controller `n` does with a data command (`write` or read).
    fn serve(&self, s: &ClusterState, n: usize, write: bool) -> Served {
        let Some(node) = &s.ctl[n].node else {
            return Served::Refused;
        };
        let cdb: &[u8] = if write { &WRITE10 } else { &READ10 };
        let local = node.alua(LUN).local;
        if alua::gate(local, cdb) != alua::Gate::Allow {
            return Served::Refused;
        }
        let peer = 1 - n;
        if node.is_primary(LUN) {
            if !node.serving(LUN) {
                return Served::Refused;
            }
            // The block lock: a grant this primary gave the secondary is still in use.
            let mine = Some((n as u8, node.epoch(LUN)));
            if write && s.ctl[peer].writes.iter().any(|w| w.grant == mine) {
                return Served::Blocked;
            }
            return Served::By(n, None);
        }
        match self.opts.mode {
            HaMode::ActiveStandby => Served::Refused,
            HaMode::ActiveActiveShared => {
                if !node.serving(LUN) || !Self::primary_reachable(s, n) {
                    Served::Refused
                } else if write && !s.ctl[peer].writes.is_empty() {
                    // The primary holds the block lock for its own write: the grant waits.
                    Served::Blocked
                } else {
                    Served::By(n, Some((peer as u8, node.epoch(LUN))))
                }
            }
            HaMode::ActiveActiveForward => {
                if Self::primary_reachable(s, n) {
                    Served::By(peer, None)
                } else {
                    Served::Refused
                }
            }
        }
    }

    fn client_done(&self, c: &Client) -> bool {
        c.op >= self.opts.ops_per_client
    }

    fn next_op(c: &mut Client) {
        c.op += 1;
        c.invoked = false;
        c.waiting = false;
        c.attempt = 0;
    }

    /// Time may advance: no timer due, and after the fault window nothing pending.
    fn may_tick(&self, s: &ClusterState) -> bool {
        for n in 0..2 {
            if let Some(node) = &s.ctl[n].node {
                if node.due_timers(s.clock[n]).next().is_some() {
                    return false;
                }
            }
        }
        // Messages are delivered, lost or duplicated within a tick (a late copy of an old
        // message can still be delivered through a duplicate).
        if !s.net.is_empty() {
            return false;
        }
        // Quorum I/O completes within a tick unless stalled; queued writes land within a tick
        // unless the controller is paused.
        if s.ctl
            .iter()
            .any(|c| (c.quorum.is_some() && !c.stalled) || (!c.writes.is_empty() && !c.paused))
        {
            return false;
        }
        if !self.faults_allowed(s) && s.ctl.iter().any(|c| c.quorum.is_some() || c.fence) {
            return false;
        }
        true
    }

    fn name(n: u8) -> String {
        format!("node {}", n + 1)
    }

    /// One line per step of a trace, for people: who did what, which message.
    pub fn describe_action(&self, action: &Action) -> String {
        match action {
            Action::Tick(Drift::Both) => "time passes one tick on both clocks".into(),
            Action::Tick(Drift::Only1) => {
                "time passes one tick on node 1's clock only (node 2's clock runs slow)".into()
            }
            Action::Tick(Drift::Only2) => {
                "node 2's clock alone advances one tick (it runs fast)".into()
            }
            Action::Timer(n, k) => format!("{}: {} timer fires", Self::name(*n), k.name()),
            Action::StallQuorum(n) => format!(
                "{}'s quorum I/O stalls (stays pending while time passes)",
                Self::name(*n)
            ),
            Action::Pause(n) => format!(
                "{} pauses: its queued backend writes are held up",
                Self::name(*n)
            ),
            Action::QuorumOk(n) => format!("{}'s quorum I/O completes", Self::name(*n)),
            Action::QuorumFail(n) => format!("{}'s quorum I/O fails", Self::name(*n)),
            Action::QuorumFailApplied(n) => format!(
                "{}'s quorum write lands but is reported failed",
                Self::name(*n)
            ),
            Action::Deliver(to, m) => format!("{} receives {}", Self::name(*to), describe_msg(m)),
            Action::Lose(to, m) => {
                format!("the link loses {} to {}", describe_msg(m), Self::name(*to))
            }
            Action::Duplicate(to, m) => {
                format!(
                    "the link duplicates {} to {}",
                    describe_msg(m),
                    Self::name(*to)
                )
            }
            Action::FenceOk(n) => format!(
                "{} fences {} (killed; its pending writes are discarded)",
                Self::name(*n),
                Self::name(1 - *n)
            ),
            Action::FenceFail(n) => format!("{}'s fencing agent fails", Self::name(*n)),
            Action::Crash(n) => format!("{} crashes", Self::name(*n)),
            Action::Restart(n) => format!("{} restarts (fresh state)", Self::name(*n)),
            Action::CutLink => "the HA link is cut".into(),
            Action::HealLink => "the HA link is restored".into(),
            Action::ClientSend(c) => format!("client {} sends its command", c + 1),
            Action::ClientTimeout(c) => format!(
                "client {} times out waiting and will retry on the other path",
                c + 1
            ),
            Action::Land(n) => format!("a write queued by {} reaches the backend", Self::name(*n)),
        }
    }

    /// A fuller description of a step: the action, with what it did in `before`.
    pub fn describe_step(&self, before: &ClusterState, action: &Action) -> String {
        let mut s = self.describe_action(action);
        match action {
            Action::QuorumOk(n) | Action::QuorumFail(n) | Action::QuorumFailApplied(n) => {
                if let Some(op) = &before.ctl[*n as usize].quorum {
                    let _ = write!(s, " ({})", describe_quorum(op));
                }
            }
            Action::ClientSend(c) => {
                if let Some(cl) = before.clients.get(*c as usize) {
                    let _ = write!(
                        s,
                        " ({:?}) to {}",
                        self.op_of(*c as usize, cl.op),
                        Self::name(cl.path)
                    );
                }
            }
            Action::Land(n) => {
                if let Some(w) = before.ctl[*n as usize].writes.first() {
                    let _ = write!(s, " (value {})", w.value);
                }
            }
            _ => {}
        }
        s
    }

    /// The roles, epochs and ALUA states (per node) after a step, one short line.
    pub fn describe_state(&self, s: &ClusterState) -> String {
        let mut out = String::new();
        for n in 0..2 {
            let _ = write!(out, "n{}@{}ms: ", n + 1, s.clock[n]);
            match &s.ctl[n].node {
                None => out.push_str("down"),
                Some(x) => {
                    let role = if x.is_primary(LUN) {
                        if x.serving(LUN) {
                            "primary"
                        } else {
                            "primary(suspended)"
                        }
                    } else if let Some(p) = x.claim_phase(LUN) {
                        p.name()
                    } else {
                        "secondary"
                    };
                    let g = x.alua(LUN);
                    let _ = write!(
                        out,
                        "{role} e{} {}/{} link{}",
                        x.epoch(LUN),
                        g.local.abbrev(),
                        g.peer.abbrev(),
                        x.link_state()
                    );
                    if let Some(l) = x.lease_until() {
                        let _ = write!(out, " lease<{l}");
                    }
                }
            }
            if !s.ctl[n].writes.is_empty() {
                let v: Vec<u8> = s.ctl[n].writes.iter().map(|w| w.value).collect();
                let _ = write!(out, " queued{v:?}");
            }
            out.push_str(" | ");
        }
        let _ = write!(
            out,
            "link {} | backend {} (acked {}) | msgs {}",
            if s.link_up { "up" } else { "cut" },
            s.backend,
            s.acked,
            s.net.len()
        );
        for (i, c) in s.clients.iter().enumerate() {
            if self.client_done(c) {
                let _ = write!(out, " | client {} done", i + 1);
            } else {
                let _ = write!(
                    out,
                    " | client {} op {}{} via n{}",
                    i + 1,
                    c.op + 1,
                    if c.waiting { " waiting" } else { "" },
                    c.path + 1
                );
            }
        }
        out
    }
}

fn describe_quorum(op: &QuorumOp) -> String {
    match op {
        QuorumOp::Read { slot } => format!("read of slot {slot}"),
        QuorumOp::Write { slot, record } => {
            let mut s = format!("write of slot {slot}: heartbeat {}", record.seq);
            for l in &record.luns {
                let _ = write!(
                    s,
                    ", LUN {} {} epoch {}",
                    l.lun,
                    if l.own { "owned at" } else { "free," },
                    l.epoch
                );
            }
            s
        }
    }
}

/// A message in words.
pub fn describe_msg(m: &HaMsg) -> String {
    match m {
        HaMsg::Hello { ha_id, mode, .. } => {
            format!("Hello(ha_id {ha_id}, mode {})", mode.number())
        }
        HaMsg::Probe { at } => format!("Probe(at {at})"),
        HaMsg::State {
            at,
            valid_for,
            luns,
        } => {
            let mut s = String::from("State(");
            for l in luns {
                let _ = write!(
                    s,
                    "LUN {} {} e{}",
                    l.lun,
                    if l.primary { "primary" } else { "secondary" },
                    l.epoch
                );
            }
            if let Some(at) = at {
                if *valid_for == u64::MAX {
                    let _ = write!(s, "; answers probe at {at}");
                } else {
                    let _ = write!(s, "; answers probe at {at}, lease good for {valid_for} ms");
                }
            }
            s.push(')');
            s
        }
        HaMsg::Handover { lun, epoch } => format!("Handover(LUN {lun}, epoch {epoch})"),
    }
}

impl Model for ClusterModel {
    type State = ClusterState;
    type Action = Action;

    fn init_states(&self) -> Vec<ClusterState> {
        let ctl = |cfg: &Config| Controller {
            node: Some(Node::new(cfg.clone(), 0)),
            boots: 0,
            quorum: None,
            stalled: false,
            fence: false,
            writes: Vec::new(),
            paused: false,
        };
        let o = &self.opts;
        let mut s = ClusterState {
            clock: [0, 0],
            ctl: [ctl(&self.configs[0]), ctl(&self.configs[1])],
            slots: [None, None],
            link_up: true,
            net: Vec::new(),
            backend: 0,
            acked: 0,
            clients: (0..o.clients)
                .map(|i| Client {
                    path: (i % 2) as u8,
                    op: 0,
                    invoked: false,
                    waiting: false,
                    attempt: 0,
                })
                .collect(),
            history: LinearizabilityTester::new(Register(0)),
            budget: Budget {
                crashes: o.crashes,
                link_cuts: o.link_cuts,
                losses: o.msg_losses,
                dups: o.msg_dups,
                quorum_failures: o.quorum_failures,
                stalls: o.quorum_stalls,
                pauses: o.pauses,
                drift: o.drift_steps,
                fence_failures: o.fence_failures,
                timeouts: o.client_timeouts,
            },
            primary_lost: false,
        };
        self.route(&mut s, 0);
        self.route(&mut s, 1);
        self.link_up_both(&mut s);
        vec![s]
    }

    fn actions(&self, s: &ClusterState, actions: &mut Vec<Action>) {
        let faults = self.faults_allowed(s);
        let t = self.tick();
        // Time.
        if self.may_tick(s) {
            let tick1 = s.clock[0] / t;
            let off = (s.clock[1] / t).saturating_sub(tick1);
            if tick1 < self.opts.max_ticks {
                actions.push(Action::Tick(Drift::Both));
                if off > 0 && s.budget.drift > 0 {
                    actions.push(Action::Tick(Drift::Only1));
                }
            }
            if off < self.opts.drift_ticks
                && s.clock[1] / t < self.opts.max_ticks
                && s.budget.drift > 0
            {
                actions.push(Action::Tick(Drift::Only2));
            }
        }
        for n in 0..2u8 {
            let c = &s.ctl[n as usize];
            match &c.node {
                Some(node) => {
                    // The earliest due timer fires.
                    let now = s.clock[n as usize];
                    if let Some(k) = node
                        .due_timers(now)
                        .min_by_key(|k| node.timer(*k).unwrap_or(u64::MAX))
                    {
                        actions.push(Action::Timer(n, k));
                    }
                    if c.quorum.is_some() {
                        actions.push(Action::QuorumOk(n));
                        if faults && s.budget.quorum_failures > 0 {
                            actions.push(Action::QuorumFail(n));
                            if matches!(c.quorum, Some(QuorumOp::Write { .. })) {
                                actions.push(Action::QuorumFailApplied(n));
                            }
                        }
                        if faults && !c.stalled && s.budget.stalls > 0 {
                            actions.push(Action::StallQuorum(n));
                        }
                    }
                    if !c.writes.is_empty() && !c.paused && faults && s.budget.pauses > 0 {
                        actions.push(Action::Pause(n));
                    }
                    if c.fence {
                        actions.push(Action::FenceOk(n));
                        if faults && s.budget.fence_failures > 0 {
                            actions.push(Action::FenceFail(n));
                        }
                    }
                    if !c.writes.is_empty() {
                        actions.push(Action::Land(n));
                    }
                    if faults && s.budget.crashes > 0 {
                        actions.push(Action::Crash(n));
                    }
                }
                None => {
                    if c.boots < self.opts.restarts && faults {
                        actions.push(Action::Restart(n));
                    }
                }
            }
        }
        let mut last: Option<&(u8, HaMsg)> = None;
        for m in &s.net {
            if last == Some(m) {
                continue;
            }
            last = Some(m);
            actions.push(Action::Deliver(m.0, m.1.clone()));
            if faults && s.budget.losses > 0 {
                actions.push(Action::Lose(m.0, m.1.clone()));
            }
            if faults && s.budget.dups > 0 && s.net.len() < self.opts.max_in_flight {
                actions.push(Action::Duplicate(m.0, m.1.clone()));
            }
        }
        if s.link_up {
            if faults && s.budget.link_cuts > 0 {
                actions.push(Action::CutLink);
            }
        } else {
            actions.push(Action::HealLink);
        }
        for (i, c) in s.clients.iter().enumerate() {
            if self.client_done(c) {
                continue;
            }
            if c.waiting {
                if faults && s.budget.timeouts > 0 {
                    actions.push(Action::ClientTimeout(i as u8));
                }
            } else {
                let write = matches!(self.op_of(i, c.op), RegisterOp::Write(_));
                let here = self.serve(s, c.path as usize, write);
                let there = self.serve(s, 1 - c.path as usize, write);
                if matches!(here, Served::By(..))
                    || (matches!(here, Served::Refused) && matches!(there, Served::By(..)))
                {
                    actions.push(Action::ClientSend(i as u8));
                }
            }
        }
    }

    fn next_state(&self, last: &ClusterState, action: Action) -> Option<ClusterState> {
        let mut s = last.clone();
        let t = self.tick();
        match action {
            Action::Tick(d) => match d {
                Drift::Both => {
                    s.clock[0] += t;
                    s.clock[1] += t;
                }
                Drift::Only1 => {
                    s.clock[0] += t;
                    s.budget.drift = s.budget.drift.saturating_sub(1);
                }
                Drift::Only2 => {
                    s.clock[1] += t;
                    s.budget.drift = s.budget.drift.saturating_sub(1);
                }
            },
            Action::Timer(n, k) => self.feed(&mut s, n as usize, Input::Timer(k)),
            Action::StallQuorum(n) => {
                s.budget.stalls = s.budget.stalls.saturating_sub(1);
                s.ctl[n as usize].stalled = true;
            }
            Action::Pause(n) => {
                s.budget.pauses = s.budget.pauses.saturating_sub(1);
                s.ctl[n as usize].paused = true;
            }
            Action::QuorumOk(n) => {
                let n = n as usize;
                let op = s.ctl[n].quorum.take()?;
                s.ctl[n].stalled = false;
                let r = match op {
                    QuorumOp::Read { slot } => QuorumResult::ReadOk {
                        slot,
                        record: (slot as usize)
                            .checked_sub(1)
                            .and_then(|i| s.slots.get(i).cloned())
                            .flatten(),
                    },
                    QuorumOp::Write { slot, record } => {
                        if let Some(x) = (slot as usize)
                            .checked_sub(1)
                            .and_then(|i| s.slots.get_mut(i))
                        {
                            *x = Some(record);
                        }
                        QuorumResult::WriteOk { slot }
                    }
                };
                self.feed(&mut s, n, Input::Quorum(r));
            }
            Action::QuorumFail(n) | Action::QuorumFailApplied(n) => {
                let applied = matches!(action, Action::QuorumFailApplied(_));
                let n = n as usize;
                let op = s.ctl[n].quorum.take()?;
                s.ctl[n].stalled = false;
                s.budget.quorum_failures = s.budget.quorum_failures.saturating_sub(1);
                let slot = match op {
                    QuorumOp::Read { slot } => slot,
                    QuorumOp::Write { slot, record } => {
                        if applied {
                            if let Some(x) = (slot as usize)
                                .checked_sub(1)
                                .and_then(|i| s.slots.get_mut(i))
                            {
                                *x = Some(record);
                            }
                        }
                        slot
                    }
                };
                self.feed(
                    &mut s,
                    n,
                    Input::Quorum(QuorumResult::Failed {
                        slot,
                        reason: "I/O error".into(),
                    }),
                );
            }
            Action::Deliver(to, m) => {
                let i = s.net.iter().position(|x| x.0 == to && x.1 == m)?;
                s.net.remove(i);
                self.feed(&mut s, to as usize, Input::PeerMsg(m));
            }
            Action::Lose(to, m) => {
                let i = s.net.iter().position(|x| x.0 == to && x.1 == m)?;
                s.net.remove(i);
                s.budget.losses = s.budget.losses.saturating_sub(1);
            }
            Action::Duplicate(to, m) => {
                s.budget.dups = s.budget.dups.saturating_sub(1);
                s.net.push((to, m));
                s.net.sort();
            }
            Action::FenceOk(n) => {
                let n = n as usize;
                s.ctl[n].fence = false;
                if s.ctl[1 - n].node.is_some() {
                    self.kill(&mut s, 1 - n);
                }
                self.feed(&mut s, n, Input::FenceResult { ok: true });
            }
            Action::FenceFail(n) => {
                let n = n as usize;
                s.ctl[n].fence = false;
                s.budget.fence_failures = s.budget.fence_failures.saturating_sub(1);
                self.feed(&mut s, n, Input::FenceResult { ok: false });
            }
            Action::Crash(n) => {
                s.budget.crashes = s.budget.crashes.saturating_sub(1);
                self.kill(&mut s, n as usize);
            }
            Action::Restart(n) => {
                let n = n as usize;
                s.ctl[n].boots += 1;
                s.ctl[n].node = Some(Node::new(self.configs[n].clone(), s.clock[n]));
                self.route(&mut s, n);
                self.link_up_both(&mut s);
            }
            Action::CutLink => {
                let was = Self::connected(&s);
                s.link_up = false;
                s.budget.link_cuts = s.budget.link_cuts.saturating_sub(1);
                s.net.clear();
                if was {
                    self.feed(&mut s, 0, Input::PeerLinkDown);
                    self.feed(&mut s, 1, Input::PeerLinkDown);
                }
            }
            Action::HealLink => {
                s.link_up = true;
                self.link_up_both(&mut s);
            }
            Action::ClientSend(c) => {
                let ci = c as usize;
                let cl = *s.clients.get(ci)?;
                let op = self.op_of(ci, cl.op);
                let write = matches!(op, RegisterOp::Write(_));
                // The current path first; on a refusal or a dropped connection, the other path.
                let (path, exec, grant) = match self.serve(&s, cl.path as usize, write) {
                    Served::By(e, g) => (cl.path, e, g),
                    Served::Blocked => return None,
                    Served::Refused => match self.serve(&s, 1 - cl.path as usize, write) {
                        Served::By(e, g) => (1 - cl.path, e, g),
                        _ => return None,
                    },
                };
                s.clients[ci].path = path;
                if !cl.invoked {
                    let _ = s.history.on_invoke(c, op.clone());
                    s.clients[ci].invoked = true;
                }
                match op {
                    RegisterOp::Write(value) => {
                        s.ctl[exec].writes.push(PendingWrite {
                            client: c,
                            op: cl.op,
                            attempt: cl.attempt,
                            value,
                            grant,
                        });
                        s.clients[ci].waiting = true;
                    }
                    RegisterOp::Read => {
                        let _ = s.history.on_return(c, RegisterRet::ReadOk(s.backend));
                        Self::next_op(&mut s.clients[ci]);
                    }
                }
            }
            Action::ClientTimeout(c) => {
                let ci = c as usize;
                s.budget.timeouts = s.budget.timeouts.saturating_sub(1);
                let cl = s.clients.get_mut(ci)?;
                cl.waiting = false;
                cl.attempt = cl.attempt.saturating_add(1);
                cl.path = 1 - cl.path;
            }
            Action::Land(n) => {
                let n = n as usize;
                if s.ctl[n].writes.is_empty() {
                    return None;
                }
                let w = s.ctl[n].writes.remove(0);
                if s.ctl[n].writes.is_empty() {
                    s.ctl[n].paused = false;
                }
                s.backend = w.value;
                let ci = w.client as usize;
                if let Some(cl) = s.clients.get(ci).copied() {
                    if cl.waiting && cl.op == w.op && cl.attempt == w.attempt {
                        let _ = s.history.on_return(w.client, RegisterRet::WriteOk);
                        s.acked = w.value;
                        Self::next_op(&mut s.clients[ci]);
                    }
                }
            }
        }
        Some(s)
    }

    fn format_action(&self, action: &Action) -> String {
        self.describe_action(action)
    }

    fn format_step(&self, last: &ClusterState, action: Action) -> Option<String> {
        let line = self.describe_step(last, &action);
        self.next_state(last, action)
            .map(|next| format!("{line}\n{}", self.describe_state(&next)))
    }

    fn within_boundary(&self, s: &ClusterState) -> bool {
        s.ctl
            .iter()
            .filter_map(|c| c.node.as_ref())
            .all(|n| n.epoch(LUN) <= self.opts.max_epoch)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("single-primary", |_, s: &ClusterState| {
                (0..2).filter(|&n| Self::serving_primary(s, n)).count() <= 1
            }),
            Property::always("linearizable", |_, s: &ClusterState| {
                s.history.serialized_history().is_some()
            }),
            Property::always(
                "acked-writes-durable",
                |m: &ClusterModel, s: &ClusterState| {
                    let writing = s.clients.iter().enumerate().any(|(i, c)| {
                        c.invoked
                            && !m.client_done(c)
                            && matches!(m.op_of(i, c.op), RegisterOp::Write(_))
                    });
                    writing || s.backend == s.acked
                },
            ),
            Property::always("alua-truthful", |m: &ClusterModel, s: &ClusterState| {
                (0..2).all(|n| match Self::local_state(s, n) {
                    Some(st) if st.is_active() => m.truthful(s, n),
                    _ => true,
                })
            }),
            Property::eventually(
                "primary-eventually",
                |m: &ClusterModel, s: &ClusterState| {
                    m.now_tick(s) >= m.opts.max_ticks
                        && (!s.primary_lost
                            || s.ctl.iter().all(|c| c.node.is_none())
                            || (0..2).any(|n| Self::serving_primary(s, n)))
                },
            ),
        ]
    }
}

impl ClusterModel {
    /// A port of controller `n` that reports itself active would serve a data command now, and
    /// correctly (not as one of two primaries).
    fn truthful(&self, s: &ClusterState, n: usize) -> bool {
        let Some(node) = &s.ctl[n].node else {
            return true;
        };
        if node.is_primary(LUN) {
            node.serving(LUN) && !Self::serving_primary(s, 1 - n)
        } else {
            match self.opts.mode {
                HaMode::ActiveStandby => false,
                HaMode::ActiveActiveShared => node.serving(LUN) && Self::primary_reachable(s, n),
                HaMode::ActiveActiveForward => Self::primary_reachable(s, n),
            }
        }
    }
}

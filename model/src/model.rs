//! [`ClusterModel`], the model of a controller pair, and the plumbing its steps share: feeding a
//! controller's `Node` and routing its outputs, killing a controller, and what a controller does
//! with a client command. Its [`stateright::Model`] implementation and steps are in
//! [`crate::actions`], the grant exchange in [`crate::grants`], the properties in
//! [`crate::properties`], the trace text in [`crate::trace`].

use crate::options::{ModelOptions, LUN};
use crate::state::{Client, ClusterState, Controller, Lock, Msg};
use duet_core::alua::{self, AluaState, HaMode};
use duet_core::ha::grant::{Access, GrantMsg, PrimaryFacts};
use duet_core::ha::{Config, HaMsg, Input, Output};
use duet_core::scsi::host;
use stateright::semantics::register::RegisterOp;

/// The clients' commands: one block at LBA 0.
const WRITE10: [u8; 10] = host::write10_cdb(0, 1);
const READ10: [u8; 10] = host::read10_cdb(0, 1);

/// The cluster model. See the crate documentation.
#[derive(Clone, Debug)]
pub struct ClusterModel {
    pub opts: ModelOptions,
    pub(crate) configs: [Config; 2],
}

/// What happens to a client command sent to a controller.
pub(crate) enum Served {
    /// Executed by controller `exec` (for a write: queued there, holding `lock`; a primary's
    /// `Lock::Local` gets its id from the grantor when the write is queued).
    By(usize, Lock),
    /// Mode 1: the secondary `n` asks the primary for a grant first.
    Ask(usize),
    /// Refused or connection dropped: try the other path.
    Refused,
    /// Waits for the LUN's lock (a grant of the peer's is in use).
    Blocked,
}
impl ClusterModel {
    pub fn new(opts: ModelOptions) -> Self {
        let configs = [opts.node_config(1), opts.node_config(2)];
        ClusterModel { opts, configs }
    }

    pub(crate) fn tick(&self) -> u64 {
        self.opts.tick_ms.max(1)
    }

    pub(crate) fn now_tick(&self, s: &ClusterState) -> u64 {
        s.clock[0] / self.tick()
    }

    pub(crate) fn faults_allowed(&self, s: &ClusterState) -> bool {
        self.now_tick(s) < self.opts.fault_ticks
    }

    pub(crate) fn op_of(&self, client: usize, op: u8) -> RegisterOp<u8> {
        if op + 1 >= self.opts.ops_per_client {
            RegisterOp::Read
        } else {
            RegisterOp::Write(1 + client as u8 * 10 + op)
        }
    }

    pub(crate) fn connected(s: &ClusterState) -> bool {
        s.link_up && s.ctl[0].node.is_some() && s.ctl[1].node.is_some()
    }

    /// Feeds `input` to controller `n` and routes its outputs.
    pub(crate) fn feed(&self, s: &mut ClusterState, n: usize, input: Input) {
        let now = s.clock[n];
        let Some(node) = s.ctl[n].node.as_mut() else {
            return;
        };
        node.handle(now, input);
        self.route(s, n);
    }

    /// Controller `from` sends `m` to its peer: it is in flight if the two are connected and the
    /// link has room, and lost otherwise.
    pub(crate) fn send(&self, s: &mut ClusterState, from: usize, m: Msg) {
        if Self::connected(s) && s.net.len() < self.opts.max_in_flight {
            s.net.push((1 - from as u8, m));
            s.net.sort();
        }
    }

    /// Routes controller `n`'s outputs, then lets its grantor act on the node's new facts.
    pub(crate) fn route(&self, s: &mut ClusterState, n: usize) {
        loop {
            let Some(node) = s.ctl[n].node.as_mut() else {
                return;
            };
            let Some(out) = node.poll_output() else {
                break;
            };
            match out {
                // The runtime sends Leaving only once the I/O fenced before it has drained.
                Output::SendPeer(HaMsg::Leaving) if !s.ctl[n].writes.is_empty() => {
                    s.ctl[n].leaving_held = true
                }
                Output::SendPeer(m) => self.send(s, n, Msg::Ha(m)),
                Output::Quorum(op) => s.ctl[n].quorum = Some(op),
                Output::FencePeer => {
                    if s.left[1 - n] {
                        s.fenced_after_leaving = true;
                    }
                    s.ctl[n].fence = true
                }
                Output::RestoreDiskAccess => s.ctl[n].restore = true,
                _ => {}
            }
        }
        self.grant_update(s, n);
    }

    /// Controller `n` dies (crash or fence): its volatile state and pending I/O are gone.
    pub(crate) fn kill(&self, s: &mut ClusterState, n: usize) {
        if let Some(node) = &s.ctl[n].node {
            if node.is_primary(LUN) {
                s.primary_lost = true;
            }
        }
        let was_connected = Self::connected(s);
        // Commands waiting for a grant die with the controller's connections: their clients
        // retry.
        let asks = std::mem::take(&mut s.ctl[n].asks);
        for a in asks {
            Self::fail_attempt(s, a.client, a.op, a.attempt);
        }
        let boots = s.ctl[n].boots;
        s.ctl[n] = Controller::new(None);
        s.ctl[n].boots = boots;
        if was_connected {
            s.net.clear();
            // The dead controller's end of the link closes: the survivor sees the connection end.
            self.feed(s, 1 - n, Input::PeerLinkClosed);
            self.grants_link_lost(s, 1 - n);
        }
    }

    pub(crate) fn link_up_both(&self, s: &mut ClusterState) {
        if Self::connected(s) {
            self.feed(s, 0, Input::PeerLinkUp);
            self.feed(s, 1, Input::PeerLinkUp);
        }
    }

    /// Controller `n` serves as primary: it says so and the backend does not refuse it (a
    /// controller fenced at the disk may still believe it serves until its first refused I/O,
    /// but nothing it does reaches the disk).
    pub(crate) fn serving_primary(s: &ClusterState, n: usize) -> bool {
        !s.ctl[n].disk_fenced
            && s.ctl[n]
                .node
                .as_ref()
                .is_some_and(|x| x.is_primary(LUN) && x.serving(LUN))
    }

    /// The backend refused controller `n`'s I/O (it is fenced at the disk): the runtime tells
    /// the node.
    pub(crate) fn refused_by_disk(&self, s: &mut ClusterState, n: usize) {
        self.feed(s, n, Input::Backend(duet_core::ha::BackendHealth::Fenced));
    }

    /// Whether a secondary `n` can get its command executed by the primary (grant or forward).
    pub(crate) fn primary_reachable(s: &ClusterState, n: usize) -> bool {
        let p = 1 - n;
        let (Some(me), Some(peer)) = (&s.ctl[n].node, &s.ctl[p].node) else {
            return false;
        };
        Self::connected(s) && Self::serving_primary(s, p) && peer.epoch(LUN) == me.epoch(LUN)
    }

    pub(crate) fn local_state(s: &ClusterState, n: usize) -> Option<AluaState> {
        s.ctl[n].node.as_ref().map(|x| x.alua(LUN).local)
    }

    /// What controller `n` does with a data command (`write` or read).
    pub(crate) fn serve(&self, s: &ClusterState, n: usize, write: bool) -> Served {
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
            if !write || self.opts.mode != HaMode::ActiveActiveShared {
                return Served::By(n, Lock::None);
            }
            // Mode 1: the write takes the LUN's lock, unless a grant holds it.
            return if s.ctl[n].grantor.may_begin_local(LUN, Access::Exclusive) {
                Served::By(n, Lock::Local(0))
            } else {
                Served::Blocked
            };
        }
        match self.opts.mode {
            HaMode::ActiveStandby => Served::Refused,
            HaMode::ActiveActiveShared => {
                // The secondary goes by what it knows: its read lease on the primary and the link.
                if !node.serving(LUN) || node.link_state() != 2 {
                    Served::Refused
                } else if write && self.opts.ungranted_write {
                    // The mutation: the write goes to the backend without a grant.
                    Served::By(n, Lock::None)
                } else {
                    Served::Ask(n)
                }
            }
            HaMode::ActiveActiveForward => {
                if Self::primary_reachable(s, n) {
                    Served::By(peer, Lock::None)
                } else {
                    Served::Refused
                }
            }
        }
    }

    pub(crate) fn client_done(&self, c: &Client) -> bool {
        c.op >= self.opts.ops_per_client
    }

    pub(crate) fn next_op(c: &mut Client) {
        c.op += 1;
        c.invoked = false;
        c.waiting = false;
        c.attempt = 0;
    }

    /// A stopping controller exits now: its clean stop is complete and drained, or the runtime's
    /// bound on the stop has passed (then it ends as after a crash).
    pub(crate) fn must_exit(c: &Controller, now: u64) -> bool {
        c.node.as_ref().is_some_and(|node| {
            (node.stopped() && c.writes.is_empty() && !c.leaving_held)
                || (node.stopping() && !node.stopped() && c.stop_by.is_some_and(|t| now >= t))
        })
    }

    /// Time may advance: no timer due, and after the fault window nothing pending.
    pub(crate) fn may_tick(&self, s: &ClusterState) -> bool {
        if (0..2).any(|n| Self::must_exit(&s.ctl[n], s.clock[n])) {
            return false;
        }
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
        if !self.faults_allowed(s)
            && s.ctl
                .iter()
                .any(|c| c.quorum.is_some() || c.fence || c.restore)
        {
            return false;
        }
        true
    }

    /// Mode 1: controller `n`'s grantor acts on its node's facts (revokes what no longer orders
    /// anything, answers waiting requests).
    pub(crate) fn grant_update(&self, s: &mut ClusterState, n: usize) {
        if self.opts.mode != HaMode::ActiveActiveShared {
            return;
        }
        let Some(node) = &s.ctl[n].node else {
            return;
        };
        let facts = PrimaryFacts::of(node, LUN);
        for (req, answer) in s.ctl[n].grantor.update(LUN, facts) {
            self.send(s, n, Msg::Grant(GrantMsg::Answer { req, answer }));
        }
    }

    /// Controller `n`'s link session ended (cut, or the peer died): its grants and requests
    /// end with it; the commands that waited for a grant fail.
    pub(crate) fn grants_link_lost(&self, s: &mut ClusterState, n: usize) {
        let c = &mut s.ctl[n];
        c.grantor.link_down();
        let (asked, _) = c.grantee.link_down();
        let mut failed = Vec::new();
        c.asks.retain(|a| {
            let gone = asked.contains(&a.req);
            if gone {
                failed.push(*a);
            }
            !gone
        });
        for a in failed {
            Self::fail_attempt(s, a.client, a.op, a.attempt);
        }
        self.grant_update(s, n);
    }

    /// A client's attempt failed (refused, or its connection dropped): if the client still waits
    /// for it, it retries on the other path.
    pub(crate) fn fail_attempt(s: &mut ClusterState, client: u8, op: u8, attempt: u8) {
        if let Some(c) = s.clients.get_mut(client as usize) {
            if c.waiting && c.op == op && c.attempt == attempt {
                c.waiting = false;
                c.path = 1 - c.path;
            }
        }
    }
}

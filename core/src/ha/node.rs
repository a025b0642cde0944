//! [`Node`]: one controller's HA state machine. The protocol is described in the module
//! documentation of [`crate::ha`].

use super::types::*;
use crate::alua::{self, GroupStates, HaMode, LunView, PeerReach, PrimaryView};
use crate::sense::SenseCode;
use std::collections::VecDeque;
use std::sync::Arc;

/// Where a claim for one LUN stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimPhase {
    /// Needs a read of the peer's slot to see whether the peer owns the LUN.
    Observe,
    /// The peer's slot showed ownership with heartbeat `seq`; its lease has certainly expired if
    /// a read issued at or after `until` (own clock) still shows `seq`. The next read is due at
    /// `next` (`until`, or earlier to poll while this node's own claim is recorded).
    Wait { seq: u64, until: Time, next: Time },
    /// Needs a read of the peer's slot (see `Wait`).
    Recheck { seq: u64, until: Time },
    /// Needs a write of this node's slot that records the claim.
    Intent,
    /// The claim is recorded; needs a read of the peer's slot to rule out a concurrent claim.
    Check,
    /// Waiting for the fencing agent.
    Fence,
}

impl ClaimPhase {
    pub fn name(self) -> &'static str {
        match self {
            ClaimPhase::Observe => "observe",
            ClaimPhase::Wait { .. } => "wait",
            ClaimPhase::Recheck { .. } => "recheck",
            ClaimPhase::Intent => "intent",
            ClaimPhase::Check => "check",
            ClaimPhase::Fence => "fence",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Claim {
    phase: ClaimPhase,
    /// The epoch this claim will start (set when the intent is recorded).
    epoch: u64,
    /// The claim record has been (or is being) written: the slot shows ownership.
    intent: bool,
    /// The peer may have served the LUN: fence it before serving.
    must_fence: bool,
    /// The peer's heartbeat value that was seen unchanged for a full claim wait.
    stale_seq: Option<u64>,
    /// A planned hand-over from the peer: no lease wait, no fencing.
    handover: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LunRole {
    Secondary,
    Claiming(Claim),
    Primary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LunState {
    lun: Lun,
    epoch: u64,
    role: LunRole,
    /// The peer said (over the link) that it is primary at `epoch`.
    peer_primary: bool,
    /// Administrative override of the preferred role.
    role_override: Option<Role>,
    /// Stepping down for a planned switchover: send Handover once the slot says so.
    handing_over: bool,
    /// The newest epoch at which some controller is known to have served as primary (its own
    /// primacy, the peer's State or Handover, either slot's `served`). A new primary always
    /// starts above it, even when its claim chose its epoch before the peer served.
    served: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Join {
    ReadOwn,
    ReadPeer,
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Pending {
    ReadOwn,
    ReadPeer { issued: Time },
    Write { issued: Time, record: QuorumRecord },
}

/// Why a fence of the peer is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FenceWhy {
    Claim,
    /// Mode 1: the link dropped while the secondary may hold grants.
    Link,
}

/// A summary of the node's HA state for `duetctl ha`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaStatus {
    pub ha_id: u8,
    pub mode: HaMode,
    pub policy: Policy,
    pub link: u8,
    /// Milliseconds left on this node's own lease, if it holds one.
    pub lease_remaining_ms: Option<u64>,
    pub luns: Vec<LunStatusView>,
}

/// One LUN in [`HaStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunStatusView {
    pub lun: Lun,
    pub epoch: u64,
    /// ha_id of the primary as this node knows it (`None`: no primary known).
    pub primary: Option<u8>,
    /// The claim phase, while this node claims the LUN.
    pub claim: Option<&'static str>,
    pub alua: GroupStates,
    pub serving: bool,
}

/// One controller's HA state machine. See the [module documentation](crate::ha).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    cfg: Arc<Config>,
    link: u8,
    /// When this node first heard the peer's state after the link came up (failback waits a
    /// full lease from there).
    link_up_at: Option<Time>,
    /// This node fenced the peer; it is known down until the link comes up again.
    peer_down: bool,
    join: Join,
    /// The heartbeat value of this node's slot (last written or learned).
    seq: u64,
    lease_until: Option<Time>,
    pending: Option<Pending>,
    /// A heartbeat write is due.
    write_due: bool,
    /// The slot still shows ownership this node gave up: write it once more.
    release_due: bool,
    /// A quorum operation failed: wait for the renew timer before the next one.
    backoff: bool,
    /// When to try claiming again (non-preferred start, after an abandoned claim or a lapse).
    retry_at: Option<Time>,
    fence: Option<FenceWhy>,
    /// Mode 1: I/O suspended until the peer is fenced.
    suspended: bool,
    backend_ok: bool,
    timers: [Option<Time>; 5],
    luns: Vec<LunState>,
    out: VecDeque<Output>,
}

impl Node {
    /// A node that has just started. It knows nothing of epochs or leases: under the automatic
    /// policy it first reads the quorum area, and it never serves before an election says so.
    pub fn new(config: Config, now: Time) -> Node {
        let standalone = !config.ha_enabled();
        let luns = config
            .luns
            .iter()
            .map(|l| LunState {
                lun: l.lun,
                epoch: if standalone { 1 } else { 0 },
                role: if standalone {
                    LunRole::Primary
                } else {
                    LunRole::Secondary
                },
                peer_primary: false,
                role_override: None,
                handing_over: false,
                served: if standalone { 1 } else { 0 },
            })
            .collect();
        let automatic = config.policy == Policy::Automatic;
        let mut node = Node {
            link: if standalone { 0 } else { 1 },
            link_up_at: None,
            peer_down: false,
            join: if standalone || !automatic {
                Join::Done
            } else {
                Join::ReadOwn
            },
            seq: 0,
            lease_until: None,
            pending: None,
            write_due: false,
            release_due: false,
            backoff: false,
            retry_at: None,
            fence: None,
            suspended: false,
            backend_ok: true,
            timers: [None; 5],
            luns,
            out: VecDeque::new(),
            cfg: Arc::new(config),
        };
        for i in 0..node.luns.len() {
            let lun = node.luns[i].lun;
            let g = node.alua(lun);
            node.out.push_back(Output::AluaChanged {
                lun,
                local: g.local,
                peer: g.peer,
            });
            if standalone {
                node.out.push_back(Output::ResumeIo { lun });
            } else {
                node.out.push_back(Output::FenceIo { lun });
            }
        }
        node.drive(now);
        node
    }

    // ----- queries -----

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn ha_id(&self) -> u8 {
        self.cfg.ha_id
    }

    /// CTL's link state: 0 not configured, 1 configured but not established, 2 established.
    pub fn link_state(&self) -> u8 {
        self.link
    }

    /// The LUNs this node knows, in configuration order.
    pub fn luns(&self) -> impl Iterator<Item = Lun> + '_ {
        self.luns.iter().map(|l| l.lun)
    }

    fn lun_state(&self, lun: Lun) -> Option<&LunState> {
        self.luns.iter().find(|l| l.lun == lun)
    }

    fn peer_reach(&self) -> PeerReach {
        if !self.cfg.ha_enabled() || self.peer_down {
            PeerReach::Down
        } else if self.link == 2 {
            PeerReach::Up
        } else {
            PeerReach::Unknown
        }
    }

    /// Whether this node can count on the peer's primacy right now: the link is up, and under
    /// the automatic policy the read lease from the last probe answer has not run out.
    fn peer_primacy_valid(&self, l: &LunState) -> bool {
        l.peer_primary
            && self.link == 2
            && !self.peer_down
            && (!self.read_lease_needed() || self.timers[TimerKind::PeerLease.index()].is_some())
    }

    /// What this node knows about `lun`, as the ALUA table needs it.
    pub fn lun_view(&self, lun: Lun) -> LunView {
        let primary = match self.lun_state(lun) {
            Some(l) if l.role == LunRole::Primary && !self.suspended => PrimaryView::Local,
            Some(l) if l.role == LunRole::Secondary && self.peer_primacy_valid(l) => {
                PrimaryView::Peer
            }
            _ => PrimaryView::None,
        };
        LunView {
            mode: self.cfg.mode,
            primary,
            peer: self.peer_reach(),
        }
    }

    /// The ALUA states of both port groups for `lun`, as this node reports them.
    pub fn alua(&self, lun: Lun) -> GroupStates {
        alua::group_states(self.lun_view(lun))
    }

    /// This node holds the primary role for `lun` (it may be suspended; see [`Node::serving`]).
    pub fn is_primary(&self, lun: Lun) -> bool {
        self.lun_state(lun)
            .is_some_and(|l| l.role == LunRole::Primary)
    }

    /// This node may execute I/O for `lun` now: as primary with a valid lease and not suspended,
    /// or in mode 1 as a secondary whose primary is reachable and vouched for by a read lease.
    pub fn serving(&self, lun: Lun) -> bool {
        match self.lun_state(lun) {
            Some(l) if l.role == LunRole::Primary => !self.suspended,
            Some(l) => {
                l.role == LunRole::Secondary
                    && self.cfg.mode == HaMode::ActiveActiveShared
                    && self.backend_ok
                    && self.peer_primacy_valid(l)
            }
            None => false,
        }
    }

    /// The newest epoch this node knows for `lun`.
    pub fn epoch(&self, lun: Lun) -> u64 {
        self.lun_state(lun).map_or(0, |l| match l.role {
            LunRole::Claiming(c) if c.intent => l.epoch.max(c.epoch),
            _ => l.epoch,
        })
    }

    /// The ha_id of the primary for `lun` as this node knows it.
    pub fn primary_of(&self, lun: Lun) -> Option<u8> {
        match self.lun_view(lun).primary {
            PrimaryView::Local => Some(self.cfg.ha_id),
            PrimaryView::Peer => Some(3 - self.cfg.ha_id.clamp(1, 2)),
            PrimaryView::None => None,
        }
    }

    /// The claim phase for `lun`, while this node claims it.
    pub fn claim_phase(&self, lun: Lun) -> Option<ClaimPhase> {
        match self.lun_state(lun)?.role {
            LunRole::Claiming(c) => Some(c.phase),
            _ => None,
        }
    }

    /// The end of this node's lease on its own clock, if it holds one.
    pub fn lease_until(&self) -> Option<Time> {
        self.lease_until
    }

    /// The deadline of one timer, if set.
    pub fn timer(&self, kind: TimerKind) -> Option<Time> {
        self.timers[kind.index()]
    }

    /// The earliest timer deadline: the runtime calls `handle(t, Input::Timer(kind))` when its
    /// clock reaches it.
    pub fn next_timeout(&self) -> Option<Time> {
        self.timers.iter().flatten().copied().min()
    }

    /// Timers whose deadline is at or before `now`.
    pub fn due_timers(&self, now: Time) -> impl Iterator<Item = TimerKind> + '_ {
        TimerKind::ALL
            .into_iter()
            .filter(move |k| self.timers[k.index()].is_some_and(|t| t <= now))
    }

    /// A quorum operation is outstanding.
    pub fn quorum_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// A fence of the peer is outstanding.
    pub fn fence_pending(&self) -> bool {
        self.fence.is_some()
    }

    /// Everything `duetctl ha` shows.
    pub fn status(&self, now: Time) -> HaStatus {
        HaStatus {
            ha_id: self.cfg.ha_id,
            mode: self.cfg.mode,
            policy: self.cfg.policy,
            link: self.link,
            lease_remaining_ms: self.lease_until.filter(|&t| t > now).map(|t| t - now),
            luns: self
                .luns
                .iter()
                .map(|l| LunStatusView {
                    lun: l.lun,
                    epoch: self.epoch(l.lun),
                    primary: self.primary_of(l.lun),
                    claim: self.claim_phase(l.lun).map(|p| p.name()),
                    alua: self.alua(l.lun),
                    serving: self.serving(l.lun),
                })
                .collect(),
        }
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ----- input -----

    /// Feeds one input at time `now` (this node's clock). Outputs queue up for
    /// [`Node::poll_output`].
    pub fn handle(&mut self, now: Time, input: Input) {
        if !self.cfg.ha_enabled() {
            // Stand-alone: always primary; only the backend matters.
            if let Input::Backend(h) = input {
                self.backend_ok = h == BackendHealth::Ok;
                self.log(Event::Backend {
                    ok: self.backend_ok,
                });
            }
            return;
        }
        let before: Vec<GroupStates> = self.luns.iter().map(|l| self.alua(l.lun)).collect();
        match input {
            Input::PeerLinkUp => self.on_link_up(now),
            Input::PeerLinkDown => self.on_link_down(now),
            Input::PeerMsg(msg) => self.on_msg(now, msg),
            Input::Timer(kind) => self.on_timer(now, kind),
            Input::Quorum(r) => self.on_quorum(now, r),
            Input::Admin(cmd) => self.on_admin(now, cmd),
            Input::Backend(h) => {
                self.backend_ok = h == BackendHealth::Ok;
                self.log(Event::Backend {
                    ok: self.backend_ok,
                });
                if self.backend_ok {
                    self.consider_claims(now, false);
                }
            }
            Input::FenceResult { ok } => self.on_fence_result(now, ok),
        }
        self.drive(now);
        for (i, old) in before.into_iter().enumerate() {
            let lun = self.luns[i].lun;
            let new = self.alua(lun);
            if new != old {
                self.out.push_back(Output::AluaChanged {
                    lun,
                    local: new.local,
                    peer: new.peer,
                });
                self.out.push_back(Output::RaiseUa {
                    lun,
                    sense: SenseCode::UA_ALUA_STATE_CHANGED,
                });
            }
        }
    }

    // ----- helpers -----

    fn log(&mut self, e: Event) {
        self.out.push_back(Output::Log(e));
    }

    fn set_timer(&mut self, kind: TimerKind, at: Time) {
        if self.timers[kind.index()] != Some(at) {
            self.timers[kind.index()] = Some(at);
            self.out.push_back(Output::SetTimer { kind, at });
        }
    }

    /// The secondary reports itself active only under a read lease on the peer's primacy: under
    /// the automatic policy (where a primary can lose its role without telling) in modes 1 and 2
    /// (in mode 0 the secondary is Standby anyway).
    fn read_lease_needed(&self) -> bool {
        self.automatic() && self.cfg.mode != HaMode::ActiveStandby
    }

    fn automatic(&self) -> bool {
        self.cfg.policy == Policy::Automatic
    }

    fn wait(&self) -> u64 {
        self.cfg.timing.claim_wait()
    }

    fn preferred(&self, l: &LunState) -> bool {
        l.role_override.unwrap_or_else(|| self.cfg.role_for(l.lun)) == Role::Primary
    }

    fn lease_valid(&self, now: Time) -> bool {
        self.lease_until.is_some_and(|t| now < t)
    }

    fn owns_any(&self) -> bool {
        self.luns.iter().any(|l| match l.role {
            LunRole::Primary => true,
            LunRole::Claiming(c) => c.intent,
            LunRole::Secondary => false,
        })
    }

    fn my_record(&self) -> QuorumRecord {
        QuorumRecord {
            seq: self.seq + 1,
            luns: self
                .luns
                .iter()
                .map(|l| match l.role {
                    LunRole::Primary => SlotLun {
                        lun: l.lun,
                        epoch: l.epoch,
                        own: true,
                        served: l.served,
                    },
                    LunRole::Claiming(c) if c.intent => SlotLun {
                        lun: l.lun,
                        epoch: c.epoch.max(l.epoch),
                        own: true,
                        served: l.served,
                    },
                    _ => SlotLun {
                        lun: l.lun,
                        epoch: l.epoch,
                        own: false,
                        served: l.served,
                    },
                })
                .collect(),
        }
    }

    fn states_msg(&self, at: Option<Time>, now: Time) -> HaMsg {
        let valid_for = if self.automatic() {
            match self.lease_until {
                Some(t) if t > now && !self.suspended => t - now,
                _ => 0,
            }
        } else if self.suspended {
            0
        } else {
            u64::MAX
        };
        HaMsg::State {
            at,
            valid_for,
            luns: self
                .luns
                .iter()
                .map(|l| LunStatus {
                    lun: l.lun,
                    epoch: l.epoch,
                    primary: l.role == LunRole::Primary && !self.suspended,
                })
                .collect(),
        }
    }

    fn push_state(&mut self, now: Time) {
        // While a LUN is handed over, the peer hears of the step-down only together with the
        // Handover (after this node's slot stops owning the LUN): told earlier, the peer would
        // start an ordinary claim, and that one fences.
        if self.link == 2 && !self.luns.iter().any(|l| l.handing_over) {
            let m = self.states_msg(None, now);
            self.out.push_back(Output::SendPeer(m));
        }
    }

    fn set_link(&mut self, to: u8) {
        if self.link != to {
            let from = self.link;
            self.link = to;
            self.link_up_at = None;
            self.log(Event::LinkChanged { from, to });
        }
    }

    /// Makes this node primary for LUN index `i` at `epoch`.
    fn become_primary(&mut self, now: Time, i: usize, epoch: u64) {
        let l = &mut self.luns[i];
        l.role = LunRole::Primary;
        l.epoch = l.epoch.max(epoch);
        l.served = l.served.max(l.epoch);
        l.peer_primary = false;
        l.handing_over = false;
        let (lun, epoch) = (l.lun, l.epoch);
        self.log(Event::BecamePrimary { lun, epoch });
        if !self.suspended {
            self.out.push_back(Output::ResumeIo { lun });
        }
        self.push_state(now);
    }

    fn step_down(&mut self, now: Time, i: usize, reason: &str) {
        let l = &mut self.luns[i];
        if l.role == LunRole::Primary {
            l.role = LunRole::Secondary;
            let (lun, epoch) = (l.lun, l.epoch);
            self.out.push_back(Output::FenceIo { lun });
            self.log(Event::LostPrimary {
                lun,
                epoch,
                reason: reason.to_string(),
            });
            self.push_state(now);
        }
    }

    fn abort_claim(&mut self, now: Time, i: usize, reason: &str) {
        if let LunRole::Claiming(c) = self.luns[i].role {
            if c.intent {
                // The claim's epoch was published: never use it again.
                self.release_due = true;
                self.luns[i].epoch = self.luns[i].epoch.max(c.epoch);
            }
            self.luns[i].role = LunRole::Secondary;
            let lun = self.luns[i].lun;
            self.log(Event::ClaimAborted {
                lun,
                reason: reason.to_string(),
            });
            let at = now.saturating_add(self.wait());
            self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
        }
    }

    /// Whether LUN index `i` should be claimed now (automatic policy).
    fn should_claim(&self, i: usize) -> bool {
        let l = &self.luns[i];
        self.automatic()
            && self.join == Join::Done
            && self.backend_ok
            && l.role == LunRole::Secondary
            && !l.handing_over
            && !(self.link == 2 && l.peer_primary)
    }

    /// Starts claims where due. Non-preferred LUNs wait for `include_non_preferred` (the retry
    /// timer), so that at start-up the preferred node normally wins.
    fn consider_claims(&mut self, now: Time, include_non_preferred: bool) {
        for i in 0..self.luns.len() {
            if !self.should_claim(i) {
                continue;
            }
            if include_non_preferred || self.preferred(&self.luns[i]) {
                let max_known = self.luns[i].epoch;
                self.luns[i].role = LunRole::Claiming(Claim {
                    phase: ClaimPhase::Observe,
                    epoch: 0,
                    intent: false,
                    must_fence: max_known > 0,
                    stale_seq: None,
                    handover: false,
                });
                let lun = self.luns[i].lun;
                self.log(Event::ClaimStarted { lun });
            } else if self.retry_at.is_none() {
                self.retry_at = Some(now.saturating_add(self.wait()));
            }
        }
    }

    fn lapse(&mut self, now: Time) {
        self.lease_until = None;
        self.log(Event::LeaseExpired);
        if self.owns_any() {
            self.release_due = true;
        }
        for i in 0..self.luns.len() {
            match self.luns[i].role {
                LunRole::Primary => self.step_down(now, i, "lease expired"),
                LunRole::Claiming(c) if c.intent => self.abort_claim(now, i, "lease expired"),
                _ => {}
            }
        }
        // Claim again at once: the claim's own wait on the peer's heartbeat is delay enough.
        self.retry_at = None;
        self.consider_claims(now, true);
    }

    // ----- handlers -----

    fn on_link_up(&mut self, now: Time) {
        let _ = now;
        self.out.push_back(Output::SendPeer(HaMsg::Hello {
            version: PROTOCOL_VERSION,
            ha_id: self.cfg.ha_id,
            mode: self.cfg.mode,
        }));
    }

    fn on_link_down(&mut self, now: Time) {
        if self.link == 2 {
            self.set_link(1);
        }
        self.timers[TimerKind::PeerLease.index()] = None;
        self.timers[TimerKind::Probe.index()] = None;
        for l in self.luns.iter_mut() {
            l.peer_primary = false;
        }
        match self.cfg.policy {
            Policy::Naive => {
                for i in 0..self.luns.len() {
                    if self.luns[i].role != LunRole::Primary {
                        let e = self.luns[i].epoch.saturating_add(1);
                        self.become_primary(now, i, e);
                    }
                }
            }
            Policy::Manual | Policy::Automatic => {
                // Mode 1: the secondary writes to the backend under grants from the primary; with
                // the link gone the primary cannot know which grants are still in use, so it
                // suspends I/O until the peer is fenced.
                if self.cfg.mode == HaMode::ActiveActiveShared
                    && self.cfg.fencing == Fencing::Agent
                    && self.luns.iter().any(|l| l.role == LunRole::Primary)
                    && !self.peer_down
                {
                    if !self.suspended {
                        self.suspended = true;
                        for l in 0..self.luns.len() {
                            if self.luns[l].role == LunRole::Primary {
                                let lun = self.luns[l].lun;
                                self.out.push_back(Output::FenceIo { lun });
                            }
                        }
                    }
                    if self.fence.is_none() {
                        self.fence = Some(FenceWhy::Link);
                        self.log(Event::FencingPeer);
                        self.out.push_back(Output::FencePeer);
                    }
                }
                self.consider_claims(now, true);
            }
        }
    }

    fn on_msg(&mut self, now: Time, msg: HaMsg) {
        match msg {
            HaMsg::Hello {
                version,
                ha_id,
                mode,
            } => {
                let reason = if version != PROTOCOL_VERSION {
                    Some(format!(
                        "protocol version {version} (ours is {PROTOCOL_VERSION})"
                    ))
                } else if mode != self.cfg.mode {
                    Some(format!(
                        "peer ha_mode {} differs from ours ({})",
                        mode.number(),
                        self.cfg.mode.number()
                    ))
                } else if ha_id == self.cfg.ha_id || !(1..=2).contains(&ha_id) {
                    Some(format!("peer ha_id {ha_id} (ours is {})", self.cfg.ha_id))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.log(Event::LinkRefused { reason });
                    return;
                }
                if self.link == 2 {
                    return;
                }
                self.set_link(2);
                self.peer_down = false;
                self.push_state(now);
                if self.read_lease_needed() {
                    self.send_probe(now);
                }
            }
            _ if self.link != 2 => {}
            HaMsg::Probe { at } => {
                let m = self.states_msg(Some(at), now);
                self.out.push_back(Output::SendPeer(m));
            }
            HaMsg::State {
                at,
                valid_for,
                luns,
            } => self.on_state(now, at, valid_for, &luns),
            HaMsg::Handover { lun, epoch } => self.on_handover(now, lun, epoch),
        }
    }

    /// Probes the peer if this node is secondary for some LUN; probing goes on every renew
    /// interval while the link is up.
    fn send_probe(&mut self, now: Time) {
        if self.luns.iter().any(|l| l.role != LunRole::Primary) {
            self.out
                .push_back(Output::SendPeer(HaMsg::Probe { at: now }));
        }
        self.set_timer(
            TimerKind::Probe,
            now.saturating_add(self.cfg.timing.renew_ms),
        );
    }

    fn on_state(&mut self, now: Time, at: Option<Time>, valid_for: u64, luns: &[LunStatus]) {
        let mut lease_for_peer = false;
        let mut lost_primary = false;
        for s in luns {
            let Some(i) = self.luns.iter().position(|l| l.lun == s.lun) else {
                continue;
            };
            let ours = self.luns[i].epoch;
            if s.epoch < ours {
                self.log(Event::StaleMessage {
                    epoch: s.epoch,
                    ours,
                });
                continue;
            }
            if s.primary {
                if self.luns[i].role == LunRole::Primary {
                    if s.epoch > ours {
                        self.step_down(now, i, "peer is primary at a newer epoch");
                    } else {
                        // Both primary at one epoch cannot happen under the automatic policy;
                        // keep ours and let the peer resolve it by the same rule.
                        continue;
                    }
                }
                if let LunRole::Claiming(c) = self.luns[i].role {
                    if !c.intent {
                        self.luns[i].role = LunRole::Secondary;
                    } else if at.is_some() && valid_for > 0 {
                        // The peer proves that it serves under a lease: give the claim up.
                        self.abort_claim(now, i, "the peer is primary");
                    }
                }
                self.luns[i].epoch = s.epoch;
                self.luns[i].served = self.luns[i].served.max(s.epoch);
                self.luns[i].peer_primary = true;
                lease_for_peer = true;
            } else {
                self.luns[i].epoch = s.epoch;
                if self.luns[i].peer_primary && s.epoch > 0 {
                    // The primary stepped down (lost its lease): take over without the start-up
                    // delay of a non-preferred node.
                    lost_primary = true;
                }
                self.luns[i].peer_primary = false;
            }
        }
        if self.automatic() {
            if let Some(at) = at {
                if lease_for_peer && valid_for > 0 {
                    let until = at
                        .saturating_add(valid_for)
                        .saturating_sub(self.cfg.timing.margin_ms);
                    if until > now {
                        let cur = self.timers[TimerKind::PeerLease.index()].unwrap_or(0);
                        if until > cur {
                            self.set_timer(TimerKind::PeerLease, until);
                        }
                    }
                }
            }
        }
        if !self.automatic() {
            // Manual and naive: the preferred node takes LUNs that have no primary when the
            // pair forms.
            for i in 0..self.luns.len() {
                let l = self.luns[i];
                if l.role == LunRole::Secondary
                    && !l.peer_primary
                    && self.preferred(&l)
                    && luns.iter().any(|s| s.lun == l.lun && !s.primary)
                {
                    self.become_primary(now, i, l.epoch.saturating_add(1));
                }
            }
        } else {
            self.consider_claims(now, lost_primary);
            self.consider_failback(now);
        }
    }

    fn on_handover(&mut self, now: Time, lun: Lun, epoch: u64) {
        let Some(i) = self.luns.iter().position(|l| l.lun == lun) else {
            return;
        };
        if epoch < self.luns[i].epoch {
            let ours = self.luns[i].epoch;
            self.log(Event::StaleMessage { epoch, ours });
            return;
        }
        if self.luns[i].role == LunRole::Primary {
            return;
        }
        self.luns[i].epoch = epoch;
        self.luns[i].served = self.luns[i].served.max(epoch);
        self.luns[i].peer_primary = false;
        if self.automatic() {
            self.luns[i].role = LunRole::Claiming(Claim {
                phase: ClaimPhase::Intent,
                epoch: 0,
                intent: false,
                must_fence: false,
                stale_seq: None,
                handover: true,
            });
            self.enter_intent(i);
        } else {
            self.become_primary(now, i, epoch.saturating_add(1));
        }
    }

    fn on_timer(&mut self, now: Time, kind: TimerKind) {
        match self.timers[kind.index()] {
            Some(t) if t <= now => self.timers[kind.index()] = None,
            _ => return,
        }
        match kind {
            TimerKind::Renew => {
                self.backoff = false;
                if self.owns_any() {
                    self.write_due = true;
                }
                self.consider_failback(now);
            }
            TimerKind::Lease => {
                if !self.lease_valid(now) {
                    self.lapse(now);
                }
            }
            TimerKind::Claim => {
                for i in 0..self.luns.len() {
                    if let LunRole::Claiming(mut c) = self.luns[i].role {
                        if let ClaimPhase::Wait { seq, until, next } = c.phase {
                            if next <= now {
                                c.phase = ClaimPhase::Recheck { seq, until };
                                self.luns[i].role = LunRole::Claiming(c);
                            }
                        }
                    }
                }
                if self.fence.is_none() && self.suspended {
                    self.fence = Some(FenceWhy::Link);
                    self.out.push_back(Output::FencePeer);
                }
                if self.retry_at.is_some_and(|t| t <= now) {
                    self.retry_at = None;
                    self.consider_claims(now, true);
                }
            }
            TimerKind::Probe => {
                if self.link == 2 && self.read_lease_needed() {
                    self.send_probe(now);
                }
            }
            TimerKind::PeerLease => {}
        }
    }

    fn enter_intent(&mut self, i: usize) {
        if let LunRole::Claiming(mut c) = self.luns[i].role {
            if c.intent {
                c.phase = ClaimPhase::Check;
            } else {
                c.phase = ClaimPhase::Intent;
                c.intent = true;
                c.epoch = self.luns[i].epoch.saturating_add(1);
            }
            self.luns[i].role = LunRole::Claiming(c);
        }
    }

    fn on_quorum(&mut self, now: Time, r: QuorumResult) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let me = self.cfg.ha_id;
        let peer = 3 - me.clamp(1, 2);
        match (p, r) {
            (Pending::ReadOwn, QuorumResult::ReadOk { slot, record }) if slot == me => {
                if let Some(rec) = record {
                    self.seq = rec.seq;
                    for l in self.luns.iter_mut() {
                        if let Some(s) = rec.lun(l.lun) {
                            l.epoch = l.epoch.max(s.epoch);
                            l.served = l.served.max(s.served);
                        }
                    }
                }
                self.join = Join::ReadPeer;
            }
            (Pending::ReadPeer { issued }, QuorumResult::ReadOk { slot, record })
                if slot == peer =>
            {
                let rec = record.unwrap_or_default();
                self.on_peer_slot(now, issued, &rec);
            }
            (Pending::Write { issued, record }, QuorumResult::WriteOk { slot }) if slot == me => {
                self.seq = self.seq.max(record.seq);
                let until = issued.saturating_add(self.cfg.timing.lease_ms);
                if now < until {
                    let cur = self.lease_until.filter(|&t| t > now);
                    let new = cur.map_or(until, |c| c.max(until));
                    self.lease_until = Some(new);
                    self.set_timer(TimerKind::Lease, new);
                }
                let leased = self.lease_valid(now);
                for i in 0..self.luns.len() {
                    let lun = self.luns[i].lun;
                    match self.luns[i].role {
                        LunRole::Claiming(mut c)
                            if c.phase == ClaimPhase::Intent && record.owns(lun) && leased =>
                        {
                            c.phase = ClaimPhase::Check;
                            self.luns[i].role = LunRole::Claiming(c);
                        }
                        LunRole::Secondary if self.luns[i].handing_over && !record.owns(lun) => {
                            self.luns[i].handing_over = false;
                            let epoch = self.luns[i].epoch;
                            if self.link == 2 {
                                // Handover first: a peer that saw the step-down before it could
                                // start an ordinary claim (and fence) before the Handover came.
                                self.out
                                    .push_back(Output::SendPeer(HaMsg::Handover { lun, epoch }));
                                self.push_state(now);
                            }
                            self.log(Event::HandoverSent { lun, epoch });
                        }
                        _ => {}
                    }
                }
            }
            (p, QuorumResult::Failed { reason, .. }) => {
                if let Pending::Write { record, .. } = &p {
                    // A failed write may still have landed: never write this heartbeat value
                    // again, or a peer watching the slot could take new content for old.
                    self.seq = self.seq.max(record.seq);
                }
                self.log(Event::QuorumFailed { reason });
                self.backoff = true;
                if self.timers[TimerKind::Renew.index()].is_none() {
                    self.set_timer(
                        TimerKind::Renew,
                        now.saturating_add(self.cfg.timing.renew_ms),
                    );
                }
            }
            (p, _) => {
                // A result that does not answer the outstanding operation: ignore it.
                self.pending = Some(p);
                return;
            }
        }
        if self.join == Join::ReadPeer && self.pending.is_none() {
            // Joining continues in drive().
        }
    }

    fn on_peer_slot(&mut self, now: Time, issued: Time, rec: &QuorumRecord) {
        for l in self.luns.iter_mut() {
            if let Some(s) = rec.lun(l.lun) {
                l.served = l.served.max(s.served);
            }
        }
        if self.join == Join::ReadPeer {
            self.join = Join::Done;
            self.log(Event::Joined { seq: self.seq });
            for l in self.luns.iter_mut() {
                if let Some(s) = rec.lun(l.lun) {
                    l.epoch = l.epoch.max(s.epoch);
                }
            }
            // Where the peer's slot shows ownership, this read already starts the claim wait.
            let phase = self.watch(now, rec.seq);
            for i in 0..self.luns.len() {
                if self.should_claim(i) && rec.owns(self.luns[i].lun) {
                    self.luns[i].role = LunRole::Claiming(Claim {
                        phase,
                        epoch: 0,
                        intent: false,
                        must_fence: true,
                        stale_seq: None,
                        handover: false,
                    });
                    let lun = self.luns[i].lun;
                    self.log(Event::ClaimStarted { lun });
                }
            }
            self.consider_claims(now, false);
            return;
        }
        for i in 0..self.luns.len() {
            let lun = self.luns[i].lun;
            let LunRole::Claiming(mut c) = self.luns[i].role else {
                continue;
            };
            let peer = rec.lun(lun);
            let peer_owns = peer.is_some_and(|p| p.own);
            let peer_epoch = peer.map_or(0, |p| p.epoch);
            match c.phase {
                ClaimPhase::Observe => {
                    self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                    if peer_epoch > 0 {
                        c.must_fence = true;
                    }
                    if peer_owns {
                        c.must_fence = true;
                        c.phase = self.watch(now, rec.seq);
                        self.luns[i].role = LunRole::Claiming(c);
                    } else {
                        self.luns[i].role = LunRole::Claiming(c);
                        self.enter_intent(i);
                    }
                }
                ClaimPhase::Recheck { seq, until } if issued < until && rec.seq == seq => {
                    // A poll before the wait is over: keep waiting.
                    let next = now.saturating_add(self.cfg.timing.renew_ms).min(until);
                    c.phase = ClaimPhase::Wait { seq, until, next };
                    self.luns[i].role = LunRole::Claiming(c);
                }
                ClaimPhase::Recheck { seq, until: _ } => {
                    if rec.seq == seq {
                        // Unchanged for a full claim wait: the peer's lease has certainly expired.
                        c.stale_seq = Some(seq);
                        self.luns[i].role = LunRole::Claiming(c);
                        if c.intent {
                            self.claim_ready(now, i, peer);
                        } else {
                            self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                            self.enter_intent(i);
                        }
                    } else if peer_owns {
                        self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                        // The peer is alive: watch its new heartbeat value from now on. (Over the
                        // link, a peer that proves its primacy ends the claim.)
                        c.phase = self.watch(now, rec.seq);
                        self.luns[i].role = LunRole::Claiming(c);
                    } else if c.intent {
                        self.claim_ready(now, i, peer);
                    } else {
                        self.luns[i].epoch = self.luns[i].epoch.max(peer_epoch);
                        self.enter_intent(i);
                    }
                }
                ClaimPhase::Check => {
                    if peer_owns && Some(rec.seq) != c.stale_seq {
                        c.must_fence = true;
                        if self.cfg.ha_id == 2 {
                            self.abort_claim(now, i, "concurrent claim by the peer");
                        } else {
                            // Keep the claim recorded and poll the peer's slot: it gives up and
                            // clears its claim, or its heartbeat stops for a full claim wait.
                            c.phase = self.watch(now, rec.seq);
                            self.luns[i].role = LunRole::Claiming(c);
                        }
                    } else {
                        self.claim_ready(now, i, peer);
                    }
                }
                _ => {}
            }
        }
    }

    /// Starts a claim wait on the peer's heartbeat value `seq`, seen by a read that returned at
    /// `now`; the slot is polled every renew interval.
    fn watch(&self, now: Time, seq: u64) -> ClaimPhase {
        let until = now.saturating_add(self.wait());
        ClaimPhase::Wait {
            seq,
            until,
            next: now.saturating_add(self.cfg.timing.renew_ms).min(until),
        }
    }

    /// The claim for LUN index `i` has passed its check against the peer's slot `peer`. If some
    /// controller served at the claim's epoch or later while the claim waited (a claim whose
    /// intent stalled), or the peer's slot still holds the LUN at such an epoch, the claim
    /// announces a fresh intent above it first: no epoch ever has two primaries.
    fn claim_ready(&mut self, now: Time, i: usize, peer: Option<SlotLun>) {
        let LunRole::Claiming(mut c) = self.luns[i].role else {
            return;
        };
        let mut bar = self.luns[i].served;
        if let Some(p) = peer {
            bar = bar.max(p.served);
            if p.own {
                bar = bar.max(p.epoch);
            }
        }
        if c.epoch <= bar {
            self.luns[i].epoch = self.luns[i].epoch.max(bar);
            c.intent = false;
            self.luns[i].role = LunRole::Claiming(c);
            self.enter_intent(i);
        } else {
            self.claim_checked(now, i);
        }
    }

    /// The claim for LUN index `i` has no rival: fence if needed, then serve.
    fn claim_checked(&mut self, now: Time, i: usize) {
        let LunRole::Claiming(mut c) = self.luns[i].role else {
            return;
        };
        if c.must_fence && !c.handover && self.cfg.fencing == Fencing::Agent && !self.peer_down {
            c.phase = ClaimPhase::Fence;
            self.luns[i].role = LunRole::Claiming(c);
            if self.fence.is_none() {
                self.fence = Some(FenceWhy::Claim);
                self.log(Event::FencingPeer);
                self.out.push_back(Output::FencePeer);
            }
        } else if self.lease_valid(now) {
            self.become_primary(now, i, c.epoch);
        } else {
            self.abort_claim(now, i, "lease expired during the claim");
        }
    }

    fn on_fence_result(&mut self, now: Time, ok: bool) {
        if self.fence.take().is_none() {
            return;
        }
        if ok {
            self.log(Event::PeerFenced);
            self.peer_down = true;
            for l in self.luns.iter_mut() {
                l.peer_primary = false;
            }
            self.timers[TimerKind::PeerLease.index()] = None;
            if self.suspended {
                self.suspended = false;
                for i in 0..self.luns.len() {
                    if self.luns[i].role == LunRole::Primary {
                        let lun = self.luns[i].lun;
                        self.out.push_back(Output::ResumeIo { lun });
                    }
                }
            }
            for i in 0..self.luns.len() {
                if let LunRole::Claiming(c) = self.luns[i].role {
                    if c.phase == ClaimPhase::Fence {
                        if self.lease_valid(now) {
                            self.become_primary(now, i, c.epoch);
                        } else {
                            self.abort_claim(now, i, "lease expired while fencing");
                        }
                    }
                }
            }
        } else {
            self.log(Event::FenceFailed);
            for i in 0..self.luns.len() {
                if let LunRole::Claiming(c) = self.luns[i].role {
                    if c.phase == ClaimPhase::Fence {
                        self.abort_claim(now, i, "fencing failed");
                    }
                }
            }
            if self.suspended {
                // Try again at the next claim timer.
                let at = now.saturating_add(self.cfg.timing.renew_ms);
                self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
            }
        }
    }

    fn on_admin(&mut self, now: Time, cmd: AdminCmd) {
        match cmd {
            AdminCmd::SetRole { lun, role } => {
                for l in self.luns.iter_mut() {
                    if lun.is_none_or(|x| x == l.lun) {
                        l.role_override = Some(role);
                    }
                }
                self.consider_claims(now, false);
            }
            AdminCmd::SetPrimary { lun } => {
                for i in 0..self.luns.len() {
                    if lun.is_some_and(|x| x != self.luns[i].lun) {
                        continue;
                    }
                    if self.automatic() {
                        self.luns[i].role_override = Some(Role::Primary);
                    } else if self.luns[i].role != LunRole::Primary {
                        let e = self.luns[i].epoch.saturating_add(1);
                        self.become_primary(now, i, e);
                    }
                }
                if self.automatic() {
                    self.consider_claims(now, false);
                }
            }
            AdminCmd::Switchover { lun } => {
                let Some(i) = self.luns.iter().position(|l| l.lun == lun) else {
                    self.log(Event::Refused {
                        what: format!("switchover of unknown LUN {lun}"),
                    });
                    return;
                };
                if self.luns[i].role != LunRole::Primary || self.link != 2 {
                    self.log(Event::Refused {
                        what: format!(
                            "switchover of LUN {lun}: this node is not primary or the link is down"
                        ),
                    });
                    return;
                }
                self.hand_over(now, i, "planned switchover");
            }
        }
    }

    /// Steps down from LUN index `i` and hands it to the peer (planned switchover, failback).
    fn hand_over(&mut self, now: Time, i: usize, reason: &str) {
        let lun = self.luns[i].lun;
        if self.automatic() {
            self.luns[i].handing_over = true;
        }
        self.step_down(now, i, reason);
        self.luns[i].role_override = Some(Role::Secondary);
        if self.automatic() {
            self.write_due = true;
        } else {
            let epoch = self.luns[i].epoch;
            self.out
                .push_back(Output::SendPeer(HaMsg::Handover { lun, epoch }));
            self.log(Event::HandoverSent { lun, epoch });
        }
    }

    /// Failback: a primary that is not the preferred controller of a LUN hands it to the
    /// peer once the link has been up for a full lease (the peer is back and healthy).
    fn consider_failback(&mut self, now: Time) {
        if !self.cfg.failback || !self.automatic() || self.link != 2 {
            return;
        }
        let since = *self.link_up_at.get_or_insert(now);
        if now < since.saturating_add(self.cfg.timing.lease_ms) {
            return;
        }
        for i in 0..self.luns.len() {
            let l = self.luns[i];
            if l.role == LunRole::Primary
                && !l.handing_over
                && !self.suspended
                && l.role_override.is_none()
                && self.cfg.role_for(l.lun) == Role::Secondary
            {
                self.hand_over(now, i, "failback to the preferred controller");
            }
        }
    }

    /// Issues the next quorum operation if none is outstanding, and re-arms the claim timer.
    fn drive(&mut self, now: Time) {
        if self.automatic() && self.cfg.ha_enabled() && self.pending.is_none() && !self.backoff {
            let me = self.cfg.ha_id;
            let peer = 3 - me.clamp(1, 2);
            let need_intent = self
                .luns
                .iter()
                .any(|l| matches!(l.role, LunRole::Claiming(c) if c.phase == ClaimPhase::Intent));
            let need_read = self.luns.iter().any(|l| {
                matches!(l.role, LunRole::Claiming(c) if matches!(
                    c.phase,
                    ClaimPhase::Observe | ClaimPhase::Check | ClaimPhase::Recheck { .. }
                ))
            });
            let handing_over = self.luns.iter().any(|l| l.handing_over);
            match self.join {
                Join::ReadOwn => {
                    self.pending = Some(Pending::ReadOwn);
                    self.out
                        .push_back(Output::Quorum(QuorumOp::Read { slot: me }));
                }
                Join::ReadPeer => {
                    self.pending = Some(Pending::ReadPeer { issued: now });
                    self.out
                        .push_back(Output::Quorum(QuorumOp::Read { slot: peer }));
                }
                Join::Done => {
                    if (self.write_due && self.owns_any())
                        || need_intent
                        || handing_over
                        || self.release_due
                    {
                        let record = self.my_record();
                        self.write_due = false;
                        self.release_due = false;
                        self.set_timer(
                            TimerKind::Renew,
                            now.saturating_add(self.cfg.timing.renew_ms),
                        );
                        self.out.push_back(Output::Quorum(QuorumOp::Write {
                            slot: me,
                            record: record.clone(),
                        }));
                        self.pending = Some(Pending::Write {
                            issued: now,
                            record,
                        });
                    } else if need_read {
                        self.pending = Some(Pending::ReadPeer { issued: now });
                        self.out
                            .push_back(Output::Quorum(QuorumOp::Read { slot: peer }));
                    }
                }
            }
        }
        // The claim timer: the earliest claim wait or retry.
        let mut next = self.retry_at;
        for l in &self.luns {
            if let LunRole::Claiming(c) = l.role {
                if let ClaimPhase::Wait { next: at, .. } = c.phase {
                    next = Some(next.map_or(at, |n: Time| n.min(at)));
                }
            }
        }
        match next {
            Some(t) => self.set_timer(TimerKind::Claim, t),
            None => self.timers[TimerKind::Claim.index()] = None,
        }
    }
}

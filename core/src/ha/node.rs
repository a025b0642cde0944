//! [`Node`]: one controller's HA state machine. The protocol is described in the module
//! documentation of [`crate::ha`].
//!
//! This file holds the node's state, its queries and the input dispatch; the rules live in the
//! children: `peer` (the link and the peer's messages), `quorum` (the arbiter's operations
//! and the lease), `claim` (the election), `admin` (administrative commands, failback) and
//! `disk` (the backend's health, and a controller fenced at the disk) and `stop` (a clean stop
//! that hands over instead of being fenced).
//! The children extend [`Node`] with private access to its fields; nothing here does I/O.

use super::types::*;
use crate::alua::{self, GroupStates, HaMode, LunView, PeerReach, PrimaryView};
use crate::sense::SenseCode;
use std::collections::VecDeque;
use std::sync::Arc;

mod admin;
mod claim;
mod disk;
mod peer;
mod quorum;
mod stop;

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
    /// A fence-confirmed takeover: the peer's heartbeat was seen stalled for the fence delay
    /// only, not for a full claim wait, so the fence (never the lease) proves that the peer
    /// stopped. Such a claim never serves without a successful fence.
    fence_proof: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LunRole {
    Secondary,
    Claiming(Claim),
    Primary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LunState {
    lun: LunNumber,
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
    /// Handed to the peer by a clean stop: the stop waits until the peer serves it.
    stop_handed: bool,
    /// A planned hand-over waits for the peer's [`HaMsg::Released`] (why, and the time by which
    /// every read lease this node promised has run out: `None` where no promise rests on a
    /// lease). This node still serves meanwhile.
    releasing: Option<(&'static str, Option<Time>)>,
    /// The peer released its primacy of this LUN up to this epoch ([`HaMsg::Release`]): its
    /// claims of primacy at that epoch or older no longer count.
    relinquished: u64,
    /// The peer released the LUN and a [`HaMsg::Handover`] is expected: no ordinary claim
    /// (which would fence) while the link is up.
    awaiting_handover: bool,
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

/// Where a node fenced at the disk ([`BackendHealth::Fenced`]) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DiskFence {
    /// Not fenced.
    No,
    /// Fenced; rejoining (reading both quorum slots, or under manual failover hearing the
    /// peer's state) before access may be restored.
    Rejoining,
    /// Rejoined as secondary; [`Output::RestoreDiskAccess`] was emitted and the node waits for
    /// `Backend(Ok)`.
    Rejoined,
}

/// Where a clean stop ([`Input::Stop`]) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Stopping {
    /// The quorum slot has been written owning nothing since the stop began.
    released: bool,
    /// Complete: [`HaMsg::Leaving`] was sent (if the link was up); nothing more happens here.
    done: bool,
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
    pub lun: LunNumber,
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
    /// The link went down because the peer closed it ([`Input::PeerLinkClosed`]), not by
    /// silence; cleared when the link comes up.
    link_closed: bool,
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
    /// Fenced at the disk by the peer: serves and claims nothing until rejoined and restored.
    disk_fence: DiskFence,
    /// A clean stop is under way.
    stopping: Option<Stopping>,
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
                stop_handed: false,
                releasing: None,
                relinquished: 0,
                awaiting_handover: false,
            })
            .collect();
        let automatic = config.policy == Policy::Automatic;
        let mut node = Node {
            link: if standalone { 0 } else { 1 },
            link_up_at: None,
            peer_down: false,
            link_closed: false,
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
            disk_fence: DiskFence::No,
            stopping: None,
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
    pub fn luns(&self) -> impl Iterator<Item = LunNumber> + '_ {
        self.luns.iter().map(|l| l.lun)
    }

    fn lun_state(&self, lun: LunNumber) -> Option<&LunState> {
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

    /// What this node knows about `lun`, as the ALUA table needs it. A node fenced at the disk
    /// knows no primary it could serve for: its own group is Transitioning, never active.
    pub fn lun_view(&self, lun: LunNumber) -> LunView {
        let primary = match self.lun_state(lun) {
            // (What the peer last said over the link: this node vouches for nothing here.)
            Some(l) if self.stopping.is_some() && l.role != LunRole::Primary => {
                PrimaryView::Leaving {
                    peer_primary: l.peer_primary && self.link == 2 && !self.peer_down,
                }
            }
            _ if self.fenced_at_disk() => PrimaryView::None,
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
    pub fn alua(&self, lun: LunNumber) -> GroupStates {
        alua::group_states(self.lun_view(lun))
    }

    /// This node holds the primary role for `lun` (it may be suspended; see [`Node::serving`]).
    pub fn is_primary(&self, lun: LunNumber) -> bool {
        self.lun_state(lun)
            .is_some_and(|l| l.role == LunRole::Primary)
    }

    /// This node may execute I/O for `lun` now: as primary with a valid lease and not suspended,
    /// or in mode 1 as a secondary whose primary is reachable and vouched for by a read lease.
    pub fn serving(&self, lun: LunNumber) -> bool {
        match self.lun_state(lun) {
            // (A stopping primary serves until its hand-over is released by the peer.)
            Some(l) if l.role == LunRole::Primary => !self.suspended,
            Some(l) => {
                self.stopping.is_none()
                    && l.role == LunRole::Secondary
                    && self.cfg.mode == HaMode::ActiveActiveShared
                    && self.backend_ok
                    && self.peer_primacy_valid(l)
            }
            None => false,
        }
    }

    /// The newest epoch this node knows for `lun`.
    pub fn epoch(&self, lun: LunNumber) -> u64 {
        self.lun_state(lun).map_or(0, |l| match l.role {
            LunRole::Claiming(c) if c.intent => l.epoch.max(c.epoch),
            _ => l.epoch,
        })
    }

    /// The ha_id of the primary for `lun` as this node knows it.
    pub fn primary_of(&self, lun: LunNumber) -> Option<u8> {
        match self.lun_view(lun).primary {
            PrimaryView::Local => Some(self.cfg.ha_id),
            PrimaryView::Peer | PrimaryView::Leaving { peer_primary: true } => {
                Some(peer_of(self.cfg.ha_id))
            }
            PrimaryView::None | PrimaryView::Leaving { .. } => None,
        }
    }

    /// The claim phase for `lun`, while this node claims it.
    pub fn claim_phase(&self, lun: LunNumber) -> Option<ClaimPhase> {
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

    /// This node was fenced at the disk ([`BackendHealth::Fenced`]) and its access has not been
    /// restored yet: it serves and claims nothing.
    pub fn fenced_at_disk(&self) -> bool {
        self.disk_fence != DiskFence::No
    }

    /// A clean stop ([`Input::Stop`]) has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The clean stop is complete: this node serves and owns nothing, its quorum slot says so,
    /// the LUNs it handed over are served by the peer (or the link is down), and the peer was
    /// told ([`HaMsg::Leaving`]) if it could be. The process may exit; no later input changes
    /// anything.
    pub fn stopped(&self) -> bool {
        self.stopping.is_some_and(|s| s.done)
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
            // Stand-alone: always primary; only the backend matters (a reservation conflict on
            // a controller without a peer is a failed backend, nothing to step down for).
            if let Input::Backend(h) = input {
                self.backend_ok = h == BackendHealth::Ok;
                self.log(Event::Backend {
                    ok: self.backend_ok,
                });
            }
            return;
        }
        if self.stopped() {
            // Stopped: nothing this node does may change what the peer was told.
            return;
        }
        let before: Vec<GroupStates> = self.luns.iter().map(|l| self.alua(l.lun)).collect();
        match input {
            Input::PeerLinkUp => self.on_link_up(now),
            Input::PeerLinkDown => self.on_link_down(now, false),
            Input::PeerLinkClosed => self.on_link_down(now, true),
            Input::PeerMsg(msg) => self.on_msg(now, msg),
            Input::Timer(kind) => self.on_timer(now, kind),
            Input::Quorum(r) => self.on_quorum(now, r),
            Input::Admin(cmd) => self.on_admin(now, cmd),
            Input::Backend(h) => self.on_backend(now, h),
            Input::FenceResult { ok } => self.on_fence_result(now, ok),
            Input::Stop => self.on_stop(now),
        }
        self.drive(now);
        self.advance_stop(now);
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

    /// How long a claim of LUN index `i` watches an owning peer's heartbeat before it fences
    /// instead of waiting out the peer's lease (a fence-confirmed takeover); `None` where the
    /// lease wait is the only way (no fencing agent, the link up).
    ///
    /// The delay decides fence races on a cut link, where both controllers live: it must be
    /// long enough for a live peer's next heartbeat to show (`renew_ms` plus `margin_ms` for the
    /// write's latency), and the controller that does not prefer the primary role waits one
    /// renew interval longer, so that where both claim, the preferred one fences first. A link
    /// the peer closed (its process exited) or a peer already fenced needs no delay.
    fn fence_delay(&self, i: usize) -> Option<u64> {
        if self.cfg.fencing == Fencing::None || self.link == 2 {
            return None;
        }
        if self.peer_down || self.link_closed {
            return Some(0);
        }
        let t = &self.cfg.timing;
        let base = t.renew_ms.saturating_add(t.margin_ms);
        Some(if self.preferred(&self.luns[i]) {
            base
        } else {
            base.saturating_add(t.renew_ms)
        })
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

    // ----- timers -----

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
                self.release_expired(now);
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
}

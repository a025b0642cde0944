//! The values that go in and out of [`super::Node`]: configuration, inputs, outputs, peer messages,
//! quorum records and log events.

use crate::alua::{AluaState, HaMode};
use crate::sense::SenseCode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A time on one controller's own monotonic clock, in milliseconds. The two controllers' clocks are
/// not comparable with each other; only durations measured on one clock mean anything.
pub type Time = u64;

pub use crate::LunNumber;

/// The HA id of the other controller of a pair (ids are 1 and 2; anything else is taken as the
/// nearer of the two).
pub fn peer_of(ha_id: u8) -> u8 {
    3 - ha_id.clamp(1, 2)
}

/// Version of the HA link protocol, checked at link login.
pub const PROTOCOL_VERSION: u16 = 2;

/// How a controller pair chooses a new primary after a failure.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Policy {
    /// CTL's behaviour: the preferred node becomes primary when the pair forms; after a failure the
    /// survivor stays Transitioning until an administrator names a primary (`AdminCmd::SetPrimary`).
    Manual,
    /// Election through the arbiter with leases and fencing (the default).
    #[default]
    Automatic,
    /// The survivor promotes itself as soon as the HA link drops, with no arbiter and no fencing.
    /// This is unsafe (a cut link gives two primaries) and exists only as the model checker's
    /// negative control: [`Config::validate`] refuses it, so the daemon never runs it.
    Naive,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Manual => "manual",
            Policy::Automatic => "automatic",
            Policy::Naive => "naive",
        }
    }
}

/// How a controller stops its peer before taking over work the peer might still be doing.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Fencing {
    /// A fencing agent (process kill, power-off command, SCSI reservation preemption) that the
    /// runtime runs on [`Output::FencePeer`] and reports with [`Input::FenceResult`].
    #[default]
    Agent,
    /// No fencing, configured explicitly. Automatic failover then rests on lease timing alone,
    /// which cannot stop writes a paused controller has already issued.
    None,
    /// An agent whose result is not awaited: a fence-confirmed takeover serves as soon as it has
    /// asked for the fence. Unsafe by design: the model's negative control
    /// (`--mutation takeover-before-fence`); [`Config::validate`] refuses it.
    Unawaited,
}

impl Fencing {
    pub fn name(self) -> &'static str {
        match self {
            Fencing::Agent => "agent",
            Fencing::None => "none",
            Fencing::Unawaited => "unawaited",
        }
    }
}

/// CTL's `ha_role`: which role a node prefers for a LUN.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Role {
    /// `ha_role=0`: this node prefers to be primary.
    #[default]
    Primary,
    /// `ha_role=1`: this node prefers to be secondary.
    Secondary,
}

/// Lease timing (milliseconds on each node's own clock). See the module documentation for the
/// safety argument; in short: a lease lasts `lease_ms` from the moment its renewal was *issued*, a
/// claimant waits `lease_ms + margin_ms` of unchanged heartbeat, and this is safe as long as the
/// two clocks' measurements of one interval differ by less than `margin_ms` (`drift_ms` is the
/// stated bound, and `margin_ms` must exceed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timing {
    /// How long a successful heartbeat write keeps the writer's lease, from the write's issue.
    pub lease_ms: u64,
    /// How often a lease holder (or claimant) writes its heartbeat; also the probe interval.
    pub renew_ms: u64,
    /// The stated clock-drift bound: the most by which the two controllers' clocks may disagree
    /// when they measure the same interval (of up to `lease_ms + margin_ms`).
    pub drift_ms: u64,
    /// Safety margin added to every wait that must outlast the peer's lease; must exceed
    /// `drift_ms`.
    pub margin_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ms: 4000,
            renew_ms: 1000,
            drift_ms: 200,
            margin_ms: 1000,
        }
    }
}

impl Timing {
    /// How long a claimant must see the holder's heartbeat unchanged before the holder's lease
    /// has certainly expired.
    pub fn claim_wait(&self) -> u64 {
        self.lease_ms.saturating_add(self.margin_ms)
    }
}

/// Per-LUN configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LunConfig {
    pub lun: LunNumber,
    /// Per-LUN override of the node's `ha_role`.
    pub role: Option<Role>,
}

/// A controller's HA configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Config {
    /// 1 or 2; 0 = HA off (stand-alone).
    pub ha_id: u8,
    pub mode: HaMode,
    pub policy: Policy,
    pub fencing: Fencing,
    /// `ha_role`: the role this node prefers for LUNs without an override.
    pub role: Role,
    pub luns: Vec<LunConfig>,
    pub timing: Timing,
    /// Automatic policy: a primary that is not the preferred controller of a LUN hands it back
    /// (a planned switchover) once the preferred peer has been reachable for a full lease.
    pub failback: bool,
}

impl Config {
    /// A stand-alone controller (HA off) serving `luns`.
    pub fn standalone(luns: &[LunNumber]) -> Config {
        Config {
            ha_id: 0,
            mode: HaMode::ActiveStandby,
            policy: Policy::Automatic,
            fencing: Fencing::Agent,
            role: Role::Primary,
            luns: luns
                .iter()
                .map(|&lun| LunConfig { lun, role: None })
                .collect(),
            timing: Timing::default(),
            failback: false,
        }
    }

    /// A node of an HA pair with default timing, automatic failover and agent fencing. Node 1
    /// prefers to be primary, node 2 secondary.
    pub fn pair(ha_id: u8, mode: HaMode, luns: &[LunNumber]) -> Config {
        Config {
            ha_id,
            mode,
            policy: Policy::Automatic,
            fencing: Fencing::Agent,
            role: if ha_id == 2 {
                Role::Secondary
            } else {
                Role::Primary
            },
            luns: luns
                .iter()
                .map(|&lun| LunConfig { lun, role: None })
                .collect(),
            timing: Timing::default(),
            failback: false,
        }
    }

    /// Whether HA is on (a peer is configured).
    pub fn ha_enabled(&self) -> bool {
        self.ha_id != 0
    }

    /// The role this node prefers for `lun`.
    pub fn role_for(&self, lun: LunNumber) -> Role {
        self.luns
            .iter()
            .find(|l| l.lun == lun)
            .and_then(|l| l.role)
            .unwrap_or(self.role)
    }

    /// Checks the configuration as the daemon must: refuses the naive policy, bad ids, duplicate
    /// LUNs and lease timing that the safety argument does not cover.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ha_id > 2 {
            return Err(ConfigError::BadHaId(self.ha_id));
        }
        if self.policy == Policy::Naive {
            return Err(ConfigError::NaivePolicy);
        }
        if self.fencing == Fencing::Unawaited {
            return Err(ConfigError::UnawaitedFence);
        }
        let mut seen: Vec<LunNumber> = self.luns.iter().map(|l| l.lun).collect();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateLun(w[0]));
        }
        let t = &self.timing;
        if t.renew_ms == 0 || t.renew_ms >= t.lease_ms {
            return Err(ConfigError::RenewNotBelowLease {
                renew_ms: t.renew_ms,
                lease_ms: t.lease_ms,
            });
        }
        if t.margin_ms <= t.drift_ms {
            return Err(ConfigError::MarginNotAboveDrift {
                margin_ms: t.margin_ms,
                drift_ms: t.drift_ms,
            });
        }
        if t.lease_ms <= t.margin_ms {
            return Err(ConfigError::LeaseNotAboveMargin {
                lease_ms: t.lease_ms,
                margin_ms: t.margin_ms,
            });
        }
        Ok(())
    }
}

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("ha_id must be 0 (HA off), 1 or 2, not {0}")]
    BadHaId(u8),
    #[error("failover policy \"naive\" is unsafe (split brain on a cut link) and exists only for the model checker")]
    NaivePolicy,
    #[error("a fence whose result is not awaited is the model's negative control, never a configuration")]
    UnawaitedFence,
    #[error("LUN {0} is configured twice")]
    DuplicateLun(LunNumber),
    #[error("renew interval ({renew_ms} ms) must be above 0 and below the lease ({lease_ms} ms)")]
    RenewNotBelowLease { renew_ms: u64, lease_ms: u64 },
    #[error("safety margin ({margin_ms} ms) must exceed the clock-drift bound ({drift_ms} ms)")]
    MarginNotAboveDrift { margin_ms: u64, drift_ms: u64 },
    #[error("lease ({lease_ms} ms) must exceed the safety margin ({margin_ms} ms)")]
    LeaseNotAboveMargin { lease_ms: u64, margin_ms: u64 },
}

/// The node's timers. At most one of each kind is set at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimerKind {
    /// Time for the next heartbeat write (lease renewal).
    Renew,
    /// The node's own lease ends: stop serving.
    Lease,
    /// A claim's wait for the holder's lease to expire, or the next claim attempt.
    Claim,
    /// Time to probe the peer again over the link.
    Probe,
    /// The read lease on the peer's primacy ends: stop reporting the peer as a live primary.
    PeerLease,
}

impl TimerKind {
    pub const ALL: [TimerKind; 5] = [
        TimerKind::Renew,
        TimerKind::Lease,
        TimerKind::Claim,
        TimerKind::Probe,
        TimerKind::PeerLease,
    ];

    pub(crate) fn index(self) -> usize {
        match self {
            TimerKind::Renew => 0,
            TimerKind::Lease => 1,
            TimerKind::Claim => 2,
            TimerKind::Probe => 3,
            TimerKind::PeerLease => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimerKind::Renew => "renew",
            TimerKind::Lease => "lease",
            TimerKind::Claim => "claim",
            TimerKind::Probe => "probe",
            TimerKind::PeerLease => "peer-lease",
        }
    }
}

/// One LUN's entry in a quorum slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SlotLun {
    pub lun: LunNumber,
    /// The newest epoch the writer knows for the LUN (its claim's epoch while it claims).
    pub epoch: u64,
    /// The writer claims or holds the LUN.
    pub own: bool,
    /// The newest epoch at which the writer knows a primary served.
    #[serde(default)]
    pub served: u64,
}

/// The content of one node's slot in the quorum area (one sector, written atomically).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuorumRecord {
    /// Heartbeat counter: every write of the slot carries a larger value.
    pub seq: u64,
    pub luns: Vec<SlotLun>,
}

impl QuorumRecord {
    pub fn lun(&self, lun: LunNumber) -> Option<SlotLun> {
        self.luns.iter().copied().find(|l| l.lun == lun)
    }

    /// Whether the record claims or holds `lun`.
    pub fn owns(&self, lun: LunNumber) -> bool {
        self.lun(lun).is_some_and(|l| l.own)
    }
}

/// An operation on the arbiter. Slots are numbered by `ha_id` (1 and 2); each node writes only its
/// own slot and reads both. Reads and writes of one slot are atomic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuorumOp {
    Read { slot: u8 },
    Write { slot: u8, record: QuorumRecord },
}

/// The result of a [`QuorumOp`]. A node has at most one operation outstanding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuorumResult {
    /// `record` is `None` for a slot that was never written.
    ReadOk {
        slot: u8,
        record: Option<QuorumRecord>,
    },
    WriteOk {
        slot: u8,
    },
    Failed {
        slot: u8,
        reason: String,
    },
}

/// One LUN in a [`HaMsg::State`] message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LunStatus {
    pub lun: LunNumber,
    pub epoch: u64,
    pub primary: bool,
}

/// A message over the HA link.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HaMsg {
    /// Link login, sent by both ends when the connection comes up.
    Hello {
        version: u16,
        ha_id: u8,
        mode: HaMode,
    },
    /// "Tell me your roles and how long your lease surely lasts"; `at` is the sender's clock.
    Probe { at: Time },
    /// The sender's roles. As the answer to a probe, `at` echoes the probe's time and
    /// `valid_for` is how long the sender's lease surely lasts from the moment of the answer (on
    /// the sender's clock; `u64::MAX` when roles do not rest on a lease). Sent unasked with
    /// `at: None` whenever the sender's roles change.
    State {
        at: Option<Time>,
        valid_for: u64,
        luns: Vec<LunStatus>,
    },
    /// Planned switchover: the sender stopped serving `lun` and recorded that in the quorum area;
    /// the receiver may take the LUN at `epoch` without waiting for a lease to expire.
    Handover { lun: LunNumber, epoch: u64 },
    /// Before a planned hand-over (switchover, failback, a clean stop) the primary asks the
    /// peer to stop relying on its primacy of `lun` at `epoch`: the peer's read lease (its
    /// Active/Non-optimized report) rests on a promise the primary cannot take back by itself.
    /// The primary keeps serving until [`HaMsg::Released`] arrives, or until every promise it
    /// made has run out.
    Release { lun: LunNumber, epoch: u64 },
    /// The answer to [`HaMsg::Release`]: the sender no longer counts on the peer's primacy of
    /// `lun` at `epoch` (it reports Transitioning and waits for the Handover).
    Released { lun: LunNumber, epoch: u64 },
    /// The sender is stopping cleanly ([`Input::Stop`]): it serves nothing, has drained its I/O
    /// (as a mode 1 secondary it holds no grant it could still use), has recorded in its quorum
    /// slot that it owns nothing, and will not touch the backing devices again in this run. The
    /// receiver counts the peer as down without fencing it.
    Leaving,
}

/// Health of the backing store, reported by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendHealth {
    /// The backing devices serve this controller's I/O. After [`BackendHealth::Fenced`] it
    /// counts only once the node has asked for it with [`Output::RestoreDiskAccess`].
    Ok,
    Failed,
    /// The backing device refused this controller's I/O with a reservation conflict: the peer
    /// fenced it at the disk. The node steps down from every LUN at once, serves nothing, claims
    /// nothing, and leaves that state only through the join path (it reads both quorum slots
    /// again and rejoins as secondary, then asks for [`Output::RestoreDiskAccess`]).
    Fenced,
}

/// Administrative commands (`duetctl role`, `duetctl switchover`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdminCmd {
    /// Manual policy: make this node primary for `lun` (all LUNs if `None`) now, as CTL's
    /// `ha_role=0` does. The administrator vouches that the peer is not serving.
    SetPrimary { lun: Option<LunNumber> },
    /// Change the preferred role (for one LUN, or the node default).
    SetRole { lun: Option<LunNumber>, role: Role },
    /// Planned switchover: hand `lun` over to the peer over the link, with no lease wait.
    Switchover { lun: LunNumber },
}

/// An input to [`super::Node::handle`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    PeerLinkUp,
    /// The HA link fell silent: nothing arrived from the peer for `dead_after_ms`. The peer may
    /// be dead, paused, or alive behind a cut network.
    PeerLinkDown,
    /// The peer's end closed the HA link (FIN or RST, the connection ended): most likely its
    /// process exited. Otherwise as [`Input::PeerLinkDown`]; a claim against an owner may fence
    /// without a fence delay (see the module documentation of [`crate::ha`]).
    PeerLinkClosed,
    PeerMsg(HaMsg),
    Timer(TimerKind),
    Quorum(QuorumResult),
    Admin(AdminCmd),
    Backend(BackendHealth),
    FenceResult {
        ok: bool,
    },
    /// The controller is stopping (SIGTERM, `duetctl shutdown`): hand every LUN it serves to a
    /// live peer, release the rest, drain, record the release in the quorum slot, then say
    /// [`HaMsg::Leaving`]. [`super::Node::stopped`] tells when the process may exit.
    Stop,
}

/// An output of the node, taken with [`super::Node::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Output {
    SendPeer(HaMsg),
    Quorum(QuorumOp),
    SetTimer {
        kind: TimerKind,
        at: Time,
    },
    AluaChanged {
        lun: LunNumber,
        local: AluaState,
        peer: AluaState,
    },
    RaiseUa {
        lun: LunNumber,
        sense: SenseCode,
    },
    /// Stop the peer controller for good (kill, power off, preempt its reservation), then report
    /// with [`Input::FenceResult`].
    FencePeer,
    /// Stop executing I/O for `lun` (drain what is in flight).
    FenceIo {
        lun: LunNumber,
    },
    /// I/O for `lun` may run here again.
    ResumeIo {
        lun: LunNumber,
    },
    /// This node was fenced at the disk ([`BackendHealth::Fenced`]) and has since rejoined as
    /// secondary: it knows the epochs the peer's claim started. Its own access to the backing
    /// devices may be restored now (the `scsi-pr` agent registers this controller's key again;
    /// other agents have nothing to restore). Answer with `Input::Backend(BackendHealth::Ok)`
    /// once restored; until then the node stays fenced.
    RestoreDiskAccess,
    Log(Event),
}

/// Something worth a log line, with CTL's wording where CTL has one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    LinkChanged {
        from: u8,
        to: u8,
    },
    LinkRefused {
        reason: String,
    },
    BecamePrimary {
        lun: LunNumber,
        epoch: u64,
    },
    LostPrimary {
        lun: LunNumber,
        epoch: u64,
        reason: String,
    },
    ClaimStarted {
        lun: LunNumber,
    },
    ClaimAborted {
        lun: LunNumber,
        reason: String,
    },
    LeaseExpired,
    QuorumFailed {
        reason: String,
    },
    FencingPeer,
    PeerFenced,
    FenceFailed,
    StaleMessage {
        epoch: u64,
        ours: u64,
    },
    Joined {
        seq: u64,
    },
    HandoverSent {
        lun: LunNumber,
        epoch: u64,
    },
    Refused {
        what: String,
    },
    Backend {
        ok: bool,
    },
    /// The backing device refused I/O with a reservation conflict: stepping down everywhere.
    FencedAtDisk,
    /// Rejoined as secondary after a fence at the disk: access may be restored.
    RejoinedAfterFence,
    /// This controller is stopping cleanly: handing over or releasing every LUN.
    Stopping,
    /// The clean stop is complete: nothing is served or owned here; the process may exit.
    Stopped {
        peer_told: bool,
    },
    /// The peer is stopping cleanly and said so: it is counted down, without a fence.
    PeerLeaving,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::LinkChanged { from, to } => {
                write!(f, "HA link status changed from {from} to {to}")
            }
            Event::LinkRefused { reason } => write!(f, "HA link login refused: {reason}"),
            Event::BecamePrimary { lun, epoch } => {
                write!(f, "LUN {lun}: became primary (epoch {epoch})")
            }
            Event::LostPrimary { lun, epoch, reason } => {
                write!(f, "LUN {lun}: no longer primary (epoch {epoch}): {reason}")
            }
            Event::ClaimStarted { lun } => write!(f, "LUN {lun}: claiming the primary role"),
            Event::ClaimAborted { lun, reason } => {
                write!(f, "LUN {lun}: claim abandoned: {reason}")
            }
            Event::LeaseExpired => write!(f, "lease expired before it could be renewed"),
            Event::QuorumFailed { reason } => write!(f, "quorum I/O failed: {reason}"),
            Event::FencingPeer => write!(f, "fencing the peer controller"),
            Event::PeerFenced => write!(f, "peer controller fenced"),
            Event::FenceFailed => write!(f, "fencing the peer controller failed"),
            Event::StaleMessage { epoch, ours } => {
                write!(f, "ignored a message of epoch {epoch} (ours is {ours})")
            }
            Event::Joined { seq } => write!(f, "joined the quorum area (heartbeat {seq})"),
            Event::HandoverSent { lun, epoch } => {
                write!(f, "LUN {lun}: handed over to the peer (epoch {epoch})")
            }
            Event::Refused { what } => write!(f, "refused: {what}"),
            Event::Backend { ok } => {
                write!(f, "backend {}", if *ok { "healthy" } else { "failed" })
            }
            Event::FencedAtDisk => write!(
                f,
                "fenced at the disk: the backing device refused I/O (reservation conflict); \
                 stepping down from every LUN until rejoined"
            ),
            Event::RejoinedAfterFence => write!(
                f,
                "rejoined as secondary after the fence at the disk: access to the backing \
                 devices may be restored"
            ),
            Event::Stopping => write!(
                f,
                "stopping: handing every LUN this controller serves to the peer, releasing the rest"
            ),
            Event::Stopped { peer_told } => {
                if *peer_told {
                    write!(
                        f,
                        "stopped cleanly: nothing served or owned here; the peer knows"
                    )
                } else {
                    write!(
                        f,
                        "stopped cleanly: nothing served or owned here; the quorum slot says so \
                         (the peer was not reachable)"
                    )
                }
            }
            Event::PeerLeaving => write!(
                f,
                "the peer controller is stopping cleanly: counted down, no fence needed"
            ),
        }
    }
}

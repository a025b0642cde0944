//! The per-controller HA state machine (ARCHITECTURE.md §2.1-2.2).
//!
//! One [`Node`] per controller. It is pure: the runtime feeds it [`Input`]s with the time of its
//! own monotonic clock, drains [`Output`]s with [`Node::poll_output`], and calls it again at
//! [`Node::next_timeout`]. The model checker (`duet-model`) runs the very same `Node`.
//!
//! # Concepts
//! - `ha_id` 1 or 2 (0: HA off, stand-alone: primary for every LUN, Active/Optimized).
//! - `ha_mode` ([`HaMode`](crate::alua::HaMode)) 0, 1 or 2; `ha_role` ([`Role`]) per node with a
//!   per-LUN override: the preferred role.
//! - Link state 0/1/2 as CTL's `ha_link`. The link comes up with a login ([`HaMsg::Hello`]) that
//!   refuses another protocol version, another `ha_mode` or an equal `ha_id`; a refusal is logged
//!   and the link stays at 1.
//! - Epochs: every change of primary for a LUN starts a larger epoch. Peer messages about a LUN
//!   carrying an older epoch than the receiver's are ignored.
//! - The ALUA picture is never stored: [`Node::alua`] derives it from [`Node::lun_view`] through
//!   [`crate::alua::group_states`]. Whenever it changes during `handle`, the node emits
//!   [`Output::AluaChanged`] and [`Output::RaiseUa`] with 2A/06.
//!
//! # Policies
//! - [`Policy::Manual`] (CTL): when the pair forms, the node that prefers the primary role takes
//!   every LUN that has no primary. After a failure the survivor reports Transitioning until an
//!   administrator sends [`AdminCmd::SetPrimary`].
//! - [`Policy::Automatic`] (default): the election below.
//! - [`Policy::Naive`]: the secondary promotes itself when the link drops. Unsafe by design; the
//!   model's negative control; [`Config::validate`] refuses it.
//!
//! # The arbiter
//! A quorum area on the shared storage, reached through [`QuorumOp`] / [`QuorumResult`]: two slots,
//! numbered by `ha_id`, each written only by its node, each read and written atomically. A node has
//! at most one operation outstanding. A slot holds a [`QuorumRecord`]: a heartbeat counter `seq`
//! (larger on every write attempt: a write reported failed may still have landed, so its value is
//! never written again) and, per LUN, the newest epoch the writer knows, whether it owns the LUN
//! (claims or holds it) and the newest epoch at which it knows a primary served. Operations may
//! take any time or fail. Nothing else is assumed of the
//! arbiter, so a witness process or an etcd lease could stand behind the same two operations.
//!
//! # The automatic election
//! **Lease.** A node that owns any LUN writes its slot every `renew_ms`. A write *issued* at time
//! `t` (own clock) that succeeds before `t + lease_ms` gives the node a lease until
//! `t + lease_ms`; a write that comes back later gives nothing. The node serves as primary only
//! while it holds a lease: the [`TimerKind::Lease`] timer fires at the lease's end and the node
//! stops serving (`FenceIo`), drops its claims, writes its slot without them as soon as quorum
//! I/O works again, and claims again from scratch.
//!
//! **Claim** of a LUN by node X against peer Y:
//! 1. *Observe*: read Y's slot. If Y owns the LUN, remember Y's `seq` and the time the read
//!    returned, `t0`, and poll Y's slot every `renew_ms`. A changed `seq` with the LUN still owned
//!    means Y is alive: the wait starts again from that read. A read *issued* at or after
//!    `t0 + lease_ms + margin_ms` (own clock) that still shows `seq` proves that Y's lease has
//!    expired (below). A slot that no longer owns the LUN ends the wait at once.
//!    *Fence-confirmed takeover*: with [`Fencing::Agent`] and the link down, X does not wait
//!    out the lease. It watches Y's heartbeat for the *fence delay* only (`renew_ms +
//!    margin_ms`, one `renew_ms` more on the controller that does not prefer the primary role;
//!    none when Y closed the link, [`Input::PeerLinkClosed`], or is already fenced) and, if
//!    `seq` did not move, goes on to step 2 with a claim that can only be completed by a
//!    successful fence in step 4. A heartbeat that moves makes it a live owner: from then on the
//!    full lease wait applies, so a live primary behind a cut link is never fenced for a
//!    missed heartbeat or two.
//! 2. *Intent*: write X's slot with the LUN owned, at epoch = newest known + 1. This write must
//!    succeed within the lease rule (it starts X's lease).
//! 3. *Check*: read Y's slot again. If Y now owns the LUN with a `seq` other than the one proven
//!    stale in step 1, Y claims concurrently: node 2 gives up (its next write clears its claim)
//!    and tries again after a claim wait; node 1 keeps its claim and waits as in step 1. Of two
//!    concurrent claimants at most one passes this check: each wrote its intent before reading
//!    the other's slot, so the later reader sees the earlier writer's intent.
//! 4. *Fence*: unless no epoch was ever started (a fresh pair) and Y never showed a claim, with
//!    [`Fencing::Agent`] X emits [`Output::FencePeer`] and waits for `FenceResult { ok: true }`.
//!    A failed fence abandons the claim.
//! 5. *Serve*: if X still holds its lease, X is primary at the new epoch (`ResumeIo`), and says so
//!    over the link. Before 4, if some controller served at the claim's epoch or later while the
//!    claim waited (learned from the link, a Handover, or a slot's served epoch; or Y's slot
//!    still owns the LUN at such an epoch), X goes back to step 2 with an epoch above it: a claim
//!    whose intent write stalled never reuses an epoch.
//!
//! When claims start: the node that prefers the primary role claims as soon as it has joined
//! (and whenever no primary is known: link down, the primary reported that it stepped down, its
//! own lease lapsed); the other node waits one claim wait first, unless the peer's slot already
//! shows ownership (the wait on its heartbeat is delay enough) or the primary reported over the
//! link that it lost its role. A node that learns over the link, with a read lease, that the peer
//! serves gives its claim up.
//!
//! A planned switchover ([`AdminCmd::Switchover`]) needs no lease wait. In modes 1 and 2 the
//! secondary reports itself active on a read lease the primary granted, a promise the primary
//! cannot take back alone: so the primary first sends [`HaMsg::Release`] and keeps serving until
//! the peer answers [`HaMsg::Released`] (it no longer counts on the primary and waits for the
//! hand-over), or until every read lease it promised has run out (its own lease's end when it
//! asked). Then it stops serving, writes its slot without the LUN and sends [`HaMsg::Handover`];
//! the receiver claims from step 2 without fencing, and asks for a read lease at once when it
//! hears the new primary. With [`Config::failback`], a primary that is not the preferred
//! controller of a LUN hands it over the same way once the link has been up for a full lease.
//!
//! **A clean stop** ([`Input::Stop`]: SIGTERM, `systemctl stop`) is a planned switchover of every
//! LUN the node serves, followed by a drain, a slot write that owns nothing and
//! [`HaMsg::Leaving`]; the receiver counts the peer down without a fence (a mode 1 primary does
//! not suspend I/O when the link then closes). The runtime bounds the stop; a stop that does not
//! complete in time ends as a crash (see `node/stop.rs`).
//!
//! **Why a stale heartbeat means an expired lease.** Let `D = drift_ms` bound how much the two
//! clocks' measurements of one interval (up to `lease_ms + margin_ms` long) may differ, and let
//! `margin_ms > D`. Y's last successful write was issued no later than X's observing read
//! returned, at `t0`. X's second read is issued at `t0 + lease_ms + margin_ms` on X's clock; by
//! then at least `lease_ms + margin_ms - D > lease_ms` has passed on Y's clock since that write was
//! issued, so Y's lease from it is over and Y has stopped serving. Any later write of Y that
//! succeeded would have landed before X's second read and changed `seq`; one that lands later
//! comes back after Y's lease ended and gives Y nothing.
//!
//! **Why a fence may replace the wait.** A fence reported `ok` means Y can no longer reach the
//! backend: a process or power agent has stopped it, a disk-level agent has preempted its key so
//! that the device refuses its reads and writes and aborted what it had queued. From then on
//! nothing Y does reaches the disk, whatever its lease says, so the lease wait buys nothing.
//! Y, if alive (fenced at the disk), may still believe it serves until it tries I/O: every data
//! command it starts is refused with a retryable sense (Transitioning), its quorum writes are
//! refused so its lease runs out, and its first refused I/O makes it step down
//! ([`BackendHealth::Fenced`]). A claim that has not seen the fence succeed never serves: a
//! failed fence abandons it and the claim is tried again (the lease wait is then the path, as
//! the fence delay only orders who fences first). Fence races on a cut link: both controllers
//! live and keep writing their slots, so neither claim gets past its fence delay unless the
//! other's heartbeat really stopped; where both do reach their fence (both slots stalled), the
//! delays order them, and the first fence disables the other: a killed controller fences
//! nobody, and a disk-fenced one's own preemption is refused by the device.
//!
//! **Why fencing as well.** The lease stops a controller from *starting* I/O; it cannot stop a
//! write the controller issued before it was paused (a stopped process, a stalled kernel), which
//! may reach the disk arbitrarily late. So before serving, a claimant fences the peer. In mode 1
//! the secondary writes to the backend too (under grants from the primary), so a primary that
//! loses the link to such a secondary suspends I/O and fences it. With [`Fencing::None`]
//! (explicitly configured) the lease is all there is, and the model shows the stale write that
//! this accepts.
//!
//! **Read lease on the peer's primacy.** A secondary reports itself Active/Non-optimized only while
//! it knows that the primary serves. It probes the primary every `renew_ms` ([`HaMsg::Probe`] with
//! its clock `at`); the primary answers with [`HaMsg::State`], echoing `at` and `valid_for`, the
//! time left on its lease. The secondary trusts the primary until `at + valid_for - margin_ms`
//! (own clock), which ends before the primary's lease can end.
//!
//! **Start and restart.** A fresh [`Node::new`] (a restart loses all volatile state) is secondary
//! for every LUN. Under the automatic policy it reads its own slot (its heartbeat counter and the
//! epochs it knew) and the peer's slot before anything else, and only then claims: the node that
//! prefers the primary role at once, the other after one claim wait.
//!
//! # Assumptions
//! - Clock drift: two clocks measure an interval of up to `lease_ms + margin_ms` within
//!   `drift_ms` of each other, and `margin_ms > drift_ms` ([`Config::validate`]). With a rate
//!   bound ρ this means `drift_ms >= 2ρ (lease_ms + margin_ms)`.
//! - Timers fire on time: the runtime delivers [`Input::Timer`] for a deadline before its clock
//!   moves past it (a stalled node is covered by fencing, not by timers).
//! - The quorum area's slots are read and written atomically; operations may be slow or fail.
//! - A fence reported `ok` has stopped the peer's access to the backend and discarded the writes
//!   it had in flight: it killed the peer, or preempted its key at the disk, so that the device
//!   refuses the peer's I/O (including its quorum writes) until its access is restored. A fenced
//!   controller's own fence request fails.

pub mod grant;
mod node;
mod types;

pub use grant::{Grantee, Grantor};
pub use node::{ClaimPhase, HaStatus, LunStatusView, Node};
pub use types::*;

#[cfg(test)]
mod tests;

//! A clean stop of [`Node`] ([`Input::Stop`]: SIGTERM, `duetctl shutdown`): a stop is a planned
//! switchover, never a crash the peer has to fence.
//!
//! 1. Every LUN this node serves is handed to a live peer by the planned switchover's own path
//!    (`hand_over`: step down, record the release in the quorum slot, then
//!    [`HaMsg::Handover`]); with no live peer it just steps down. Claims are abandoned, and every
//!    LUN's I/O is fenced here ([`Output::FenceIo`] drains what is in flight, including a mode 1
//!    secondary's I/O under the primary's grants). From now on the node claims nothing, takes
//!    no hand-over and serves nothing; its port groups report Unavailable.
//! 2. It writes its quorum slot owning nothing (automatic policy), retried until it succeeds,
//!    so that a later start of the peer finds no ownership to wait out.
//! 3. It waits until the peer says it serves every LUN handed to it (or the link is gone).
//! 4. It sends [`HaMsg::Leaving`] (if the link is up) and is [`Node::stopped`]: it ignores every
//!    later input, and the process may exit. Nothing it had in flight can reach the disk after
//!    the message, because step 1's fences came before it in the output queue.
//!
//! The receiver of `Leaving` counts the peer down without a fence (a mode 1 primary does not
//! suspend I/O when the link then closes) and claims what nobody serves with no lease wait: the
//! leaving node's slot owns nothing. A stop that cannot complete (the quorum area unreachable,
//! the peer never taking over) is bounded by the runtime, which then exits as after a crash.
//!
//! Touches only the node's own fields and its output queue.

use super::*;

impl Node {
    pub(super) fn on_stop(&mut self, now: Time) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Stopping {
            // Without the automatic policy there is no quorum slot to release.
            released: !self.automatic(),
            done: false,
        });
        self.log(Event::Stopping);
        let peer_live = self.link == 2 && !self.peer_down && !self.suspended;
        for i in 0..self.luns.len() {
            let lun = self.luns[i].lun;
            match self.luns[i].role {
                LunRole::Primary if peer_live => {
                    self.luns[i].stop_handed = true;
                    if self.luns[i].releasing.is_none() && !self.luns[i].handing_over {
                        self.hand_over(now, i, "controller stopping");
                    }
                }
                LunRole::Primary => {
                    if self.automatic() {
                        self.release_due = true;
                    }
                    self.step_down(now, i, "controller stopping");
                }
                LunRole::Claiming(_) => {
                    self.abort_claim(now, i, "controller stopping");
                    self.out.push_back(Output::FenceIo { lun });
                }
                LunRole::Secondary => {
                    // A switchover already under way counts as handed over by the stop.
                    self.luns[i].stop_handed = self.luns[i].handing_over && peer_live;
                    self.luns[i].awaiting_handover = false;
                    self.out.push_back(Output::FenceIo { lun });
                }
            }
        }
        self.retry_at = None;
    }

    /// A quorum write owning nothing has landed during the stop.
    pub(super) fn stop_slot_written(&mut self, record: &QuorumRecord) {
        if let Some(st) = self.stopping.as_mut() {
            if !record.luns.iter().any(|l| l.own) {
                st.released = true;
            }
        }
    }

    /// Moves a clean stop on after every input: asks for the release write while it is
    /// missing, and completes the stop once nothing is left to wait for.
    pub(super) fn advance_stop(&mut self, now: Time) {
        let Some(st) = self.stopping else {
            return;
        };
        if st.done {
            return;
        }
        if !st.released
            && !self.owns_any()
            && self.join == Join::Done
            && self.pending.is_none()
            && !self.release_due
            && !self.luns.iter().any(|l| l.handing_over)
        {
            // (Also after a failed release write, which may or may not have landed.)
            self.release_due = true;
            self.drive(now);
        }
        let busy = self
            .luns
            .iter()
            .any(|l| l.role != LunRole::Secondary || l.handing_over);
        if busy || !st.released {
            return;
        }
        let link = self.link == 2 && !self.peer_down;
        if link && self.luns.iter().any(|l| l.stop_handed && !l.peer_primary) {
            return;
        }
        if link {
            self.out.push_back(Output::SendPeer(HaMsg::Leaving));
        }
        self.stopping = Some(Stopping {
            released: true,
            done: true,
        });
        self.log(Event::Stopped { peer_told: link });
        for t in self.timers.iter_mut() {
            *t = None;
        }
    }

    /// The peer said it stops cleanly: it serves nothing, has drained its I/O and released its
    /// slot. Count it down (no fence, no suspension when the link closes) and take what nobody
    /// serves.
    pub(super) fn on_peer_leaving(&mut self, now: Time) {
        self.log(Event::PeerLeaving);
        self.peer_down = true;
        for l in self.luns.iter_mut() {
            l.peer_primary = false;
        }
        self.timers[TimerKind::PeerLease.index()] = None;
        self.timers[TimerKind::Probe.index()] = None;
        self.consider_claims(now, true);
    }
}

//! Administration of [`Node`]: [`AdminCmd`]s (set primary, switchover, role overrides) and the
//! planned hand-over they and failback ([`Config::failback`]) use.
//! Touches only the node's own fields and its output queue.

use super::*;

impl Node {
    pub(super) fn on_admin(&mut self, now: Time, cmd: AdminCmd) {
        if self.stopping.is_some() {
            self.log(Event::Refused {
                what: format!("{cmd:?}: this controller is stopping"),
            });
            return;
        }
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
                    } else if self.fenced_at_disk() {
                        let lun = self.luns[i].lun;
                        self.log(Event::Refused {
                            what: format!(
                                "primary role for LUN {lun}: this controller is fenced at the disk"
                            ),
                        });
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

    /// Hands LUN index `i` to the peer (planned switchover, failback, clean stop): first asks
    /// the peer to stop relying on this node's primacy ([`HaMsg::Release`]), serving meanwhile;
    /// the hand-over proper follows the answer ([`Node::finish_hand_over`]).
    pub(super) fn hand_over(&mut self, now: Time, i: usize, reason: &'static str) {
        let l = self.luns[i];
        if l.role != LunRole::Primary || l.handing_over || l.releasing.is_some() {
            return;
        }
        // In ha_mode 0 the secondary is Standby: it counts on nothing and needs no release.
        if self.link != 2 || self.peer_down || self.cfg.mode == HaMode::ActiveStandby {
            self.finish_hand_over(now, i, reason);
            return;
        }
        // Every read lease this node has promised ends by its own lease's current end (probe
        // answers promise no more, and none at all from now on: see `states_msg`).
        let deadline = if self.read_lease_needed() {
            Some(self.lease_until.unwrap_or(now))
        } else {
            None
        };
        self.luns[i].releasing = Some((reason, deadline));
        self.out.push_back(Output::SendPeer(HaMsg::Release {
            lun: l.lun,
            epoch: l.epoch,
        }));
    }

    /// The peer answered [`HaMsg::Release`].
    pub(super) fn on_released(&mut self, now: Time, lun: LunNumber, epoch: u64) {
        let Some(i) = self.luns.iter().position(|l| l.lun == lun) else {
            return;
        };
        if let Some((reason, _)) = self.luns[i].releasing {
            if self.luns[i].epoch == epoch {
                self.finish_hand_over(now, i, reason);
            }
        }
    }

    /// Hand-overs whose peer did not answer: once every read lease promised has run out, the
    /// peer no longer counts on this node's primacy anyway.
    pub(super) fn release_expired(&mut self, now: Time) {
        for i in 0..self.luns.len() {
            if let Some((reason, Some(deadline))) = self.luns[i].releasing {
                if now >= deadline {
                    self.finish_hand_over(now, i, reason);
                }
            }
        }
    }

    /// The peer asks this node to stop counting on its primacy of `lun` at `epoch`.
    pub(super) fn on_release(&mut self, lun: LunNumber, epoch: u64) {
        let Some(i) = self.luns.iter().position(|l| l.lun == lun) else {
            return;
        };
        let l = &mut self.luns[i];
        if epoch < l.epoch || l.role == LunRole::Primary {
            return;
        }
        l.relinquished = l.relinquished.max(epoch);
        l.peer_primary = false;
        l.awaiting_handover = true;
        self.out
            .push_back(Output::SendPeer(HaMsg::Released { lun, epoch }));
    }

    /// Steps down from LUN index `i` and hands it to the peer.
    pub(super) fn finish_hand_over(&mut self, now: Time, i: usize, reason: &str) {
        self.luns[i].releasing = None;
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
    pub(super) fn consider_failback(&mut self, now: Time) {
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
                && l.releasing.is_none()
                && !self.suspended
                && l.role_override.is_none()
                && self.cfg.role_for(l.lun) == Role::Secondary
            {
                self.hand_over(now, i, "failback to the preferred controller");
            }
        }
    }
}

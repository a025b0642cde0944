//! Administration of [`Node`]: [`AdminCmd`]s (set primary, switchover, role overrides) and the
//! planned hand-over they and failback ([`Config::failback`]) use.
//! Touches only the node's own fields and its output queue.

use super::*;

impl Node {
    pub(super) fn on_admin(&mut self, now: Time, cmd: AdminCmd) {
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

    /// Steps down from LUN index `i` and hands it to the peer (planned switchover, failback).
    pub(super) fn hand_over(&mut self, now: Time, i: usize, reason: &str) {
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
                && !self.suspended
                && l.role_override.is_none()
                && self.cfg.role_for(l.lun) == Role::Secondary
            {
                self.hand_over(now, i, "failback to the preferred controller");
            }
        }
    }
}

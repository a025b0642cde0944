//! The one constructor of an LU's [`AluaPicture`]: from the facts a controller knows about the
//! LUN ([`LunView`]), its HA id and the relative port ids of both controllers' ports.
//!
//! The states come from [`alua::group_states`]; this file only lays them out as port groups.
//! Pure; touches nothing but `alua` and the picture type.

use super::{AluaPicture, PortGroup};
use crate::alua::{self, GroupStates, LunView};
use crate::ha::peer_of;

impl AluaPicture {
    /// The ALUA picture from the facts controller `ha_id` knows: its own group holds
    /// `local_ports`, the peer's group (reported only when the peer has ports, i.e. HA is
    /// configured) holds `peer_ports`. Groups are listed by id, so both controllers report the
    /// same picture.
    ///
    /// The picture is implicit only (TPGS = 01b); a pair that can move a LUN when a host asks
    /// adds explicit ALUA with [`AluaPicture::with_explicit`]. A stand-alone controller is
    /// `from_view(LunView::standalone(), 1, ports, &[])`: one Active/Optimized group, id 1,
    /// implicit only (nothing a host could ask would change anything).
    pub fn from_view(
        view: LunView,
        ha_id: u8,
        local_ports: &[u16],
        peer_ports: &[u16],
    ) -> AluaPicture {
        let GroupStates { local, peer } = alua::group_states(view);
        let mut groups = vec![PortGroup {
            id: alua::port_group_id(ha_id),
            state: local,
            preferred: false,
            ports: local_ports.to_vec(),
            status: 0,
        }];
        if !peer_ports.is_empty() {
            groups.push(PortGroup {
                id: alua::port_group_id(peer_of(ha_id)),
                state: peer,
                preferred: false,
                ports: peer_ports.to_vec(),
                status: 0,
            });
        }
        groups.sort_by_key(|g| g.id);
        AluaPicture {
            groups,
            explicit: false,
            secondary: (!peer_ports.is_empty()).then(|| view.mode.secondary_state()),
            transition_time: 0,
        }
    }

    /// The same picture with explicit ALUA advertised (TPGS = 11b) when `explicit`: a pair
    /// under automatic failover, where SET TARGET PORT GROUPS starts a planned switchover
    /// ([`crate::alua::stpg_decide`]). Manual failover leaves the choice of the primary to the
    /// operator, and a lone controller has nothing to switch: both stay implicit only.
    pub fn with_explicit(mut self, explicit: bool) -> AluaPicture {
        self.explicit = explicit && self.secondary.is_some();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alua::{AluaState, HaMode, PeerReach, PrimaryView};

    #[test]
    fn a_lone_controller_is_one_active_optimized_group_with_implicit_alua() {
        let p = AluaPicture::from_view(LunView::standalone(), 1, &[1, 2], &[]);
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].id, 1);
        assert_eq!(p.groups[0].state, AluaState::ActiveOptimized);
        assert_eq!(p.groups[0].ports, vec![1, 2]);
        assert!(!p.explicit);
        assert_eq!(p.secondary, None);
        assert!(!p.with_explicit(true).explicit, "nothing to switch to");
    }

    #[test]
    fn a_pair_names_the_secondary_state_of_its_mode_and_may_be_explicit() {
        for (mode, sec) in [
            (HaMode::ActiveStandby, AluaState::Standby),
            (HaMode::ActiveActiveForward, AluaState::ActiveNonOptimized),
        ] {
            let view = LunView {
                mode,
                primary: PrimaryView::Local,
                peer: PeerReach::Up,
            };
            let p = AluaPicture::from_view(view, 1, &[1], &[129]);
            assert_eq!(p.secondary, Some(sec));
            assert!(!p.explicit);
            let p = p.with_explicit(true);
            assert!(p.explicit);
            assert_eq!(crate::scsi::inquiry::standard_tpgs(&p), 0x30);
        }
    }

    #[test]
    fn both_controllers_list_the_groups_in_the_same_order() {
        let view = LunView {
            mode: HaMode::ActiveStandby,
            primary: PrimaryView::Peer,
            peer: PeerReach::Up,
        };
        let p = AluaPicture::from_view(view, 2, &[129], &[1]);
        assert_eq!(
            p.groups.iter().map(|g| g.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(p.state_of(129), AluaState::Standby);
        assert_eq!(p.state_of(1), AluaState::ActiveOptimized);
    }
}

//! ALUA: target port groups, the asymmetric access state table and the per-state command gate.
//!
//! One target port group (TPG) per controller: TPG 1 holds ha_id 1's ports, TPG 2 ha_id 2's. A
//! stand-alone controller (HA off) is ha_id 1 with TPG 1. Relative target port identifiers are
//! unique across both controllers: node 1 numbers its ports 0-127 and node 2 128-255 (as CTL does);
//! the RTPI reported on the wire is that number plus one, since RTPI 0 is reserved (SPC-4 7.8.6.6).
//!
//! The state table is CTL's (implicit ALUA, transition time 0) plus Duet's election. It is a pure
//! function of what a node knows about one LUN ([`LunView`]), so the HA state machine stores the
//! facts and derives the ALUA picture here, never the other way round.

use crate::sense::SenseCode;
use serde::{Deserialize, Serialize};

/// Asymmetric access states (SPC-4 6.37, REPORT TARGET PORT GROUPS byte 0 low nibble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AluaState {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Offline,
    Transitioning,
}

impl AluaState {
    /// The 4-bit code of this state in RTPG and STPG data.
    pub fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
            AluaState::Standby => 0x2,
            AluaState::Unavailable => 0x3,
            AluaState::Offline => 0xE,
            AluaState::Transitioning => 0xF,
        }
    }

    /// The state for a 4-bit code, as sent in SET TARGET PORT GROUPS.
    pub fn from_code(code: u8) -> Option<AluaState> {
        Some(match code & 0x0F {
            0x0 => AluaState::ActiveOptimized,
            0x1 => AluaState::ActiveNonOptimized,
            0x2 => AluaState::Standby,
            0x3 => AluaState::Unavailable,
            0xE => AluaState::Offline,
            0xF => AluaState::Transitioning,
            _ => return None,
        })
    }

    /// Active/Optimized or Active/Non-optimized: the port group claims to serve I/O.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AluaState::ActiveOptimized | AluaState::ActiveNonOptimized
        )
    }

    /// Short human name, as shown by `duetctl` and in counterexample traces.
    pub fn name(self) -> &'static str {
        match self {
            AluaState::ActiveOptimized => "Active/Optimized",
            AluaState::ActiveNonOptimized => "Active/Non-optimized",
            AluaState::Standby => "Standby",
            AluaState::Unavailable => "Unavailable",
            AluaState::Offline => "Offline",
            AluaState::Transitioning => "Transitioning",
        }
    }

    /// Abbreviation used in compact traces (AO, ANO, S, U, O, T).
    pub fn abbrev(self) -> &'static str {
        match self {
            AluaState::ActiveOptimized => "AO",
            AluaState::ActiveNonOptimized => "ANO",
            AluaState::Standby => "S",
            AluaState::Unavailable => "U",
            AluaState::Offline => "O",
            AluaState::Transitioning => "T",
        }
    }
}

impl std::fmt::Display for AluaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// CTL's `ha_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HaMode {
    /// 0: Active/Standby. The secondary answers discovery and inquiry-class commands only.
    ActiveStandby,
    /// 1: Active/Active, both nodes on the backend; the secondary serializes each command with the
    /// primary and executes it locally.
    ActiveActiveShared,
    /// 2: Active/Active, the secondary forwards commands and data to the primary.
    ActiveActiveForward,
}

impl HaMode {
    pub fn from_number(n: u8) -> Option<HaMode> {
        Some(match n {
            0 => HaMode::ActiveStandby,
            1 => HaMode::ActiveActiveShared,
            2 => HaMode::ActiveActiveForward,
            _ => return None,
        })
    }

    pub fn number(self) -> u8 {
        match self {
            HaMode::ActiveStandby => 0,
            HaMode::ActiveActiveShared => 1,
            HaMode::ActiveActiveForward => 2,
        }
    }

    /// The state of the secondary's port group while the primary is reachable.
    pub fn secondary_state(self) -> AluaState {
        match self {
            HaMode::ActiveStandby => AluaState::Standby,
            HaMode::ActiveActiveShared | HaMode::ActiveActiveForward => {
                AluaState::ActiveNonOptimized
            }
        }
    }
}

/// What a node knows of its peer, in the words of CTL's `ha_link` (0/1/2) plus one fact CTL lacks:
/// whether the peer is *known* to be down (fenced, or HA not configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PeerReach {
    /// The peer cannot be serving: HA is off, or this node fenced it. CTL's "link down".
    Down,
    /// The link is configured but not established: the peer may or may not be alive.
    Unknown,
    /// The link is established (link state 2).
    Up,
}

/// Who is primary for one LUN, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PrimaryView {
    /// This node serves the LUN as primary (and, under automatic failover, holds a valid lease).
    Local,
    /// The peer is primary and this node is in contact with it.
    Peer,
    /// No primary is known here: after a failure, during a claim, or while fenced.
    None,
    /// This node is stopping cleanly ([`crate::ha::Input::Stop`]) and serves nothing;
    /// `peer_primary`: it knows the peer serves as primary.
    Leaving { peer_primary: bool },
}

/// The facts the ALUA table needs about one LUN on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LunView {
    pub mode: HaMode,
    pub primary: PrimaryView,
    pub peer: PeerReach,
}

impl LunView {
    /// The facts of a controller running alone (HA off): primary here, no peer.
    pub fn standalone() -> LunView {
        LunView {
            mode: HaMode::ActiveStandby,
            primary: PrimaryView::Local,
            peer: PeerReach::Down,
        }
    }
}

/// The ALUA states of both port groups for one LUN, as seen from one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupStates {
    /// The state of this node's own port group.
    pub local: AluaState,
    /// The state this node reports for the peer's port group.
    pub peer: AluaState,
}

/// The ALUA table (ARCHITECTURE.md §2.3): CTL's table, where a node that is not primary and lost its
/// primary reports Transitioning (link unknown) or Unavailable (peer known down). Duet's election
/// bounds how long that lasts; the table itself is the same.
///
/// A secondary reports itself active (ANO) only while the peer is primary *and* the link is up,
/// because modes 1 and 2 need the primary for every command.
pub fn group_states(view: LunView) -> GroupStates {
    use AluaState::*;
    match view.primary {
        PrimaryView::Local => GroupStates {
            local: ActiveOptimized,
            peer: match view.peer {
                PeerReach::Down => Unavailable,
                PeerReach::Unknown => Transitioning,
                PeerReach::Up => view.mode.secondary_state(),
            },
        },
        PrimaryView::Peer => match view.peer {
            PeerReach::Up => GroupStates {
                local: view.mode.secondary_state(),
                peer: ActiveOptimized,
            },
            // Without the link this node cannot reach the primary: it serves nothing, and it
            // cannot vouch for the peer either.
            PeerReach::Unknown => GroupStates {
                local: Transitioning,
                peer: Transitioning,
            },
            PeerReach::Down => GroupStates {
                local: Transitioning,
                peer: Unavailable,
            },
        },
        // A stopping controller's ports are about to go away: Unavailable sends the host's
        // multipath to the other group at once (Transitioning would make it retry here).
        PrimaryView::Leaving { peer_primary } => GroupStates {
            local: Unavailable,
            peer: match view.peer {
                PeerReach::Up if peer_primary => ActiveOptimized,
                PeerReach::Down => Unavailable,
                _ => Transitioning,
            },
        },
        PrimaryView::None => match view.peer {
            PeerReach::Down => GroupStates {
                local: Transitioning,
                peer: Unavailable,
            },
            PeerReach::Unknown => GroupStates {
                local: Transitioning,
                peer: Transitioning,
            },
            PeerReach::Up => GroupStates {
                local: Transitioning,
                peer: Transitioning,
            },
        },
    }
}

/// The target port group id of a controller (1 or 2; a stand-alone controller is 1).
pub fn port_group_id(ha_id: u8) -> u16 {
    if ha_id == 2 {
        2
    } else {
        1
    }
}

/// Number of target ports a controller may have (CTL: 0-127 for node 1, 128-255 for node 2).
pub const PORTS_PER_NODE: u16 = 128;

/// The relative target port identifier reported for port `index` (0-based) of controller `ha_id`.
pub fn relative_port_id(ha_id: u8, index: u16) -> u16 {
    let base = if ha_id == 2 { PORTS_PER_NODE } else { 0 };
    base + (index % PORTS_PER_NODE) + 1
}

/// The controller (ha_id) that owns a relative target port identifier.
pub fn owner_of_relative_port(rtpi: u16) -> u8 {
    if rtpi > PORTS_PER_NODE {
        2
    } else {
        1
    }
}

/// What a pair makes of a well-formed SET TARGET PORT GROUPS request (see [`stpg_decide`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StpgDecision {
    /// The requested group is Active/Optimized already (or nothing was asked): GOOD, no action.
    Unchanged,
    /// Group `group` must become Active/Optimized: a planned switchover of the LUN to the
    /// controller owning it. `next` is the picture (group id, state) the pair ends in.
    Activate {
        group: u16,
        next: Vec<(u16, AluaState)>,
    },
}

/// Explicit ALUA: which SET TARGET PORT GROUPS requests a pair can provide (SPC-4 5.16, 6.45).
///
/// A pair can only move the LUN: the pictures it can take are "group G Active/Optimized, the
/// other group in `secondary`" (Standby in mode 0, Active/Non-optimized in modes 1 and 2), one
/// per group G. A request (group id, state) names parts of one such picture: at most one group
/// Active/Optimized, any other group named in `secondary`. With `current` the states now
/// reported, the decision is [`StpgDecision::Unchanged`] when G is Active/Optimized already,
/// else [`StpgDecision::Activate`]. A request no such picture satisfies (both groups
/// Active/Optimized, a state the mode never gives, a lone group asked anything but
/// Active/Optimized) is `Err(i)`: descriptor `i` (0-based) is the first at fault, to be answered
/// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST. Group ids must be known groups
/// (the caller checks them first). Pure.
pub fn stpg_decide(
    current: &[(u16, AluaState)],
    secondary: Option<AluaState>,
    req: &[(u16, AluaState)],
) -> Result<StpgDecision, usize> {
    if req.is_empty() {
        return Ok(StpgDecision::Unchanged);
    }
    // The group to activate: the first named Active/Optimized, else (two groups) the one the
    // request does not name in another state.
    let group = match req.iter().find(|(_, s)| *s == AluaState::ActiveOptimized) {
        Some((g, _)) => *g,
        None => {
            let named = req[0].0;
            match current.iter().find(|(g, _)| *g != named) {
                Some((g, _)) => *g,
                None => return Err(0),
            }
        }
    };
    let wanted = |g: u16| {
        if g == group {
            Some(AluaState::ActiveOptimized)
        } else {
            secondary
        }
    };
    for (i, (g, s)) in req.iter().enumerate() {
        if wanted(*g) != Some(*s) {
            return Err(i);
        }
    }
    if current
        .iter()
        .any(|(g, s)| *g == group && *s == AluaState::ActiveOptimized)
    {
        return Ok(StpgDecision::Unchanged);
    }
    let next = current
        .iter()
        .map(|(g, _)| (*g, wanted(*g).unwrap_or(AluaState::ActiveOptimized)))
        .collect();
    Ok(StpgDecision::Activate { group, next })
}

/// What the ALUA gate decides for one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gate {
    /// The command may run.
    Allow,
    /// The command must end in CHECK CONDITION with this NOT READY sense.
    Deny(SenseCode),
}

// Operation codes the gate needs (SPC-4/SBC-3).
const TEST_UNIT_READY: u8 = 0x00;
const REQUEST_SENSE: u8 = 0x03;
const INQUIRY: u8 = 0x12;
const MODE_SELECT_6: u8 = 0x15;
const MODE_SENSE_6: u8 = 0x1A;
const RECEIVE_DIAGNOSTIC: u8 = 0x1C;
const SEND_DIAGNOSTIC: u8 = 0x1D;
const READ_CAPACITY_10: u8 = 0x25;
const WRITE_BUFFER: u8 = 0x3B;
const READ_BUFFER: u8 = 0x3C;
const LOG_SELECT: u8 = 0x4C;
const LOG_SENSE: u8 = 0x4D;
const MODE_SELECT_10: u8 = 0x55;
const MODE_SENSE_10: u8 = 0x5A;
const PERSISTENT_RESERVE_IN: u8 = 0x5E;
const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
const SERVICE_ACTION_IN_16: u8 = 0x9E;
const REPORT_LUNS: u8 = 0xA0;
const MAINTENANCE_IN: u8 = 0xA3;
const MAINTENANCE_OUT: u8 = 0xA4;
const SAI_READ_CAPACITY_16: u8 = 0x10;
const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
const MO_SET_TARGET_PORT_GROUPS: u8 = 0x0A;

fn service_action(cdb: &[u8]) -> Option<u8> {
    cdb.get(1).map(|b| b & 0x1F)
}

/// Commands every state lets through: they describe the LU and its paths, never touch data.
fn always_allowed(cdb: &[u8]) -> bool {
    match cdb.first() {
        Some(&INQUIRY) | Some(&REPORT_LUNS) | Some(&REQUEST_SENSE) => true,
        Some(&MAINTENANCE_IN) => service_action(cdb) == Some(MI_REPORT_TARGET_PORT_GROUPS),
        _ => false,
    }
}

/// The per-state command gate (PROTOCOL.md §3.1, after LIO's `core_alua_state_*`).
///
/// `cdb` is the command descriptor block (only its first two bytes are read). An empty CDB is
/// allowed through so that the CDB decoder reports it as malformed.
pub fn gate(state: AluaState, cdb: &[u8]) -> Gate {
    if cdb.is_empty() {
        return Gate::Allow;
    }
    let op = cdb[0];
    let sa = service_action(cdb);
    let buffer_cmd = matches!(op, READ_BUFFER | WRITE_BUFFER);
    let stpg = op == MAINTENANCE_OUT && sa == Some(MO_SET_TARGET_PORT_GROUPS);
    match state {
        AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => Gate::Allow,
        AluaState::Standby => {
            let ok = always_allowed(cdb)
                || buffer_cmd
                || stpg
                || matches!(
                    op,
                    MODE_SENSE_6
                        | MODE_SENSE_10
                        | MODE_SELECT_6
                        | MODE_SELECT_10
                        | LOG_SENSE
                        | LOG_SELECT
                        | READ_CAPACITY_10
                        | PERSISTENT_RESERVE_IN
                        | PERSISTENT_RESERVE_OUT
                        | SEND_DIAGNOSTIC
                        | RECEIVE_DIAGNOSTIC
                )
                || (op == SERVICE_ACTION_IN_16 && sa == Some(SAI_READ_CAPACITY_16));
            if ok {
                Gate::Allow
            } else {
                Gate::Deny(SenseCode::ALUA_STANDBY)
            }
        }
        AluaState::Unavailable => {
            if always_allowed(cdb) || buffer_cmd || stpg {
                Gate::Allow
            } else {
                Gate::Deny(SenseCode::ALUA_UNAVAILABLE)
            }
        }
        AluaState::Transitioning => {
            if always_allowed(cdb) || buffer_cmd {
                Gate::Allow
            } else {
                Gate::Deny(SenseCode::ALUA_TRANSITIONING)
            }
        }
        AluaState::Offline => {
            if always_allowed(cdb) {
                Gate::Allow
            } else {
                Gate::Deny(SenseCode::ALUA_OFFLINE)
            }
        }
    }
}

/// Whether a command that the gate allowed in `state` touches the LU's data (reads or writes
/// blocks). Used by the model's `alua-truthful` property and by tests: a data command may only be
/// allowed in an active state.
pub fn is_data_command(cdb: &[u8]) -> bool {
    !matches!(
        cdb.first().copied(),
        Some(
            TEST_UNIT_READY
                | REQUEST_SENSE
                | INQUIRY
                | MODE_SELECT_6
                | MODE_SENSE_6
                | RECEIVE_DIAGNOSTIC
                | SEND_DIAGNOSTIC
                | READ_CAPACITY_10
                | WRITE_BUFFER
                | READ_BUFFER
                | LOG_SELECT
                | LOG_SENSE
                | MODE_SELECT_10
                | MODE_SENSE_10
                | PERSISTENT_RESERVE_IN
                | PERSISTENT_RESERVE_OUT
                | SERVICE_ACTION_IN_16
                | REPORT_LUNS
                | MAINTENANCE_IN
                | MAINTENANCE_OUT
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const TUR: [u8; 6] = [0; 6];

    #[test]
    fn primary_here_with_link_up_reports_the_secondary_per_mode() {
        for (mode, sec) in [
            (HaMode::ActiveStandby, AluaState::Standby),
            (HaMode::ActiveActiveShared, AluaState::ActiveNonOptimized),
            (HaMode::ActiveActiveForward, AluaState::ActiveNonOptimized),
        ] {
            let v = LunView {
                mode,
                primary: PrimaryView::Local,
                peer: PeerReach::Up,
            };
            assert_eq!(
                group_states(v),
                GroupStates {
                    local: AluaState::ActiveOptimized,
                    peer: sec
                }
            );
            let w = LunView {
                primary: PrimaryView::Peer,
                ..v
            };
            assert_eq!(
                group_states(w),
                GroupStates {
                    local: sec,
                    peer: AluaState::ActiveOptimized
                }
            );
        }
    }

    #[test]
    fn a_node_without_a_reachable_primary_is_never_active() {
        for mode in [
            HaMode::ActiveStandby,
            HaMode::ActiveActiveShared,
            HaMode::ActiveActiveForward,
        ] {
            for peer in [PeerReach::Down, PeerReach::Unknown, PeerReach::Up] {
                for primary in [
                    PrimaryView::None,
                    PrimaryView::Peer,
                    PrimaryView::Leaving {
                        peer_primary: false,
                    },
                    PrimaryView::Leaving { peer_primary: true },
                ] {
                    if primary == PrimaryView::Peer && peer == PeerReach::Up {
                        continue;
                    }
                    let g = group_states(LunView {
                        mode,
                        primary,
                        peer,
                    });
                    assert!(!g.local.is_active(), "{mode:?} {primary:?} {peer:?}");
                }
            }
        }
    }

    #[test]
    fn gate_matches_the_protocol_table() {
        assert_eq!(gate(AluaState::ActiveOptimized, &READ10), Gate::Allow);
        assert_eq!(gate(AluaState::ActiveNonOptimized, &READ10), Gate::Allow);
        assert_eq!(
            gate(AluaState::Standby, &READ10),
            Gate::Deny(SenseCode::ALUA_STANDBY)
        );
        // TUR is not in the Standby list: multipath sees a "ghost" path.
        assert_eq!(
            gate(AluaState::Standby, &TUR),
            Gate::Deny(SenseCode::ALUA_STANDBY)
        );
        assert_eq!(
            gate(AluaState::Standby, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Gate::Allow
        );
        assert_eq!(gate(AluaState::Standby, &[0x9E, 0x10]), Gate::Allow);
        assert_eq!(gate(AluaState::Standby, &[0x5F, 0x01]), Gate::Allow);
        assert_eq!(
            gate(AluaState::Unavailable, &[0x25]),
            Gate::Deny(SenseCode::ALUA_UNAVAILABLE)
        );
        assert_eq!(gate(AluaState::Unavailable, &[0xA4, 0x0A]), Gate::Allow);
        assert_eq!(
            gate(AluaState::Transitioning, &[0xA4, 0x0A]),
            Gate::Deny(SenseCode::ALUA_TRANSITIONING)
        );
        assert_eq!(
            gate(AluaState::Transitioning, &READ10),
            Gate::Deny(SenseCode::ALUA_TRANSITIONING)
        );
        for s in [
            AluaState::Standby,
            AluaState::Unavailable,
            AluaState::Transitioning,
            AluaState::Offline,
        ] {
            assert_eq!(gate(s, &[0x12, 0, 0, 0, 96, 0]), Gate::Allow);
            assert_eq!(gate(s, &[0xA0]), Gate::Allow);
            assert_eq!(gate(s, &[0x03]), Gate::Allow);
            assert_eq!(gate(s, &[0xA3, 0x0A]), Gate::Allow);
            // REPORT SUPPORTED OPERATION CODES is not in any inactive list.
            assert_ne!(gate(s, &[0xA3, 0x0C]), Gate::Allow);
        }
    }

    #[test]
    fn data_commands_pass_only_active_states() {
        let states = [
            AluaState::ActiveOptimized,
            AluaState::ActiveNonOptimized,
            AluaState::Standby,
            AluaState::Unavailable,
            AluaState::Offline,
            AluaState::Transitioning,
        ];
        for op in 0u8..=255 {
            let cdb = [op, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
            for s in states {
                if is_data_command(&cdb) && gate(s, &cdb) == Gate::Allow {
                    assert!(s.is_active(), "op {op:02x} passes {s:?}");
                }
            }
        }
    }

    #[test]
    fn stpg_accepts_only_the_pictures_a_pair_can_take() {
        use AluaState::*;
        let standby = Some(Standby);
        let ano = Some(ActiveNonOptimized);
        let now = [(1, ActiveOptimized), (2, Standby)];
        let to_2 = StpgDecision::Activate {
            group: 2,
            next: vec![(1, Standby), (2, ActiveOptimized)],
        };
        // Linux's one descriptor: the peer's group Active/Optimized is a switchover.
        assert_eq!(
            stpg_decide(&now, standby, &[(2, ActiveOptimized)]),
            Ok(to_2.clone())
        );
        // The other group may be named in the state the mode gives it, in either order.
        assert_eq!(
            stpg_decide(&now, standby, &[(1, Standby), (2, ActiveOptimized)]),
            Ok(to_2.clone())
        );
        assert_eq!(stpg_decide(&now, standby, &[(1, Standby)]), Ok(to_2));
        // What is in place already is GOOD with no action.
        assert_eq!(
            stpg_decide(&now, standby, &[(1, ActiveOptimized)]),
            Ok(StpgDecision::Unchanged)
        );
        assert_eq!(
            stpg_decide(&now, standby, &[(2, Standby), (1, ActiveOptimized)]),
            Ok(StpgDecision::Unchanged)
        );
        assert_eq!(stpg_decide(&now, standby, &[]), Ok(StpgDecision::Unchanged));
        // Both Active/Optimized, or a state the mode never gives: the descriptor at fault.
        assert_eq!(
            stpg_decide(&now, standby, &[(1, ActiveOptimized), (2, ActiveOptimized)]),
            Err(1)
        );
        assert_eq!(
            stpg_decide(
                &now,
                standby,
                &[(2, ActiveOptimized), (1, ActiveNonOptimized)]
            ),
            Err(1)
        );
        assert_eq!(stpg_decide(&now, standby, &[(1, Unavailable)]), Err(0));
        // Modes 1 and 2: the other group is Active/Non-optimized, never Standby.
        let now = [(1, ActiveNonOptimized), (2, ActiveOptimized)];
        assert_eq!(
            stpg_decide(&now, ano, &[(1, ActiveOptimized), (2, ActiveNonOptimized)]),
            Ok(StpgDecision::Activate {
                group: 1,
                next: vec![(1, ActiveOptimized), (2, ActiveNonOptimized)],
            })
        );
        assert_eq!(
            stpg_decide(&now, ano, &[(1, ActiveOptimized), (2, Standby)]),
            Err(1)
        );
        // A lone controller: its one group Active/Optimized, nothing else.
        let lone = [(1, ActiveOptimized)];
        assert_eq!(
            stpg_decide(&lone, None, &[(1, ActiveOptimized)]),
            Ok(StpgDecision::Unchanged)
        );
        assert_eq!(stpg_decide(&lone, None, &[(1, Standby)]), Err(0));
        // While the peer is away the request is still one the pair can provide; whether it
        // can now is the runtime's to find out.
        let away = [(1, ActiveOptimized), (2, Unavailable)];
        assert!(matches!(
            stpg_decide(&away, standby, &[(2, ActiveOptimized)]),
            Ok(StpgDecision::Activate { group: 2, .. })
        ));
    }

    #[test]
    fn port_numbering_follows_ctl() {
        assert_eq!(relative_port_id(1, 0), 1);
        assert_eq!(relative_port_id(1, 127), 128);
        assert_eq!(relative_port_id(2, 0), 129);
        assert_eq!(owner_of_relative_port(128), 1);
        assert_eq!(owner_of_relative_port(129), 2);
        assert_eq!(port_group_id(1), 1);
        assert_eq!(port_group_id(2), 2);
        for c in 0..16 {
            if let Some(s) = AluaState::from_code(c) {
                assert_eq!(s.code(), c);
            }
        }
    }
}

//! The values the SCSI executor exchanges with the runtime: the I_T [`Nexus`], the ALUA picture
//! ([`AluaPicture`], [`PortGroup`]), the [`CommandContext`] of a command, and its result
//! ([`Outcome`], [`Effect`]). Plain data; used by the executor's modules, it uses none of them.

use super::sense_data::Sense;
use crate::alua::AluaState;
use crate::sense::status;
use serde::{Deserialize, Serialize};

/// An I_T nexus: initiator port (iSCSI initiator name + ISID) and target port (relative target
/// port identifier). Unit attentions, SCSI-2 reservations and PR registrations are kept per nexus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Nexus {
    /// iSCSI initiator name (compared as given; iSCSI names are already normalised lower case).
    pub initiator: String,
    /// The session's ISID.
    pub isid: [u8; 6],
    /// Relative target port identifier of the receiving port.
    pub rtpi: u16,
}

impl Nexus {
    /// A nexus from its parts.
    pub fn new(initiator: &str, isid: [u8; 6], rtpi: u16) -> Nexus {
        Nexus {
            initiator: initiator.to_string(),
            isid,
            rtpi,
        }
    }

    /// The iSCSI initiator port name `name,i,0x<isid>` (SPC-4 TransportID format 01b).
    pub fn initiator_port_name(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// One target port group as reported by REPORT TARGET PORT GROUPS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortGroup {
    pub id: u16,
    pub state: AluaState,
    /// The PREF bit.
    pub preferred: bool,
    /// Relative target port identifiers of the group's ports.
    pub ports: Vec<u16>,
    /// Status code of the last change (0 none, 1 by SET TARGET PORT GROUPS, 2 implicit).
    pub status: u8,
}

/// The ALUA picture of one LU, the same from every port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AluaPicture {
    /// Every port group (both controllers).
    pub groups: Vec<PortGroup>,
    /// Whether explicit ALUA (SET TARGET PORT GROUPS) is advertised and accepted.
    pub explicit: bool,
    /// The state the pair gives the group of the controller that is not primary while both are
    /// up (Standby in HA mode 0, Active/Non-optimized in modes 1 and 2); `None` for a lone
    /// controller. SET TARGET PORT GROUPS may name it for the group it does not activate.
    #[serde(default)]
    pub secondary: Option<AluaState>,
    /// Implicit transition time in seconds (RTPG extended header).
    pub transition_time: u8,
}

impl AluaPicture {
    /// The group holding relative target port `rtpi`.
    pub fn group_of(&self, rtpi: u16) -> Option<&PortGroup> {
        self.groups.iter().find(|g| g.ports.contains(&rtpi))
    }

    /// The ALUA state of the port `rtpi` (Active/Optimized for a port no group lists, so a
    /// runtime without ALUA configuration still serves I/O).
    pub fn state_of(&self, rtpi: u16) -> AluaState {
        self.group_of(rtpi)
            .map(|g| g.state)
            .unwrap_or(AluaState::ActiveOptimized)
    }
}

/// What the runtime tells the executor about one command besides its CDB and data.
#[derive(Clone, Copy, Debug)]
pub struct CommandContext<'a> {
    /// The I_T nexus the command came on.
    pub nexus: &'a Nexus,
    /// The current ALUA picture; the receiving port's group is the one listing `nexus.rtpi`.
    pub alua: &'a AluaPicture,
    /// The iSCSI target name (VPD 83 SCSI name designator).
    pub target_name: &'a str,
    /// The target portal group tag of the receiving portal.
    pub tpgt: u16,
    /// LUN numbers visible to this nexus, for REPORT LUNS.
    pub luns: &'a [u64],
}

/// Something the runtime must act on after a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// SET TARGET PORT GROUPS was accepted: move these groups to these states (the HA node
    /// decides; the LU only validated the request).
    SetTargetPortGroups(Vec<(u16, AluaState)>),
    /// The persistent reservation state changed. With `aptpl` the runtime should persist
    /// [`LogicalUnit::pr_state`](super::LogicalUnit::pr_state); without, remove any persisted copy.
    PrChanged { aptpl: bool },
    /// The backing device refused the medium phase with a reservation conflict: the peer fenced
    /// this controller at the disk. The host got ALUA transitioning; the runtime tells the HA
    /// node (`BackendHealth::Fenced`), which steps down at once.
    BackendFenced,
}

/// The result of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status ([`crate::sense::status`]).
    pub status: u8,
    /// Sense data (fixed or descriptor format, without the iSCSI 2-byte length prefix).
    pub sense: Option<Vec<u8>>,
    /// Data-In, already cut to the CDB's allocation length.
    pub data_in: Vec<u8>,
    /// Bytes the CDB asked to transfer (Data-In for reads, Data-Out for writes), for residuals.
    pub wanted_len: u32,
    /// What the runtime must do now.
    pub effects: Vec<Effect>,
}

impl Outcome {
    /// GOOD with data.
    pub fn good(data_in: Vec<u8>, wanted_len: u32) -> Outcome {
        Outcome {
            status: status::GOOD,
            sense: None,
            data_in,
            wanted_len,
            effects: Vec::new(),
        }
    }

    /// CHECK CONDITION with this sense, in descriptor format if `descriptor`.
    pub fn check(sense: Sense, descriptor: bool, wanted_len: u32) -> Outcome {
        Outcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense.to_bytes(descriptor)),
            data_in: Vec::new(),
            wanted_len,
            effects: Vec::new(),
        }
    }

    /// A status without sense (RESERVATION CONFLICT, BUSY...).
    pub fn status_only(status: u8, wanted_len: u32) -> Outcome {
        Outcome {
            status,
            sense: None,
            data_in: Vec::new(),
            wanted_len,
            effects: Vec::new(),
        }
    }

    /// The sense key/ASC/ASCQ carried, if any (either format).
    pub fn sense_code(&self) -> Option<crate::sense::SenseCode> {
        crate::sense::SenseCode::from_sense_data(self.sense.as_ref()?)
    }
}

//! SCSI status values and sense codes (SPC-4 §4.5), shared by `alua`, `scsi` and `iscsi`.

use serde::{Deserialize, Serialize};

/// SCSI status byte values.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// A sense key with its additional sense code and qualifier: what a CHECK CONDITION reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SenseCode {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl SenseCode {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        SenseCode { key, asc, ascq }
    }

    // NOT READY
    /// 02/04/0A LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION
    pub const ALUA_TRANSITIONING: SenseCode = SenseCode::new(key::NOT_READY, 0x04, 0x0A);
    /// 02/04/0B LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE
    pub const ALUA_STANDBY: SenseCode = SenseCode::new(key::NOT_READY, 0x04, 0x0B);
    /// 02/04/0C LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE
    pub const ALUA_UNAVAILABLE: SenseCode = SenseCode::new(key::NOT_READY, 0x04, 0x0C);
    /// 02/04/12 LOGICAL UNIT NOT READY, OFFLINE
    pub const ALUA_OFFLINE: SenseCode = SenseCode::new(key::NOT_READY, 0x04, 0x12);
    /// 02/3A/00 MEDIUM NOT PRESENT
    pub const MEDIUM_NOT_PRESENT: SenseCode = SenseCode::new(key::NOT_READY, 0x3A, 0x00);

    // ILLEGAL REQUEST
    /// 05/20/00 INVALID COMMAND OPERATION CODE
    pub const INVALID_OPCODE: SenseCode = SenseCode::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// 05/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE
    pub const LBA_OUT_OF_RANGE: SenseCode = SenseCode::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// 05/24/00 INVALID FIELD IN CDB
    pub const INVALID_FIELD_IN_CDB: SenseCode = SenseCode::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// 05/25/00 LOGICAL UNIT NOT SUPPORTED
    pub const LUN_NOT_SUPPORTED: SenseCode = SenseCode::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// 05/26/00 INVALID FIELD IN PARAMETER LIST
    pub const INVALID_FIELD_IN_PARAM_LIST: SenseCode =
        SenseCode::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// 05/1A/00 PARAMETER LIST LENGTH ERROR
    pub const PARAM_LIST_LENGTH_ERROR: SenseCode = SenseCode::new(key::ILLEGAL_REQUEST, 0x1A, 0x00);
    /// 05/0E/03 INVALID FIELD IN COMMAND INFORMATION UNIT
    pub const INVALID_FIELD_IN_COMMAND_IU: SenseCode =
        SenseCode::new(key::ILLEGAL_REQUEST, 0x0E, 0x03);

    // UNIT ATTENTION
    /// 06/29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
    pub const UA_POWER_ON_RESET: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x29, 0x00);
    /// 06/29/07 I_T NEXUS LOSS OCCURRED
    pub const UA_NEXUS_LOSS: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x29, 0x07);
    /// 06/2A/01 MODE PARAMETERS CHANGED
    pub const UA_MODE_PARAMETERS_CHANGED: SenseCode =
        SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x01);
    /// 06/2A/03 RESERVATIONS PREEMPTED
    pub const UA_RESERVATIONS_PREEMPTED: SenseCode =
        SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x03);
    /// 06/2A/04 RESERVATIONS RELEASED
    pub const UA_RESERVATIONS_RELEASED: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x04);
    /// 06/2A/05 REGISTRATIONS PREEMPTED
    pub const UA_REGISTRATIONS_PREEMPTED: SenseCode =
        SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x05);
    /// 06/2A/06 ASYMMETRIC ACCESS STATE CHANGED
    pub const UA_ALUA_STATE_CHANGED: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x06);
    /// 06/2A/07 IMPLICIT ASYMMETRIC ACCESS STATE TRANSITION FAILED
    pub const UA_ALUA_TRANSITION_FAILED: SenseCode =
        SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x07);
    /// 06/2A/09 CAPACITY DATA HAS CHANGED
    pub const UA_CAPACITY_CHANGED: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x2A, 0x09);
    /// 06/3F/03 INQUIRY DATA HAS CHANGED
    pub const UA_INQUIRY_DATA_CHANGED: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x3F, 0x03);
    /// 06/3F/0E REPORTED LUNS DATA HAS CHANGED
    pub const UA_REPORTED_LUNS_CHANGED: SenseCode = SenseCode::new(key::UNIT_ATTENTION, 0x3F, 0x0E);

    // Others
    /// 07/27/00 WRITE PROTECTED
    pub const WRITE_PROTECTED: SenseCode = SenseCode::new(key::DATA_PROTECT, 0x27, 0x00);
    /// 0E/1D/00 MISCOMPARE DURING VERIFY OPERATION
    pub const MISCOMPARE: SenseCode = SenseCode::new(key::MISCOMPARE, 0x1D, 0x00);
    /// 03/11/00 UNRECOVERED READ ERROR
    pub const UNRECOVERED_READ_ERROR: SenseCode = SenseCode::new(key::MEDIUM_ERROR, 0x11, 0x00);
    /// 03/0C/00 WRITE ERROR
    pub const WRITE_ERROR: SenseCode = SenseCode::new(key::MEDIUM_ERROR, 0x0C, 0x00);
    /// 04/67/0A SET TARGET PORT GROUPS COMMAND FAILED (SPC-4: the states could not be set)
    pub const STPG_FAILED: SenseCode = SenseCode::new(key::HARDWARE_ERROR, 0x67, 0x0A);
    /// 04/44/00 INTERNAL TARGET FAILURE
    pub const INTERNAL_TARGET_FAILURE: SenseCode = SenseCode::new(key::HARDWARE_ERROR, 0x44, 0x00);
    /// 0B/47/03 INFORMATION UNIT iuCRC ERROR DETECTED (data digest error)
    pub const DATA_DIGEST_ERROR: SenseCode = SenseCode::new(key::ABORTED_COMMAND, 0x47, 0x03);
    /// 0B/4B/00 DATA PHASE ERROR
    pub const DATA_PHASE_ERROR: SenseCode = SenseCode::new(key::ABORTED_COMMAND, 0x4B, 0x00);

    /// Whether this is a unit attention.
    pub fn is_unit_attention(&self) -> bool {
        self.key == key::UNIT_ATTENTION
    }

    /// Decodes the key, ASC and ASCQ of sense data (SPC-4 §4.5) in fixed (response code 0x70,
    /// 0x71) or descriptor (0x72, 0x73) format, as an initiator receives it (without the
    /// iSCSI length prefix). A short fixed-format report lacks ASC/ASCQ: they read as 0. `None`
    /// when the data is empty, too short for its key, or of another response code.
    pub fn from_sense_data(sense: &[u8]) -> Option<SenseCode> {
        let at = |i: usize| sense.get(i).copied().unwrap_or(0);
        match *sense.first()? & 0x7f {
            0x70 | 0x71 => Some(SenseCode::new(*sense.get(2)? & 0x0f, at(12), at(13))),
            0x72 | 0x73 => Some(SenseCode::new(*sense.get(1)? & 0x0f, at(2), at(3))),
            _ => None,
        }
    }
}

impl std::fmt::Display for SenseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02X}/{:02X}/{:02X}", self.key, self.asc, self.ascq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_data_in_both_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0xf0;
        fixed[2] = 0x06;
        fixed[12] = 0x29;
        fixed[13] = 0x07;
        assert_eq!(
            SenseCode::from_sense_data(&fixed),
            Some(SenseCode::UA_NEXUS_LOSS)
        );
        let descriptor = [0x72, 0x02, 0x04, 0x0a, 0, 0, 0, 0];
        assert_eq!(
            SenseCode::from_sense_data(&descriptor),
            Some(SenseCode::ALUA_TRANSITIONING)
        );
        assert_eq!(
            SenseCode::from_sense_data(&[0x70, 0, 0x05]),
            Some(SenseCode::new(5, 0, 0))
        );
        assert_eq!(SenseCode::from_sense_data(&[]), None);
        assert_eq!(SenseCode::from_sense_data(&[0x72]), None);
        assert_eq!(SenseCode::from_sense_data(&[0x7f, 0, 5]), None);
    }
}

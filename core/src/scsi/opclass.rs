//! Opcode classes: what the runtime needs to know about a command from its operation code alone.
//!
//! The executor decodes every CDB in full; the runtime around it only asks a few coarse
//! questions before or after (which statistics row a command counts in, whether its data-out is
//! bulk write data, whether it may change the state both controllers of a pair keep identical).
//! Each answer is decided here, once, from [`op`] codes. Pure functions; touches nothing else.

use super::cdb::op;

/// How a command moves data, as the runtime counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// READ (6/10/12/16): data-in from the medium.
    Read,
    /// WRITE (6/10/12/16), WRITE AND VERIFY (10/12/16), COMPARE AND WRITE: data-out to the
    /// medium.
    Write,
    /// Everything else.
    Other,
}

impl OpClass {
    /// The class of operation code `op`.
    pub fn of(code: u8) -> OpClass {
        match code {
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => OpClass::Read,
            op::COMPARE_AND_WRITE => OpClass::Write,
            c if carries_bulk_data(c) => OpClass::Write,
            _ => OpClass::Other,
        }
    }
}

/// Whether the data-out of `op` is bulk write data, whose content phase 1 never looks at (only
/// its length): WRITE (6/10/12/16) and WRITE AND VERIFY (10/12/16). In HA mode 1 such data stays
/// on the controller that received it. COMPARE AND WRITE is not one of them: its data travels
/// with the command.
pub fn carries_bulk_data(code: u8) -> bool {
    matches!(
        code,
        op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16
    )
}

/// Whether `op` may change what both controllers of a pair keep identical: persistent
/// reservations (PERSISTENT RESERVE OUT), mode pages (MODE SELECT 6/10) and SCSI-2 reservations
/// (RESERVE/RELEASE 6/10).
pub fn changes_shared_state(code: u8) -> bool {
    matches!(
        code,
        op::PERSISTENT_RESERVE_OUT
            | op::MODE_SELECT_6
            | op::MODE_SELECT_10
            | op::RESERVE_6
            | op::RESERVE_10
            | op::RELEASE_6
            | op::RELEASE_10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classes_are_the_runtime_tables() {
        for c in [0x08, 0x28, 0xA8, 0x88] {
            assert_eq!(OpClass::of(c), OpClass::Read, "{c:#x}");
        }
        for c in [0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x89] {
            assert_eq!(OpClass::of(c), OpClass::Write, "{c:#x}");
        }
        for c in [0x00, 0x12, 0x2F, 0x35, 0x41, 0x42, 0x5F, 0x93] {
            assert_eq!(OpClass::of(c), OpClass::Other, "{c:#x}");
        }
        let bulk: Vec<u8> = (0..=255u8).filter(|&c| carries_bulk_data(c)).collect();
        assert_eq!(bulk, vec![0x0A, 0x2A, 0x2E, 0x8A, 0x8E, 0xAA, 0xAE]);
        let shared: Vec<u8> = (0..=255u8).filter(|&c| changes_shared_state(c)).collect();
        assert_eq!(shared, vec![0x15, 0x16, 0x17, 0x55, 0x56, 0x57, 0x5F]);
    }
}

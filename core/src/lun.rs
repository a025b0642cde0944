//! The number of a logical unit, as every part of Duet names one: the configuration, the SCSI
//! layer, the HA state machine and its link messages, the quorum record, the model and the admin
//! tools. Numbers run from 0 to [`MAX_LUN`], SAM's single-level flat address space (the 8-byte
//! LUN field of an iSCSI PDU is [`crate::iscsi::Lun`], which converts to and from this number).

/// A logical unit number, 0 to [`MAX_LUN`].
pub type LunNumber = u16;

/// The largest LUN number: flat space addressing has 14 bits.
pub const MAX_LUN: LunNumber = 0x3FFF;

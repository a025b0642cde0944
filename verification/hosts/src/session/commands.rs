//! The SCSI commands a multipath host sends through a [`Session`], with their answers parsed:
//! reads and writes, TEST UNIT READY, READ CAPACITY, VPD pages, REPORT TARGET PORT GROUPS.
//! CDBs and parsers are [`crate::scsi`]'s; this only runs them.

use super::{InitError, ScsiResult, Session};
use crate::scsi::{self, TargetPortGroup};
use bytes::Bytes;

impl Session {
    /// READ (10) of `blocks` blocks of `block_size` bytes at `lba`.
    pub async fn read10(
        &self,
        lun: u16,
        lba: u32,
        blocks: u16,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        let c = scsi::read10_cdb(lba, blocks);
        self.exec(lun, &c, Bytes::new(), blocks as u32 * block_size)
            .await
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes at `lba`.
    pub async fn read16(
        &self,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        self.exec(
            lun,
            &scsi::read16_cdb(lba, blocks),
            Bytes::new(),
            blocks.saturating_mul(block_size),
        )
        .await
    }

    /// WRITE (10) of `data` (a whole number of `block_size` blocks) at `lba`.
    pub async fn write10(
        &self,
        lun: u16,
        lba: u32,
        data: Bytes,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        let blocks = (data.len() / block_size.max(1) as usize).min(u16::MAX as usize) as u16;
        let c = scsi::write10_cdb(lba, blocks);
        self.exec(lun, &c, data, 0).await
    }

    /// WRITE (16) of `data` (a whole number of `block_size` blocks) at `lba`.
    pub async fn write16(
        &self,
        lun: u16,
        lba: u64,
        data: Bytes,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        let blocks = (data.len() / block_size.max(1) as usize).min(u32::MAX as usize) as u32;
        self.exec(lun, &scsi::write16_cdb(lba, blocks), data, 0)
            .await
    }

    /// TEST UNIT READY.
    pub async fn test_unit_ready(&self, lun: u16) -> Result<ScsiResult, InitError> {
        self.exec(lun, &scsi::test_unit_ready_cdb(), Bytes::new(), 0)
            .await
    }

    /// READ CAPACITY (16): `(number of blocks, block size)`.
    pub async fn read_capacity16(&self, lun: u16) -> Result<(u64, u32), InitError> {
        let c = scsi::read_capacity16_cdb(32);
        let r = self.exec(lun, &c, Bytes::new(), 32).await?.into_good()?;
        scsi::parse_read_capacity16(&r.data)
            .ok_or_else(|| InitError::Protocol("short READ CAPACITY (16) data".into()))
    }

    /// INQUIRY of VPD page `page` (EVPD=1).
    pub async fn inquiry_vpd(&self, lun: u16, page: u8) -> Result<Bytes, InitError> {
        let c = scsi::inquiry_vpd_cdb(page, 1024);
        Ok(self
            .exec(lun, &c, Bytes::new(), 1024)
            .await?
            .into_good()?
            .data)
    }

    /// The relative target port identifier of the port this session reaches, from the Device
    /// Identification VPD page (0x83); `None` when the page has no such designator.
    pub async fn relative_port_id(&self, lun: u16) -> Result<Option<u16>, InitError> {
        let page = self.inquiry_vpd(lun, 0x83).await?;
        Ok(scsi::parse_relative_port_id(&page))
    }

    /// REPORT TARGET PORT GROUPS.
    pub async fn report_target_port_groups(
        &self,
        lun: u16,
    ) -> Result<Vec<TargetPortGroup>, InitError> {
        let c = scsi::report_target_port_groups_cdb(4096);
        let r = self.exec(lun, &c, Bytes::new(), 4096).await?.into_good()?;
        scsi::parse_rtpg(&r.data).ok_or_else(|| InitError::Protocol("malformed RTPG data".into()))
    }
}

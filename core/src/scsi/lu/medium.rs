//! Reads and writes of [`LogicalUnit`]: the medium commands' checks (range, transfer length,
//! write protection, protection information) and the [`IoPlan`] each one becomes. No I/O here:
//! the plan runs in [`run_io`](crate::scsi::run_io).
//! Touches only the LU's own state (it reads it; it changes nothing).

use super::*;

impl LogicalUnit {
    /// How many blocks of `range` a write may write: only whole blocks received (the iSCSI
    /// expected data transfer length may be shorter than the CDB's transfer length).
    fn whole_blocks(&self, data_out: &[u8], range: &BlockRange) -> u64 {
        (data_out.len() as u64 / self.cfg.block_size as u64).min(range.blocks as u64)
    }

    /// Reads and writes: READ, WRITE, VERIFY, WRITE AND VERIFY, ORWRITE, COMPARE AND WRITE,
    /// WRITE SAME, UNMAP, SYNCHRONIZE CACHE, PRE-FETCH and GET LBA STATUS.
    pub(super) fn medium(&self, cmd: &Command, data_out: &[u8], wanted: u32) -> R<Prepared> {
        let bs = self.cfg.block_size as u64;
        match cmd {
            Command::Read {
                range,
                flags,
                cdb_len,
            } => {
                Self::protect_check(flags)?;
                self.check_range(range)?;
                self.check_transfer(range, if *cdb_len == 6 { 4 } else { 7 })?;
                if range.blocks == 0 {
                    return Self::good(Vec::new(), wanted);
                }
                Ok(self.plan(
                    IoOp::Read {
                        offset: self.offset(range.lba),
                        len: self.bytes(range.blocks as u64),
                    },
                    wanted,
                ))
            }
            Command::Write {
                range,
                flags,
                cdb_len,
            } => {
                Self::protect_check(flags)?;
                self.check_range(range)?;
                self.check_transfer(range, if *cdb_len == 6 { 4 } else { 7 })?;
                self.check_writable()?;
                let have = self.whole_blocks(data_out, range);
                if have == 0 {
                    return Self::good(Vec::new(), wanted);
                }
                Ok(self.plan(
                    IoOp::Write {
                        offset: self.offset(range.lba),
                        len: self.bytes(have),
                        data_at: 0,
                        fua: flags.fua || !self.mode.wce(),
                    },
                    wanted,
                ))
            }
            Command::Verify {
                range,
                flags,
                bytchk,
            } => {
                Self::protect_check(flags)?;
                if *bytchk == 2 {
                    return Err(Sense::cdb_field(1, Some(1)).into());
                }
                self.check_range(range)?;
                self.check_transfer(range, 7)?;
                if range.blocks == 0 {
                    return Self::good(Vec::new(), wanted);
                }
                let mode = match bytchk {
                    0 => VerifyMode::Medium,
                    1 => VerifyMode::Bytes,
                    _ => VerifyMode::EveryBlock,
                };
                if (data_out.len() as u64) < wanted as u64 {
                    return Err(SenseCode::INVALID_FIELD_IN_COMMAND_IU.into());
                }
                Ok(self.plan(
                    IoOp::Verify {
                        offset: self.offset(range.lba),
                        len: self.bytes(range.blocks as u64),
                        block_size: self.cfg.block_size,
                        mode,
                    },
                    wanted,
                ))
            }
            Command::WriteAndVerify {
                range,
                flags,
                bytchk,
            } => {
                Self::protect_check(flags)?;
                if *bytchk > 1 {
                    return Err(Sense::cdb_field(1, Some(1)).into());
                }
                self.check_range(range)?;
                self.check_transfer(range, 7)?;
                self.check_writable()?;
                let have = self.whole_blocks(data_out, range);
                if have == 0 {
                    return Self::good(Vec::new(), wanted);
                }
                Ok(self.plan(
                    IoOp::WriteAndVerify {
                        offset: self.offset(range.lba),
                        len: self.bytes(have),
                    },
                    wanted,
                ))
            }
            Command::OrWrite { range, flags } => {
                Self::protect_check(flags)?;
                self.check_range(range)?;
                self.check_transfer(range, 10)?;
                self.check_writable()?;
                if range.blocks == 0 {
                    return Self::good(Vec::new(), wanted);
                }
                if (data_out.len() as u64) < wanted as u64 {
                    return Err(SenseCode::INVALID_FIELD_IN_COMMAND_IU.into());
                }
                Ok(self.plan(
                    IoOp::OrWrite {
                        offset: self.offset(range.lba),
                        len: self.bytes(range.blocks as u64),
                        fua: flags.fua || !self.mode.wce(),
                    },
                    wanted,
                ))
            }
            Command::CompareAndWrite { range, flags } => {
                Self::protect_check(flags)?;
                if range.blocks > self.cfg.max_compare_write_blocks as u32 {
                    return Err(Sense::cdb_field(13, None).into());
                }
                self.check_range(range)?;
                self.check_writable()?;
                if range.blocks == 0 {
                    // NUMBER OF LOGICAL BLOCKS 0 with data: an initiator asked for 256 blocks
                    // through the one-byte field; more than MAXIMUM COMPARE AND WRITE LENGTH.
                    if !data_out.is_empty() {
                        return Err(Sense::cdb_field(13, None).into());
                    }
                    return Self::good(Vec::new(), wanted);
                }
                if data_out.len() as u64 != wanted as u64 {
                    return Err(SenseCode::INVALID_FIELD_IN_COMMAND_IU.into());
                }
                Ok(self.plan(
                    IoOp::CompareAndWrite {
                        offset: self.offset(range.lba),
                        len: self.bytes(range.blocks as u64),
                        fua: flags.fua || !self.mode.wce(),
                    },
                    wanted,
                ))
            }
            Command::WriteSame {
                range,
                protect,
                anchor,
                unmap,
                ndob,
                sixteen,
            } => {
                if *protect != 0 {
                    return Err(Sense::cdb_field(1, Some(7)).into());
                }
                // Anchored blocks are not supported (VPD B2 ANC_SUP = 0).
                if *anchor {
                    return Err(Sense::cdb_field(1, Some(4)).into());
                }
                if *unmap && !self.cfg.thin {
                    return Err(Sense::cdb_field(1, Some(3)).into());
                }
                self.check_range(range)?;
                // WSNZ=0: zero blocks means "to the end of the medium".
                let blocks = if range.blocks == 0 {
                    self.cfg.num_blocks - range.lba
                } else {
                    range.blocks as u64
                };
                if blocks > self.cfg.max_write_same_blocks {
                    return Err(Sense::cdb_field(if *sixteen { 10 } else { 7 }, None).into());
                }
                self.check_writable()?;
                // One block of Data-Out; with UNMAP the block is not used and may be absent.
                let ok_len = data_out.len() as u64 == bs || (*unmap && data_out.is_empty());
                if !*ndob && !ok_len {
                    return Err(SenseCode::INVALID_FIELD_IN_COMMAND_IU.into());
                }
                Ok(self.plan(
                    IoOp::WriteSame {
                        offset: self.offset(range.lba),
                        block_size: self.cfg.block_size,
                        blocks,
                        zeros: *ndob || data_out.is_empty(),
                        unmap: *unmap,
                        fua: !self.mode.wce(),
                    },
                    wanted,
                ))
            }
            Command::Unmap { anchor, param_len } => {
                if !self.cfg.thin {
                    return Err(SenseCode::INVALID_OPCODE.into());
                }
                if *anchor {
                    return Err(Sense::cdb_field(1, Some(0)).into());
                }
                self.check_writable()?;
                let ranges = self.parse_unmap(*param_len, data_out)?;
                if ranges.is_empty() {
                    return Self::good(Vec::new(), wanted);
                }
                Ok(self.plan(IoOp::Unmap { ranges }, wanted))
            }
            Command::SynchronizeCache { range, .. } => {
                self.check_range(range)?;
                Ok(self.plan(IoOp::Flush, wanted))
            }
            Command::PreFetch { range, .. } => {
                self.check_range(range)?;
                // Nothing to stage: the store's own cache decides.
                Self::good(Vec::new(), wanted)
            }
            Command::GetLbaStatus { lba, alloc } => {
                if !self.cfg.thin {
                    return Err(SenseCode::INVALID_OPCODE.into());
                }
                if *lba >= self.cfg.num_blocks {
                    return Err(SenseCode::LBA_OUT_OF_RANGE.into());
                }
                if *alloc < 24 {
                    // Too small for one descriptor: return the header only.
                    let mut v = 20u32.to_be_bytes().to_vec();
                    v.extend_from_slice(&[0; 4]);
                    return Self::good(alloc_cut(v, *alloc), wanted);
                }
                // An LBA inside a physical block is reported from the next physical block
                // boundary (the allocation unit), as libiscsi's GetLBAStatus tests expect.
                let lbppb = 1u64 << self.cfg.lbppbe;
                let start = lba
                    .div_ceil(lbppb)
                    .saturating_mul(lbppb)
                    .min(self.cfg.num_blocks.saturating_sub(1))
                    .max(*lba);
                Ok(self.plan(
                    IoOp::GetLbaStatus {
                        lba: start,
                        num_blocks: self.cfg.num_blocks,
                        block_size: self.cfg.block_size,
                        max_descriptors: ((alloc - 8) / 16).min(64),
                        alloc: *alloc,
                    },
                    wanted,
                ))
            }
            _ => unreachable!("dispatch routes only these commands here"),
        }
    }

    pub(super) fn check_range(&self, r: &BlockRange) -> R<()> {
        let n = self.cfg.num_blocks;
        if r.lba >= n || r.lba.saturating_add(r.blocks as u64) > n {
            return Err(SenseCode::LBA_OUT_OF_RANGE.into());
        }
        Ok(())
    }

    pub(super) fn check_transfer(&self, r: &BlockRange, cdb_len_byte: u16) -> R<()> {
        if r.blocks > self.cfg.max_transfer_blocks {
            return Err(Sense::cdb_field(cdb_len_byte, None).into());
        }
        Ok(())
    }

    pub(super) fn check_writable(&self) -> R<()> {
        if self.cfg.read_only || self.mode.swp() {
            return Err(SenseCode::WRITE_PROTECTED.into());
        }
        Ok(())
    }

    pub(super) fn offset(&self, lba: u64) -> u64 {
        lba * self.cfg.block_size as u64
    }

    pub(super) fn bytes(&self, blocks: u64) -> u64 {
        blocks * self.cfg.block_size as u64
    }

    pub(super) fn plan(&self, op: IoOp, wanted: u32) -> Prepared {
        Prepared::Io(IoPlan {
            op,
            wanted_len: wanted,
            descriptor_sense: self.descriptor_sense(),
        })
    }

    pub(super) fn protect_check(flags: &IoFlags) -> R<()> {
        if flags.protect != 0 {
            return Err(Sense::cdb_field(1, Some(7)).into());
        }
        Ok(())
    }

    pub(super) fn parse_unmap(&self, param_len: u32, data: &[u8]) -> R<Vec<(u64, u64)>> {
        if param_len == 0 {
            return Ok(Vec::new());
        }
        if param_len < 8 || data.len() < 8 {
            return Err(SenseCode::PARAM_LIST_LENGTH_ERROR.into());
        }
        let data = &data[..data.len().min(param_len as usize)];
        let data_len = u16::from_be_bytes([data[0], data[1]]) as usize;
        let bd_len = u16::from_be_bytes([data[2], data[3]]) as usize;
        if !bd_len.is_multiple_of(16) || data_len < 6 {
            return Err(Sense::param_field(2, None).into());
        }
        let avail = (data.len() - 8) / 16;
        let count = (bd_len / 16).min(avail);
        if count as u64 > self.cfg.max_unmap_descriptors as u64 {
            return Err(Sense::param_field(2, None).into());
        }
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let d = &data[8 + 16 * i..24 + 16 * i];
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[0..8]);
            let lba = u64::from_be_bytes(b);
            let n = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            if n > self.cfg.max_unmap_blocks {
                return Err(Sense::param_field((8 + 16 * i + 8) as u16, None).into());
            }
            if lba > self.cfg.num_blocks || lba.saturating_add(n as u64) > self.cfg.num_blocks {
                return Err(SenseCode::LBA_OUT_OF_RANGE.into());
            }
            if n > 0 {
                out.push((self.offset(lba), self.bytes(n as u64)));
            }
        }
        Ok(out)
    }
}

//! MODE SENSE and MODE SELECT of [`LogicalUnit`]: the mode parameter header and block
//! descriptor around the pages of [`ModePages`].
//! Touches only the LU's own state; no I/O.

use super::*;

impl LogicalUnit {
    /// MODE SENSE and MODE SELECT (6) and (10).
    pub(super) fn modes(
        &mut self,
        ctx: &CommandContext,
        cmd: &Command,
        data_out: &[u8],
        wanted: u32,
    ) -> R<Prepared> {
        match cmd {
            Command::ModeSense {
                six,
                dbd,
                llbaa,
                pc,
                page,
                subpage,
                alloc,
            } => {
                let pages = self.mode.sense_pages(*pc, *page, *subpage)?;
                Self::good(
                    alloc_cut(self.mode_sense_data(*six, *dbd, *llbaa, &pages), *alloc),
                    wanted,
                )
            }
            Command::ModeSelect {
                six,
                pf,
                sp,
                param_len,
            } => {
                if !*pf {
                    return Err(Sense::cdb_field(1, Some(4)).into());
                }
                if *sp {
                    return Err(Sense::cdb_field(1, Some(0)).into());
                }
                self.mode_select(ctx.nexus, *six, *param_len, data_out)?;
                Self::good(Vec::new(), wanted)
            }
            _ => unreachable!("dispatch routes only these commands here"),
        }
    }

    pub(super) fn mode_sense_data(
        &self,
        six: bool,
        dbd: bool,
        llbaa: bool,
        pages: &[u8],
    ) -> Vec<u8> {
        let mut dsp = 0x10; // DPOFUA
        if self.cfg.read_only || self.mode.swp() {
            dsp |= 0x80;
        }
        let mut bd = Vec::new();
        if !dbd {
            if !six && llbaa {
                bd.extend_from_slice(&self.cfg.num_blocks.to_be_bytes());
                bd.extend_from_slice(&[0, 0, 0, 0]);
                bd.extend_from_slice(&self.cfg.block_size.to_be_bytes());
            } else {
                let n = u32::try_from(self.cfg.num_blocks)
                    .ok()
                    .filter(|n| *n <= 0x00FF_FFFF || !six)
                    .unwrap_or(if six { 0x00FF_FFFF } else { u32::MAX });
                if six {
                    bd.push(0);
                    bd.extend_from_slice(&n.to_be_bytes()[1..]);
                } else {
                    bd.extend_from_slice(&n.to_be_bytes());
                }
                bd.push(0);
                bd.extend_from_slice(&self.cfg.block_size.to_be_bytes()[1..]);
            }
        }
        let mut v = Vec::new();
        if six {
            v.extend_from_slice(&[0, 0, dsp, bd.len() as u8]);
        } else {
            v.extend_from_slice(&[0, 0, 0, dsp, u8::from(llbaa && !dbd), 0]);
            v.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&bd);
        v.extend_from_slice(pages);
        if six {
            v[0] = (v.len() - 1).min(255) as u8;
        } else {
            let l = (v.len() - 2) as u16;
            v[0..2].copy_from_slice(&l.to_be_bytes());
        }
        v
    }

    pub(super) fn mode_select(
        &mut self,
        nexus: &Nexus,
        six: bool,
        param_len: u32,
        data: &[u8],
    ) -> R<()> {
        if param_len == 0 {
            return Ok(());
        }
        let hdr = if six { 4 } else { 8 };
        if (param_len as usize) < hdr || data.len() < param_len as usize {
            return Err(SenseCode::PARAM_LIST_LENGTH_ERROR.into());
        }
        let data = &data[..param_len as usize];
        let bd_len = if six {
            data[3] as usize
        } else {
            u16::from_be_bytes([data[6], data[7]]) as usize
        };
        if hdr + bd_len > data.len() {
            return Err(SenseCode::PARAM_LIST_LENGTH_ERROR.into());
        }
        // A block descriptor may only restate the current block length.
        if bd_len >= 8 {
            let d = &data[hdr..hdr + bd_len];
            let bl = if bd_len == 16 {
                u32::from_be_bytes([d[12], d[13], d[14], d[15]])
            } else {
                u32::from_be_bytes([0, d[5], d[6], d[7]])
            };
            if bl != 0 && bl != self.cfg.block_size {
                return Err(Sense::param_field((hdr + bd_len - 1) as u16, None).into());
            }
        }
        let base = hdr + bd_len;
        let changed = self.mode.select(&data[base..], base)?;
        if changed {
            self.ua
                .raise_all(SenseCode::UA_MODE_PARAMETERS_CHANGED, Some(nexus));
        }
        Ok(())
    }
}

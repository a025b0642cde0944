//! What a [`LogicalUnit`] says about itself: INQUIRY (standard data and VPD pages), REPORT LUNS
//! and READ CAPACITY. The data builders are in `scsi::inquiry`.
//! Touches only the LU's own state; no I/O.

use super::*;

impl LogicalUnit {
    /// INQUIRY (standard and VPD), REPORT LUNS, READ CAPACITY (10) and (16).
    pub(super) fn describe(
        &mut self,
        ctx: &CommandContext,
        cmd: &Command,
        wanted: u32,
    ) -> R<Prepared> {
        match cmd {
            Command::Inquiry { evpd, page, alloc } => {
                let data = if *evpd {
                    inquiry::vpd(&self.cfg, &self.naa, ctx, *page)?
                } else {
                    if *page != 0 {
                        return Err(Sense::cdb_field(2, None).into());
                    }
                    inquiry::standard(&self.cfg, ctx.alua)
                };
                Self::good(alloc_cut(data, *alloc), wanted)
            }
            Command::ReportLuns { select, alloc } => {
                if *select > 2 {
                    return Err(Sense::cdb_field(2, None).into());
                }
                if *alloc < 16 {
                    return Err(Sense::cdb_field(6, None).into());
                }
                let luns: &[u64] = if *select == 1 { &[] } else { ctx.luns };
                // SPC-4: REPORT LUNS clears this nexus' REPORTED LUNS DATA HAS CHANGED.
                self.ua
                    .clear(ctx.nexus, SenseCode::UA_REPORTED_LUNS_CHANGED);
                Self::good(alloc_cut(inquiry::report_luns(luns), *alloc), wanted)
            }
            Command::ReadCapacity10 { lba, pmi } => {
                if !*pmi && *lba != 0 {
                    return Err(Sense::cdb_field(2, None).into());
                }
                Self::good(inquiry::read_capacity_10(&self.cfg), wanted)
            }
            Command::ReadCapacity16 { alloc } => Self::good(
                alloc_cut(inquiry::read_capacity_16(&self.cfg), *alloc),
                wanted,
            ),
            _ => unreachable!("dispatch routes only these commands here"),
        }
    }
}

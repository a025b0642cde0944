//! Reservations of [`LogicalUnit`]: SCSI-2 RESERVE/RELEASE and PERSISTENT RESERVE IN/OUT (the
//! persistent reservation rules are in `scsi::pr`).
//! Touches only the LU's own state; no I/O.

use super::*;

impl LogicalUnit {
    /// Reservations: SCSI-2 RESERVE and RELEASE, PERSISTENT RESERVE IN and OUT.
    pub(super) fn reserve(
        &mut self,
        ctx: &CommandContext,
        cmd: &Command,
        data_out: &[u8],
        wanted: u32,
    ) -> R<Prepared> {
        match cmd {
            Command::Reserve { .. } => match &self.scsi2 {
                Some(h) if h != ctx.nexus => Err(Fail::Status(status::RESERVATION_CONFLICT)),
                _ => {
                    self.scsi2 = Some(ctx.nexus.clone());
                    Self::good(Vec::new(), wanted)
                }
            },
            Command::Release { .. } => {
                if self.scsi2.as_ref() == Some(ctx.nexus) {
                    self.scsi2 = None;
                }
                Self::good(Vec::new(), wanted)
            }
            Command::PersistentReserveIn { sa, alloc } => {
                let data = self.pr.in_data(*sa)?;
                Self::good(alloc_cut(data, *alloc), wanted)
            }
            Command::PersistentReserveOut {
                sa,
                scope,
                ptype,
                param_len,
            } => {
                if *sa > 7 {
                    return Err(Sense::cdb_field(1, Some(4)).into());
                }
                let p = PrOutParams::parse(*sa, *param_len, data_out)?;
                let before = self.pr.clone();
                match self.pr.out(ctx.nexus, *sa, *scope, *ptype, &p) {
                    Ok(uas) => {
                        for (n, ua) in uas {
                            self.ua.raise(&n, ua);
                        }
                        let mut o = Outcome::good(Vec::new(), wanted);
                        if self.pr != before {
                            o.effects.push(Effect::PrChanged {
                                aptpl: self.pr.aptpl,
                            });
                        }
                        Ok(Prepared::Done(o))
                    }
                    Err(PrFail::Conflict) => Err(Fail::Status(status::RESERVATION_CONFLICT)),
                    Err(PrFail::Check(s)) => Err(s.into()),
                }
            }
            _ => unreachable!("dispatch routes only these commands here"),
        }
    }
}

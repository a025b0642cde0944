//! The remaining commands of [`LogicalUnit`]: TEST UNIT READY, REQUEST SENSE, START STOP UNIT,
//! PREVENT ALLOW MEDIUM REMOVAL, REPORT SUPPORTED OPERATION CODES, READ DEFECT DATA.
//! Touches only the LU's own state; no I/O.

use super::*;

/// NO SENSE, for REQUEST SENSE without a pending condition.
const NO_SENSE: SenseCode = SenseCode::new(0, 0, 0);

impl LogicalUnit {
    /// The rest: TEST UNIT READY, REQUEST SENSE, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
    /// REPORT SUPPORTED OPERATION CODES and READ DEFECT DATA.
    pub(super) fn misc(&mut self, ctx: &CommandContext, cmd: &Command, wanted: u32) -> R<Prepared> {
        match cmd {
            Command::TestUnitReady => Self::good(Vec::new(), wanted),
            Command::RequestSense { desc, alloc } => {
                let sense = match self.ua.take(ctx.nexus) {
                    Some(ua) => Sense::new(ua),
                    None => Sense::new(NO_SENSE),
                };
                Self::good(alloc_cut(sense.to_bytes(*desc), *alloc), wanted)
            }
            Command::StartStopUnit {
                power_condition,
                loej,
                ..
            } => {
                // A fixed disk has no medium to load or eject (with POWER CONDITION 0, LOEJ
                // counts); starting and stopping are accepted and change nothing.
                if *power_condition == 0 && *loej {
                    return Err(Sense::cdb_field(4, Some(1)).into());
                }
                Self::good(Vec::new(), wanted)
            }
            Command::PreventAllow { prevent } => {
                if *prevent > 1 {
                    return Err(Sense::cdb_field(4, None).into());
                }
                Self::good(Vec::new(), wanted)
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                sa,
                alloc,
            } => {
                let data = rsoc::report(*rctd, *options, *opcode, *sa)?;
                Self::good(alloc_cut(data, *alloc), wanted)
            }
            Command::ReadDefectData {
                twelve,
                plist,
                glist,
                format,
                alloc,
            } => {
                let flags = (if *plist { 0x10 } else { 0 }) | (if *glist { 0x08 } else { 0 });
                let data = if *twelve {
                    vec![0, flags | format, 0, 0, 0, 0, 0, 0]
                } else {
                    vec![0, flags | format, 0, 0]
                };
                Self::good(alloc_cut(data, *alloc), wanted)
            }
            _ => unreachable!("dispatch routes only these commands here"),
        }
    }
}

//! ALUA commands of [`LogicalUnit`]: REPORT TARGET PORT GROUPS and SET TARGET PORT GROUPS (the
//! LU checks an STPG request against what a pair can provide, [`alua::stpg_decide`]; the
//! runtime carries out a switchover and answers when it is done).
//! Touches only the LU's own state; no I/O.

use super::*;
use crate::alua::StpgDecision;

impl LogicalUnit {
    /// ALUA: REPORT TARGET PORT GROUPS and SET TARGET PORT GROUPS.
    pub(super) fn port_groups(
        &mut self,
        ctx: &CommandContext,
        cmd: &Command,
        data_out: &[u8],
        wanted: u32,
    ) -> R<Prepared> {
        match cmd {
            Command::ReportTargetPortGroups { extended, alloc } => {
                if *alloc < 4 && *alloc != 0 {
                    return Err(Sense::cdb_field(6, None).into());
                }
                Self::good(
                    alloc_cut(inquiry::rtpg(ctx.alua, *extended), *alloc),
                    wanted,
                )
            }
            Command::SetTargetPortGroups { param_len } => self.stpg(ctx, *param_len, data_out),
            _ => unreachable!("dispatch routes only these commands here"),
        }
    }

    pub(super) fn stpg(
        &mut self,
        ctx: &CommandContext,
        param_len: u32,
        data: &[u8],
    ) -> R<Prepared> {
        if !ctx.alua.explicit {
            return Err(SenseCode::INVALID_OPCODE.into());
        }
        if param_len == 0 {
            return Self::good(Vec::new(), param_len);
        }
        if param_len < 4 || data.len() < param_len as usize || !(param_len - 4).is_multiple_of(4) {
            return Err(SenseCode::PARAM_LIST_LENGTH_ERROR.into());
        }
        let mut req = Vec::new();
        for (i, d) in data[4..param_len as usize].chunks(4).enumerate() {
            let at = (4 + 4 * i) as u16;
            // (The state is the low four bits of the descriptor's first byte.)
            let state = match AluaState::from_code(d[0] & 0x0F) {
                Some(
                    s @ (AluaState::ActiveOptimized
                    | AluaState::ActiveNonOptimized
                    | AluaState::Standby
                    | AluaState::Unavailable),
                ) => s,
                _ => return Err(Sense::param_field(at, Some(3)).into()),
            };
            let id = u16::from_be_bytes([d[2], d[3]]);
            if !ctx.alua.groups.iter().any(|g| g.id == id) {
                return Err(Sense::param_field(at + 2, None).into());
            }
            req.push((id, state));
        }
        let now: Vec<(u16, AluaState)> = ctx.alua.groups.iter().map(|g| (g.id, g.state)).collect();
        let decision = alua::stpg_decide(&now, ctx.alua.secondary, &req)
            .map_err(|i| Sense::param_field((4 + 4 * i) as u16, Some(3)))?;
        let mut o = Outcome::good(Vec::new(), param_len);
        if let StpgDecision::Activate { group, next } = decision {
            // The runtime answers once the pair has moved (or could not). The change is
            // reported to every nexus but the sender.
            self.stpg_pending = Some((ctx.nexus.clone(), next));
            o.effects.push(Effect::SetTargetPortGroups(vec![(
                group,
                AluaState::ActiveOptimized,
            )]));
        }
        Ok(Prepared::Done(o))
    }
}

//! The logical unit: its state and the command executor. The configuration is `scsi::lu_config`.
//!
//! This file holds the LU's state, its queries and resets, and the first phase of a command up to
//! `dispatch`: the ALUA gate, unit attentions, CDB decoding, reservation checks.
//! `dispatch` routes each command family to a child that extends [`LogicalUnit`] with private
//! access to its fields: `medium` (reads and writes), `describe` (INQUIRY, VPD, REPORT LUNS,
//! READ CAPACITY), `modes` (MODE SENSE/SELECT), `reserve` (SCSI-2 and persistent reservations),
//! `port_groups` (RTPG, STPG) and `misc`. No I/O: medium commands become an [`IoPlan`].

use super::cdb::{op, BlockRange, Cdb, Command, IoFlags};
use super::inquiry;
use super::io::{run_io, IoOp, IoPlan, VerifyMode};
use super::lu_config::{ConfigError, LuConfig};
use super::mode::ModePages;
use super::pr::{Access, PrFail, PrOutParams, PrState};
use super::rsoc;
use super::sense_data::Sense;
use super::store::BlockStore;
use super::types::{AluaPicture, CommandContext, Effect, Nexus, Outcome};
use super::ua::UaQueues;
use crate::alua::{self, AluaState, Gate};
use crate::sense::{status, SenseCode};

mod describe;
mod medium;
mod misc;
mod modes;
mod port_groups;
mod reserve;

/// Kinds of reset a logical unit sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// LOGICAL UNIT RESET task management function.
    LunReset,
    /// TARGET WARM RESET.
    TargetWarm,
    /// TARGET COLD RESET.
    TargetCold,
    /// Power on (daemon start).
    PowerOn,
}

/// A command failure inside the executor.
enum Fail {
    Check(Sense),
    Status(u8),
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Fail {
        Fail::Check(s)
    }
}

impl From<SenseCode> for Fail {
    fn from(c: SenseCode) -> Fail {
        Fail::Check(Sense::new(c))
    }
}

type R<T> = Result<T, Fail>;

/// The outcome of [`LogicalUnit::prepare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The command is finished.
    Done(Outcome),
    /// The command needs the medium: run the plan with [`run_io`](super::run_io).
    Io(IoPlan),
}

/// The replicated part of a logical unit's state (see [`LogicalUnit::shared_state`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedLuState {
    pub pr: PrState,
    pub scsi2: Option<Nexus>,
    pub mode: ModePages,
}

/// One logical unit: configuration, mode pages, unit attentions, reservations. Not locked
/// internally; the runtime keeps it behind its own lock and calls [`LogicalUnit::prepare`] under
/// it, then [`super::run_io`] outside it.
#[derive(Clone, Debug)]
pub struct LogicalUnit {
    cfg: LuConfig,
    naa: [u8; 16],
    mode: ModePages,
    ua: UaQueues,
    scsi2: Option<Nexus>,
    pr: PrState,
    last_alua: Option<Vec<(u16, AluaState)>>,
    /// An accepted SET TARGET PORT GROUPS: its sender and the picture it asked for. When the
    /// runtime applies exactly that picture, the sender is spared the 2A/06.
    stpg_pending: Option<(Nexus, Vec<(u16, AluaState)>)>,
}

fn alloc_cut(mut data: Vec<u8>, alloc: u32) -> Vec<u8> {
    data.truncate(alloc as usize);
    data
}

impl LogicalUnit {
    /// A logical unit with default mode pages, no reservations, no nexus known.
    pub fn new(cfg: LuConfig) -> Result<LogicalUnit, ConfigError> {
        let naa = cfg.validate()?;
        let mode = ModePages::new(cfg.write_cache);
        Ok(LogicalUnit {
            cfg,
            naa,
            mode,
            ua: UaQueues::default(),
            scsi2: None,
            pr: PrState::default(),
            last_alua: None,
            stpg_pending: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LuConfig {
        &self.cfg
    }

    /// The NAA designator reported in VPD 83.
    pub fn naa(&self) -> [u8; 16] {
        self.naa
    }

    /// The current mode pages.
    pub fn mode_pages(&self) -> &ModePages {
        &self.mode
    }

    /// The persistent reservation state (persist it when APTPL is set).
    pub fn pr_state(&self) -> &PrState {
        &self.pr
    }

    /// Restore a persisted (or peer-copied) persistent reservation state.
    pub fn restore_pr(&mut self, st: PrState) {
        self.pr = st;
    }

    /// The state both controllers of an HA pair keep identical: persistent reservations, the
    /// SCSI-2 reservation and the mode pages. The primary sends it to the peer after a command
    /// that may change it; the peer applies it with [`LogicalUnit::restore_shared`].
    pub fn shared_state(&self) -> SharedLuState {
        SharedLuState {
            pr: self.pr.clone(),
            scsi2: self.scsi2.clone(),
            mode: self.mode.clone(),
        }
    }

    /// Applies the peer's [`SharedLuState`] (unit attention queues stay per controller).
    pub fn restore_shared(&mut self, st: SharedLuState) {
        self.pr = st.pr;
        self.scsi2 = st.scsi2;
        self.mode = st.mode;
    }

    /// The nexus holding the SCSI-2 reservation, if any.
    pub fn scsi2_holder(&self) -> Option<&Nexus> {
        self.scsi2.as_ref()
    }

    /// The unit attentions pending for `nexus`, highest priority first.
    pub fn pending_unit_attentions(&self, nexus: &Nexus) -> Vec<SenseCode> {
        self.ua.pending(nexus).to_vec()
    }

    /// Queue a unit attention for every known nexus except `except`.
    pub fn raise_ua_all(&mut self, ua: SenseCode, except: Option<&Nexus>) {
        self.ua.raise_all(ua, except);
    }

    /// Queue a unit attention for one nexus.
    pub fn raise_ua(&mut self, nexus: &Nexus, ua: SenseCode) {
        self.ua.raise(nexus, ua);
    }

    /// Change the capacity; every nexus gets 2A/09 CAPACITY DATA HAS CHANGED.
    pub fn set_num_blocks(&mut self, n: u64) {
        if n != self.cfg.num_blocks && n > 0 {
            self.cfg.num_blocks = n;
            self.ua.raise_all(SenseCode::UA_CAPACITY_CHANGED, None);
        }
    }

    /// A reset: the SCSI-2 reservation is dropped, every nexus gets 29/00, persistent
    /// reservations stay. A cold reset or power on also restores the default mode pages.
    pub fn reset(&mut self, kind: ResetKind) {
        self.scsi2 = None;
        // 29/00 (the generic reset condition) for every kind: it is the one initiators such
        // as libiscsi's login sequence treat as routine.
        let ua = SenseCode::UA_POWER_ON_RESET;
        if matches!(kind, ResetKind::TargetCold | ResetKind::PowerOn) {
            self.mode = ModePages::new(self.cfg.write_cache);
        }
        self.ua.raise_all(ua, None);
    }

    /// The I_T nexus is gone (logout, connection loss): a SCSI-2 reservation it held is
    /// released, and its unit-attention queue is dropped (a returning nexus starts with 29/00).
    /// PR registrations stay.
    pub fn nexus_lost(&mut self, nexus: &Nexus) {
        if self.scsi2.as_ref() == Some(nexus) {
            self.scsi2 = None;
        }
        self.ua.forget(nexus);
    }

    fn descriptor_sense(&self) -> bool {
        self.mode.d_sense()
    }

    fn fail(&self, f: Fail, wanted: u32) -> Outcome {
        match f {
            Fail::Check(s) => Outcome::check(s, self.descriptor_sense(), wanted),
            Fail::Status(st) => Outcome::status_only(st, wanted),
        }
    }

    /// Notice ALUA changes: every nexus gets 2A/06 when any group's state changed.
    fn track_alua(&mut self, ctx: &CommandContext) {
        self.alua_changed(ctx.alua);
    }

    /// The LU's ALUA picture is now `pic`: if any group's state changed, every nexus gets 2A/06
    /// ASYMMETRIC ACCESS STATE CHANGED, except the sender of an accepted SET TARGET PORT GROUPS
    /// while its change is under way (until the picture it asked for is reached, or
    /// [`LogicalUnit::stpg_ended`]). The runtime calls this when it replaces the picture.
    pub fn alua_changed(&mut self, pic: &AluaPicture) {
        let now: Vec<(u16, AluaState)> = pic.groups.iter().map(|g| (g.id, g.state)).collect();
        match &self.last_alua {
            None => self.last_alua = Some(now),
            Some(prev) if *prev != now => {
                let except = self.stpg_pending.as_ref().map(|(n, _)| n.clone());
                if self.stpg_pending.as_ref().is_some_and(|(_, w)| *w == now) {
                    self.stpg_pending = None;
                }
                self.ua
                    .raise_all(SenseCode::UA_ALUA_STATE_CHANGED, except.as_ref());
                self.last_alua = Some(now);
            }
            Some(_) => {}
        }
    }

    /// The SET TARGET PORT GROUPS accepted last is over (it failed, or timed out): later
    /// changes are reported to its sender too.
    pub fn stpg_ended(&mut self) {
        self.stpg_pending = None;
    }

    /// Phase one of a command (see the module documentation). `data_out` holds the Data-Out
    /// bytes received (possibly fewer or more than the CDB asks for).
    pub fn prepare(&mut self, ctx: &CommandContext, cdb: &[u8], data_out: &[u8]) -> Prepared {
        self.track_alua(ctx);
        self.ua.touch(ctx.nexus);
        let opcode = cdb.first().copied().unwrap_or(0xFF);
        let state = ctx.alua.state_of(ctx.nexus.rtpi);
        if let Gate::Deny(code) = alua::gate(state, cdb) {
            return Prepared::Done(self.fail(Fail::from(code), 0));
        }
        if !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
            if let Some(ua) = self.ua.take(ctx.nexus) {
                return Prepared::Done(self.fail(Fail::from(ua), 0));
            }
        }
        let cmd = match Cdb::parse(cdb) {
            Ok(c) => c,
            Err(s) => return Prepared::Done(self.fail(Fail::Check(s), 0)),
        };
        let wanted = self.wanted_len(&cmd);
        if let Err(f) = self.check_reservations(ctx.nexus, &cmd) {
            return Prepared::Done(self.fail(f, wanted));
        }
        match self.dispatch(ctx, &cmd, data_out, wanted) {
            Ok(p) => p,
            Err(f) => Prepared::Done(self.fail(f, wanted)),
        }
    }

    /// Both phases in one call.
    pub fn execute(
        &mut self,
        ctx: &CommandContext,
        cdb: &[u8],
        data_out: &[u8],
        store: &dyn BlockStore,
    ) -> Outcome {
        match self.prepare(ctx, cdb, data_out) {
            Prepared::Done(o) => o,
            Prepared::Io(plan) => run_io(&plan, store, data_out),
        }
    }

    fn wanted_len(&self, cmd: &Command) -> u32 {
        let bs = self.cfg.block_size;
        let blocks = |r: &BlockRange| r.blocks.saturating_mul(bs);
        match cmd {
            Command::RequestSense { alloc, .. }
            | Command::Inquiry { alloc, .. }
            | Command::ReportLuns { alloc, .. }
            | Command::ReadCapacity16 { alloc }
            | Command::GetLbaStatus { alloc, .. }
            | Command::ModeSense { alloc, .. }
            | Command::PersistentReserveIn { alloc, .. }
            | Command::ReportSupportedOpcodes { alloc, .. }
            | Command::ReportTargetPortGroups { alloc, .. }
            | Command::ReadDefectData { alloc, .. } => *alloc,
            Command::ReadCapacity10 { .. } => 8,
            Command::Read { range, .. }
            | Command::Write { range, .. }
            | Command::WriteAndVerify { range, .. }
            | Command::OrWrite { range, .. } => blocks(range),
            Command::Verify { range, bytchk, .. } => match bytchk {
                1 => blocks(range),
                3 => bs,
                _ => 0,
            },
            Command::CompareAndWrite { range, .. } => blocks(range).saturating_mul(2),
            Command::WriteSame { ndob, .. } => {
                if *ndob {
                    0
                } else {
                    bs
                }
            }
            Command::Unmap { param_len, .. }
            | Command::ModeSelect { param_len, .. }
            | Command::PersistentReserveOut { param_len, .. }
            | Command::SetTargetPortGroups { param_len } => *param_len,
            _ => 0,
        }
    }

    fn access(cmd: &Command) -> Access {
        match cmd {
            Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::RequestSense { .. }
            | Command::PersistentReserveIn { .. }
            | Command::PersistentReserveOut { .. }
            | Command::ReportSupportedOpcodes { .. }
            | Command::ReportTargetPortGroups { .. }
            | Command::SetTargetPortGroups { .. }
            | Command::TestUnitReady
            | Command::ReadCapacity10 { .. }
            | Command::ReadCapacity16 { .. }
            | Command::Reserve { .. }
            | Command::Release { .. } => Access::Always,
            Command::Read { .. }
            | Command::Verify { .. }
            | Command::PreFetch { .. }
            | Command::GetLbaStatus { .. }
            | Command::ModeSense { .. }
            | Command::ReadDefectData { .. } => Access::Read,
            _ => Access::Write,
        }
    }

    fn check_reservations(&self, nexus: &Nexus, cmd: &Command) -> R<()> {
        let conflict = Fail::Status(status::RESERVATION_CONFLICT);
        if let Some(holder) = &self.scsi2 {
            if holder != nexus {
                let allowed = matches!(
                    cmd,
                    Command::Inquiry { .. }
                        | Command::ReportLuns { .. }
                        | Command::RequestSense { .. }
                        | Command::Release { .. }
                        | Command::PersistentReserveIn { .. }
                        | Command::ReportSupportedOpcodes { .. }
                        | Command::ReportTargetPortGroups { .. }
                );
                if !allowed {
                    return Err(conflict);
                }
            }
        }
        if matches!(cmd, Command::Reserve { .. } | Command::Release { .. })
            && self.pr.reservation.is_some()
        {
            return Err(conflict);
        }
        if self.pr.conflicts(nexus, Self::access(cmd)) {
            return Err(conflict);
        }
        Ok(())
    }

    fn good(data: Vec<u8>, wanted: u32) -> R<Prepared> {
        Ok(Prepared::Done(Outcome::good(data, wanted)))
    }

    /// Routes a decoded command to its family (one child module each).
    fn dispatch(
        &mut self,
        ctx: &CommandContext,
        cmd: &Command,
        data_out: &[u8],
        wanted: u32,
    ) -> R<Prepared> {
        match cmd {
            Command::Read { .. }
            | Command::Write { .. }
            | Command::Verify { .. }
            | Command::WriteAndVerify { .. }
            | Command::OrWrite { .. }
            | Command::CompareAndWrite { .. }
            | Command::WriteSame { .. }
            | Command::Unmap { .. }
            | Command::SynchronizeCache { .. }
            | Command::PreFetch { .. }
            | Command::GetLbaStatus { .. } => self.medium(cmd, data_out, wanted),
            Command::Inquiry { .. }
            | Command::ReportLuns { .. }
            | Command::ReadCapacity10 { .. }
            | Command::ReadCapacity16 { .. } => self.describe(ctx, cmd, wanted),
            Command::ModeSense { .. } | Command::ModeSelect { .. } => {
                self.modes(ctx, cmd, data_out, wanted)
            }
            Command::Reserve { .. }
            | Command::Release { .. }
            | Command::PersistentReserveIn { .. }
            | Command::PersistentReserveOut { .. } => self.reserve(ctx, cmd, data_out, wanted),
            Command::ReportTargetPortGroups { .. } | Command::SetTargetPortGroups { .. } => {
                self.port_groups(ctx, cmd, data_out, wanted)
            }
            Command::TestUnitReady
            | Command::RequestSense { .. }
            | Command::StartStopUnit { .. }
            | Command::PreventAllow { .. }
            | Command::ReportSupportedOpcodes { .. }
            | Command::ReadDefectData { .. } => self.misc(ctx, cmd, wanted),
        }
    }
}

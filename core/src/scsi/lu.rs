//! The logical unit: configuration, state and the command executor.

use super::cdb::{op, BlockRange, Cdb, Command, IoFlags};
use super::inquiry;
use super::io::{run_io, IoOp, IoPlan, VerifyMode};
use super::mode::ModePages;
use super::pr::{Access, PrFail, PrOutParams, PrState};
use super::rsoc;
use super::sense_data::Sense;
use super::store::BlockStore;
use super::ua::UaQueues;
use super::{CommandContext, Effect, Nexus, Outcome, Prepared};
use crate::alua::{self, AluaState, Gate};
use crate::sense::{status, SenseCode};

/// Configuration of one logical unit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LuConfig {
    /// LUN number.
    pub lun: u64,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
    pub read_only: bool,
    /// Unit serial number (VPD 80), identical on both controllers.
    pub serial: String,
    /// NAA 6 designator (VPD 83); derived from the serial when `None`.
    pub naa: Option<[u8; 16]>,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Thin provisioning: UNMAP, WRITE SAME with UNMAP, LBPME, GET LBA STATUS.
    pub thin: bool,
    /// MAXIMUM TRANSFER LENGTH in blocks (VPD B0).
    pub max_transfer_blocks: u32,
    /// MAXIMUM WRITE SAME LENGTH in blocks.
    pub max_write_same_blocks: u64,
    /// MAXIMUM UNMAP LBA COUNT.
    pub max_unmap_blocks: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks.
    pub max_compare_write_blocks: u8,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY 16): 2^n logical blocks per
    /// physical block. Defaults to a 4096-byte physical block.
    pub lbppbe: u8,
}

impl LuConfig {
    /// A writable, thin-provisioned LU with Duet's defaults.
    pub fn new(lun: u64, block_size: u32, num_blocks: u64, serial: &str) -> LuConfig {
        let max_transfer_blocks = (8 * 1024 * 1024 / block_size.max(1)).max(1);
        LuConfig {
            lun,
            block_size,
            num_blocks,
            read_only: false,
            serial: serial.to_string(),
            naa: None,
            vendor: "DUET".into(),
            product: "Duet disk".into(),
            revision: "0001".into(),
            thin: true,
            max_transfer_blocks,
            // Equal to the transfer limit, so WRITE SAME and WRITE agree on what is too long.
            max_write_same_blocks: max_transfer_blocks as u64,
            max_unmap_blocks: 0x40000,
            max_unmap_descriptors: 256,
            max_compare_write_blocks: 255,
            lbppbe: if block_size == 512 { 3 } else { 0 },
        }
    }
}

/// Why a configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("block size {0} is not supported (use 512 or 4096)")]
    BlockSize(u32),
    #[error("the LU has no blocks")]
    Empty,
    #[error("the serial number must be 1-200 printable ASCII characters")]
    Serial,
    #[error("the NAA designator must start with NAA type 6")]
    Naa,
    #[error("a transfer limit is zero")]
    Limits,
}

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

/// NO SENSE, for REQUEST SENSE without a pending condition.
const NO_SENSE: SenseCode = SenseCode::new(0, 0, 0);

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
        if cfg.block_size != 512 && cfg.block_size != 4096 {
            return Err(ConfigError::BlockSize(cfg.block_size));
        }
        if cfg.num_blocks == 0 {
            return Err(ConfigError::Empty);
        }
        if cfg.serial.is_empty()
            || cfg.serial.len() > 200
            || !cfg.serial.bytes().all(|b| (0x21..0x7F).contains(&b))
        {
            return Err(ConfigError::Serial);
        }
        if cfg.lbppbe > 15 {
            return Err(ConfigError::Limits);
        }
        if cfg.max_transfer_blocks == 0
            || cfg.max_write_same_blocks == 0
            || (cfg.thin && (cfg.max_unmap_blocks == 0 || cfg.max_unmap_descriptors == 0))
        {
            return Err(ConfigError::Limits);
        }
        let naa = match cfg.naa {
            Some(n) if n[0] >> 4 == 6 => n,
            Some(_) => return Err(ConfigError::Naa),
            None => super::ident::default_naa(&cfg.serial),
        };
        Ok(LogicalUnit {
            cfg,
            naa,
            mode: ModePages::default(),
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
            self.mode = ModePages::default();
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
        let now: Vec<(u16, AluaState)> = ctx.alua.groups.iter().map(|g| (g.id, g.state)).collect();
        match &self.last_alua {
            None => self.last_alua = Some(now),
            Some(prev) if *prev != now => {
                let except = match self.stpg_pending.take() {
                    Some((sender, wanted)) if wanted == now => Some(sender),
                    _ => None,
                };
                self.ua
                    .raise_all(SenseCode::UA_ALUA_STATE_CHANGED, except.as_ref());
                self.last_alua = Some(now);
            }
            Some(_) => {}
        }
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

    fn check_range(&self, r: &BlockRange) -> R<()> {
        let n = self.cfg.num_blocks;
        if r.lba >= n || r.lba.saturating_add(r.blocks as u64) > n {
            return Err(SenseCode::LBA_OUT_OF_RANGE.into());
        }
        Ok(())
    }

    fn check_transfer(&self, r: &BlockRange, cdb_len_byte: u16) -> R<()> {
        if r.blocks > self.cfg.max_transfer_blocks {
            return Err(Sense::cdb_field(cdb_len_byte, None).into());
        }
        Ok(())
    }

    fn check_writable(&self) -> R<()> {
        if self.cfg.read_only || self.mode.swp() {
            return Err(SenseCode::WRITE_PROTECTED.into());
        }
        Ok(())
    }

    fn offset(&self, lba: u64) -> u64 {
        lba * self.cfg.block_size as u64
    }

    fn bytes(&self, blocks: u64) -> u64 {
        blocks * self.cfg.block_size as u64
    }

    fn plan(&self, op: IoOp, wanted: u32) -> Prepared {
        Prepared::Io(IoPlan {
            op,
            wanted_len: wanted,
            descriptor_sense: self.descriptor_sense(),
        })
    }

    fn good(data: Vec<u8>, wanted: u32) -> R<Prepared> {
        Ok(Prepared::Done(Outcome::good(data, wanted)))
    }

    fn protect_check(flags: &IoFlags) -> R<()> {
        if flags.protect != 0 {
            return Err(Sense::cdb_field(1, Some(7)).into());
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        ctx: &CommandContext,
        cmd: &Command,
        data_out: &[u8],
        wanted: u32,
    ) -> R<Prepared> {
        let bs = self.cfg.block_size as u64;
        match cmd {
            Command::TestUnitReady => Self::good(Vec::new(), wanted),
            Command::RequestSense { desc, alloc } => {
                let sense = match self.ua.take(ctx.nexus) {
                    Some(ua) => Sense::new(ua),
                    None => Sense::new(NO_SENSE),
                };
                Self::good(alloc_cut(sense.to_bytes(*desc), *alloc), wanted)
            }
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
                // Write only the whole blocks received (iSCSI EDTL may be shorter).
                let have = (data_out.len() as u64 / bs).min(range.blocks as u64);
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
                let have = (data_out.len() as u64 / bs).min(range.blocks as u64);
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
        }
    }

    fn parse_unmap(&self, param_len: u32, data: &[u8]) -> R<Vec<(u64, u64)>> {
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

    fn mode_sense_data(&self, six: bool, dbd: bool, llbaa: bool, pages: &[u8]) -> Vec<u8> {
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

    fn mode_select(&mut self, nexus: &Nexus, six: bool, param_len: u32, data: &[u8]) -> R<()> {
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

    fn stpg(&mut self, ctx: &CommandContext, param_len: u32, data: &[u8]) -> R<Prepared> {
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
            let state = match AluaState::from_code(d[0] & 0x0F) {
                Some(
                    s @ (AluaState::ActiveOptimized
                    | AluaState::ActiveNonOptimized
                    | AluaState::Standby
                    | AluaState::Unavailable),
                ) => s,
                _ => return Err(Sense::param_field(at, None).into()),
            };
            let id = u16::from_be_bytes([d[2], d[3]]);
            if !ctx.alua.groups.iter().any(|g| g.id == id) {
                return Err(Sense::param_field(at + 2, None).into());
            }
            req.push((id, state));
        }
        // A single group can only be Active/Optimized.
        if ctx.alua.groups.len() == 1 && req.iter().any(|(_, s)| *s != AluaState::ActiveOptimized) {
            return Err(Sense::param_field(4, None).into());
        }
        let unchanged = req
            .iter()
            .all(|(id, s)| ctx.alua.groups.iter().any(|g| g.id == *id && g.state == *s));
        let mut o = Outcome::good(Vec::new(), param_len);
        if !unchanged {
            // The change is reported (to everyone but the sender) once the runtime applies it.
            let mut next: Vec<(u16, AluaState)> =
                ctx.alua.groups.iter().map(|g| (g.id, g.state)).collect();
            for (id, s) in &req {
                for e in next.iter_mut() {
                    if e.0 == *id {
                        e.1 = *s;
                    }
                }
            }
            self.stpg_pending = Some((ctx.nexus.clone(), next));
            o.effects.push(Effect::SetTargetPortGroups(req));
        }
        Ok(Prepared::Done(o))
    }
}

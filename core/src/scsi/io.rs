//! The medium phase of a command: an [`IoPlan`] (plain data built by
//! [`super::LogicalUnit::prepare`]) and [`run_io`], which executes it against a [`BlockStore`]
//! without touching the logical unit's state.

use super::sense_data::Sense;
use super::store::{first_difference, BlockStore, StoreError};
use super::types::{Effect, Outcome};
use crate::sense::SenseCode;
use serde::{Deserialize, Serialize};

/// What a VERIFY compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyMode {
    /// BYTCHK 0: only check that the blocks are readable.
    Medium,
    /// BYTCHK 1: compare the blocks with Data-Out (same length).
    Bytes,
    /// BYTCHK 3: compare every block with the single block of Data-Out.
    EveryBlock,
}

/// One medium operation. Offsets and lengths are in bytes of the store; `data_at` is an offset
/// into the command's Data-Out buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoOp {
    /// Read `len` bytes at `offset` into Data-In.
    Read { offset: u64, len: u64 },
    /// Write Data-Out `[data_at, data_at + len)` at `offset`; with `fua`, flush afterwards.
    Write {
        offset: u64,
        len: u64,
        data_at: usize,
        fua: bool,
    },
    /// Replicate one block (Data-Out `[0, block_size)`, or zeros when `zeros`) over `blocks`
    /// blocks from `offset`. With `unmap`, deallocate instead (the LU only sets `unmap` when
    /// deallocated blocks read back as zeros).
    WriteSame {
        offset: u64,
        block_size: u32,
        blocks: u64,
        zeros: bool,
        unmap: bool,
        fua: bool,
    },
    /// Deallocate each `(offset, len)` range.
    Unmap { ranges: Vec<(u64, u64)> },
    /// Make the medium durable.
    Flush,
    /// Compare Data-Out `[0, len)` with the medium at `offset`; if equal write Data-Out
    /// `[len, 2 len)` there. Atomic with respect to other writes (see [`IoPlan::needs_exclusive`]).
    CompareAndWrite { offset: u64, len: u64, fua: bool },
    /// Read `len` bytes at `offset` and compare per `mode`.
    Verify {
        offset: u64,
        len: u64,
        block_size: u32,
        mode: VerifyMode,
    },
    /// Write Data-Out `[0, len)` at `offset` (durably), then read back and compare.
    WriteAndVerify { offset: u64, len: u64 },
    /// OR Data-Out `[0, len)` into the medium at `offset` (read-modify-write).
    OrWrite { offset: u64, len: u64, fua: bool },
    /// GET LBA STATUS from `lba` to the end of the LU, at most `max_descriptors` descriptors.
    GetLbaStatus {
        lba: u64,
        num_blocks: u64,
        block_size: u32,
        max_descriptors: u32,
        alloc: u32,
    },
}

/// A medium command ready to run: built by [`super::LogicalUnit::prepare`], run by [`run_io`].
/// Plain data: in HA mode 1 the primary prepares a command and the secondary runs the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoPlan {
    pub op: IoOp,
    /// Bytes the CDB asked to transfer, for residuals.
    pub wanted_len: u32,
    /// Whether sense data must use descriptor format (Control mode page D_SENSE).
    pub descriptor_sense: bool,
}

impl IoPlan {
    /// The byte range of the medium the plan touches (for a range lock), if any. UNMAP gives the
    /// hull of its ranges.
    pub fn byte_range(&self) -> Option<(u64, u64)> {
        match &self.op {
            IoOp::Read { offset, len }
            | IoOp::Write { offset, len, .. }
            | IoOp::CompareAndWrite { offset, len, .. }
            | IoOp::Verify { offset, len, .. }
            | IoOp::WriteAndVerify { offset, len }
            | IoOp::OrWrite { offset, len, .. } => Some((*offset, *len)),
            IoOp::WriteSame {
                offset,
                block_size,
                blocks,
                ..
            } => Some((*offset, blocks.saturating_mul(*block_size as u64))),
            IoOp::Unmap { ranges } => {
                let start = ranges.iter().map(|r| r.0).min()?;
                let end = ranges.iter().map(|r| r.0.saturating_add(r.1)).max()?;
                Some((start, end - start))
            }
            IoOp::Flush | IoOp::GetLbaStatus { .. } => None,
        }
    }

    /// Whether the plan modifies the medium.
    pub fn is_write(&self) -> bool {
        matches!(
            self.op,
            IoOp::Write { .. }
                | IoOp::WriteSame { .. }
                | IoOp::Unmap { .. }
                | IoOp::CompareAndWrite { .. }
                | IoOp::WriteAndVerify { .. }
                | IoOp::OrWrite { .. }
        )
    }

    /// Whether the plan is a read-modify-write that must exclude every other write to its range
    /// while it runs (COMPARE AND WRITE, ORWRITE), unless the store's own
    /// [`BlockStore::compare_and_write`] is atomic (then only ORWRITE needs it).
    pub fn needs_exclusive(&self) -> bool {
        matches!(self.op, IoOp::CompareAndWrite { .. } | IoOp::OrWrite { .. })
    }
}

/// The sense of a failed read from the store. A store fenced at the disk answers like a
/// controller in transition, so that the host retries on the other path (never a RESERVATION
/// CONFLICT: the conflict is between the controllers, not the host's).
pub fn read_err(e: StoreError) -> Sense {
    match e {
        StoreError::OutOfRange => Sense::new(SenseCode::LBA_OUT_OF_RANGE),
        StoreError::ReservationConflict => Sense::new(SenseCode::ALUA_TRANSITIONING),
        StoreError::Unsupported | StoreError::Io(_) => {
            Sense::new(SenseCode::UNRECOVERED_READ_ERROR)
        }
    }
}

/// The sense of a failed write (or flush, unmap) to the store; see [`read_err`].
pub fn write_err(e: StoreError) -> Sense {
    match e {
        StoreError::OutOfRange => Sense::new(SenseCode::LBA_OUT_OF_RANGE),
        StoreError::Unsupported => Sense::new(SenseCode::INVALID_FIELD_IN_CDB),
        StoreError::ReservationConflict => Sense::new(SenseCode::ALUA_TRANSITIONING),
        StoreError::Io(_) => Sense::new(SenseCode::WRITE_ERROR),
    }
}

/// Why a medium operation failed: the sense for the host, and whether the store refused this
/// controller with a reservation conflict (fenced at the disk). Every medium path (this module's
/// [`run_io`], the runtime's io_uring path) turns store errors into outcomes through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediumFailure {
    pub sense: Sense,
    pub fenced: bool,
}

impl From<Sense> for MediumFailure {
    fn from(sense: Sense) -> MediumFailure {
        MediumFailure {
            sense,
            fenced: false,
        }
    }
}

impl MediumFailure {
    /// A failed read: [`read_err`]'s sense.
    pub fn read(e: StoreError) -> MediumFailure {
        MediumFailure {
            fenced: matches!(e, StoreError::ReservationConflict),
            sense: read_err(e),
        }
    }

    /// A failed write, flush or unmap: [`write_err`]'s sense.
    pub fn write(e: StoreError) -> MediumFailure {
        MediumFailure {
            fenced: matches!(e, StoreError::ReservationConflict),
            sense: write_err(e),
        }
    }

    /// The outcome of `plan` failing this way: CHECK CONDITION, plus
    /// [`Effect::BackendFenced`] when the store refused this controller.
    pub fn outcome(self, plan: &IoPlan) -> Outcome {
        let mut o = Outcome::check(self.sense, plan.descriptor_sense, plan.wanted_len);
        if self.fenced {
            o.effects.push(Effect::BackendFenced);
        }
        o
    }
}

type Failed = MediumFailure;

fn rd(e: StoreError) -> Failed {
    MediumFailure::read(e)
}

fn wr(e: StoreError) -> Failed {
    MediumFailure::write(e)
}

fn slice(data: &[u8], at: usize, len: u64) -> Result<&[u8], Sense> {
    let end = (len as usize)
        .checked_add(at)
        .ok_or(Sense::new(SenseCode::INVALID_FIELD_IN_COMMAND_IU))?;
    data.get(at..end)
        .ok_or(Sense::new(SenseCode::INVALID_FIELD_IN_COMMAND_IU))
}

fn buffer(len: u64) -> Result<Vec<u8>, Sense> {
    // Transfers are bounded by the LU's maximum transfer length; refuse absurd sizes anyway.
    if len > (1 << 30) {
        return Err(Sense::new(SenseCode::INVALID_FIELD_IN_CDB));
    }
    Ok(vec![0u8; len as usize])
}

fn write_same(
    store: &dyn BlockStore,
    offset: u64,
    block_size: u32,
    blocks: u64,
    block: &[u8],
    unmap: bool,
) -> Result<(), Failed> {
    let bs = block_size as u64;
    let total = blocks
        .checked_mul(bs)
        .ok_or(Sense::new(SenseCode::LBA_OUT_OF_RANGE))?;
    if unmap {
        // Deallocate: the blocks read back as zeros (LBPRZ), whatever the Data-Out block held,
        // as libiscsi's WriteSame*.UnmapUntilEnd expects.
        return store.punch_hole(offset, total).map_err(wr);
    }
    if block.iter().all(|b| *b == 0) {
        return store.write_zeroes(offset, total).map_err(wr);
    }
    // Replicate the block into a buffer of up to 1 MiB and write it repeatedly.
    let per = (((1u64 << 20) / bs).max(1)).min(blocks);
    let mut buf = Vec::with_capacity((per * bs) as usize);
    for _ in 0..per {
        buf.extend_from_slice(block);
    }
    let mut done = 0u64;
    while done < blocks {
        let n = per.min(blocks - done);
        store
            .write_at(offset + done * bs, &buf[..(n * bs) as usize])
            .map_err(wr)?;
        done += n;
    }
    Ok(())
}

fn run(op: &IoOp, store: &dyn BlockStore, data_out: &[u8]) -> Result<Vec<u8>, Failed> {
    match op {
        IoOp::Read { offset, len } => {
            let mut buf = buffer(*len)?;
            store.read_at(*offset, &mut buf).map_err(rd)?;
            Ok(buf)
        }
        IoOp::Write {
            offset,
            len,
            data_at,
            fua,
        } => {
            let d = slice(data_out, *data_at, *len)?;
            store.write_at(*offset, d).map_err(wr)?;
            if *fua {
                store.flush().map_err(wr)?;
            }
            Ok(Vec::new())
        }
        IoOp::WriteSame {
            offset,
            block_size,
            blocks,
            zeros,
            unmap,
            fua,
        } => {
            let zero_block;
            let block = if *zeros {
                zero_block = vec![0u8; *block_size as usize];
                &zero_block[..]
            } else {
                slice(data_out, 0, *block_size as u64)?
            };
            write_same(store, *offset, *block_size, *blocks, block, *unmap)?;
            if *fua {
                store.flush().map_err(wr)?;
            }
            Ok(Vec::new())
        }
        IoOp::Unmap { ranges } => {
            for (o, l) in ranges {
                if *l > 0 {
                    store.punch_hole(*o, *l).map_err(wr)?;
                }
            }
            Ok(Vec::new())
        }
        IoOp::Flush => {
            store.flush().map_err(wr)?;
            Ok(Vec::new())
        }
        IoOp::CompareAndWrite { offset, len, fua } => {
            let expect = slice(data_out, 0, *len)?;
            let data = slice(data_out, *len as usize, *len)?;
            match store.compare_and_write(*offset, expect, data).map_err(wr)? {
                Some(i) => Err(Sense::new(SenseCode::MISCOMPARE)
                    .with_information(i as u64)
                    .into()),
                None => {
                    if *fua {
                        store.flush().map_err(wr)?;
                    }
                    Ok(Vec::new())
                }
            }
        }
        IoOp::Verify {
            offset,
            len,
            block_size,
            mode,
        } => {
            let mut cur = buffer(*len)?;
            store.read_at(*offset, &mut cur).map_err(rd)?;
            let diff = match mode {
                VerifyMode::Medium => None,
                VerifyMode::Bytes => first_difference(&cur, slice(data_out, 0, *len)?),
                VerifyMode::EveryBlock => {
                    let block = slice(data_out, 0, *block_size as u64)?;
                    cur.chunks(*block_size as usize)
                        .enumerate()
                        .find_map(|(i, c)| {
                            first_difference(c, block).map(|d| i * *block_size as usize + d)
                        })
                }
            };
            match diff {
                Some(i) => Err(Sense::new(SenseCode::MISCOMPARE)
                    .with_information(i as u64)
                    .into()),
                None => Ok(Vec::new()),
            }
        }
        IoOp::WriteAndVerify { offset, len } => {
            let d = slice(data_out, 0, *len)?;
            store.write_at(*offset, d).map_err(wr)?;
            store.flush().map_err(wr)?;
            let mut cur = buffer(*len)?;
            store.read_at(*offset, &mut cur).map_err(rd)?;
            match first_difference(&cur, d) {
                Some(i) => Err(Sense::new(SenseCode::MISCOMPARE)
                    .with_information(i as u64)
                    .into()),
                None => Ok(Vec::new()),
            }
        }
        IoOp::OrWrite { offset, len, fua } => {
            let d = slice(data_out, 0, *len)?;
            let mut cur = buffer(*len)?;
            store.read_at(*offset, &mut cur).map_err(rd)?;
            for (c, x) in cur.iter_mut().zip(d) {
                *c |= *x;
            }
            store.write_at(*offset, &cur).map_err(wr)?;
            if *fua {
                store.flush().map_err(wr)?;
            }
            Ok(Vec::new())
        }
        IoOp::GetLbaStatus {
            lba,
            num_blocks,
            block_size,
            max_descriptors,
            alloc,
        } => {
            let bs = *block_size as u64;
            let mut out = vec![0u8; 8];
            let mut cur = *lba;
            let mut n = 0u32;
            while cur < *num_blocks && n < (*max_descriptors).max(1) {
                let remaining = (*num_blocks - cur).saturating_mul(bs);
                let (run, mapped) = store.allocation(cur * bs, remaining).map_err(rd)?;
                let run_blocks = (run.div_ceil(bs)).clamp(1, u32::MAX as u64);
                out.extend_from_slice(&cur.to_be_bytes());
                out.extend_from_slice(&(run_blocks as u32).to_be_bytes());
                out.push(if mapped { 0 } else { 1 });
                out.extend_from_slice(&[0, 0, 0]);
                cur += run_blocks;
                n += 1;
            }
            let pdl = (out.len() - 4) as u32;
            out[0..4].copy_from_slice(&pdl.to_be_bytes());
            out.truncate(*alloc as usize);
            Ok(out)
        }
    }
}

/// Execute a plan against `store`. A store that refused the I/O with a reservation conflict
/// (this controller fenced at the disk) answers ALUA transitioning ([`read_err`]) and adds
/// [`Effect::BackendFenced`], so that the runtime tells the HA node. `data_out` is the same Data-Out buffer that was given to
/// [`super::LogicalUnit::prepare`].
pub fn run_io(plan: &IoPlan, store: &dyn BlockStore, data_out: &[u8]) -> Outcome {
    match run(&plan.op, store, data_out) {
        Ok(data) => Outcome::good(data, plan.wanted_len),
        Err(f) => f.outcome(plan),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose every operation fails with `err`.
    struct Refusing(StoreError);

    impl BlockStore for Refusing {
        fn len(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> Result<(), StoreError> {
            Err(self.0.clone())
        }
        fn write_at(&self, _: u64, _: &[u8]) -> Result<(), StoreError> {
            Err(self.0.clone())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Err(self.0.clone())
        }
        fn punch_hole(&self, _: u64, _: u64) -> Result<(), StoreError> {
            Err(self.0.clone())
        }
    }

    fn plan(op: IoOp) -> IoPlan {
        IoPlan {
            op,
            wanted_len: 512,
            descriptor_sense: false,
        }
    }

    fn ops() -> Vec<IoOp> {
        vec![
            IoOp::Read {
                offset: 0,
                len: 512,
            },
            IoOp::Write {
                offset: 0,
                len: 512,
                data_at: 0,
                fua: false,
            },
            IoOp::Flush,
            IoOp::Unmap {
                ranges: vec![(0, 512)],
            },
            IoOp::CompareAndWrite {
                offset: 0,
                len: 512,
                fua: false,
            },
            IoOp::OrWrite {
                offset: 0,
                len: 512,
                fua: false,
            },
            IoOp::WriteAndVerify {
                offset: 0,
                len: 512,
            },
        ]
    }

    #[test]
    fn a_reservation_conflict_answers_transitioning_and_reports_the_fence() {
        let data = vec![0u8; 1024];
        for op in ops() {
            let o = run_io(
                &plan(op.clone()),
                &Refusing(StoreError::ReservationConflict),
                &data,
            );
            assert_eq!(
                o.sense_code(),
                Some(SenseCode::ALUA_TRANSITIONING),
                "{op:?}"
            );
            assert_eq!(o.effects, vec![Effect::BackendFenced], "{op:?}");
        }
    }

    #[test]
    fn other_store_errors_report_no_fence() {
        let data = vec![0u8; 1024];
        for op in ops() {
            let o = run_io(
                &plan(op.clone()),
                &Refusing(StoreError::Io("EIO".into())),
                &data,
            );
            assert_ne!(
                o.sense_code(),
                Some(SenseCode::ALUA_TRANSITIONING),
                "{op:?}"
            );
            assert!(o.effects.is_empty(), "{op:?}");
        }
    }
}

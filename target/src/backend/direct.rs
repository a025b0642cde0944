//! Direct I/O (`O_DIRECT`) on a LUN's backing file or device: the alignment the kernel demands
//! (`statx` `STATX_DIOALIGN`, else the device's logical block size, else a probe), the check that
//! the file system really does direct I/O (no silent fallback to the page cache), and positional
//! reads and writes that honour the alignment whatever buffer the caller hands in.
//!
//! A read of a range the alignment does not cover reads the covering aligned range into an
//! [`AlignedBuf`] and copies the part asked for; a buffer whose memory is misaligned is copied
//! once through an [`AlignedBuf`]. A write never reads, modifies and writes back a partial device
//! block (the peer controller may be writing the same block): a misaligned range is an error.
//! Touches the descriptor it is given (`statx`, `ioctl(BLKSSZGET)`, `pread`, `pwrite`) and memory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::aligned::{is_aligned, AlignedBuf, MIN_ALIGN};

/// The largest direct-I/O offset alignment a probe tries (no device in use needs more).
const MAX_PROBE_ALIGN: u32 = 64 * 1024;

/// How transfers on a direct descriptor must be aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alignment {
    /// Every transfer's memory starts on a multiple of this (a power of two).
    pub mem: usize,
    /// Every transfer's file offset and length are multiples of this (a power of two).
    pub offset: u32,
}

/// Why direct I/O cannot be used on a descriptor (the caller names the file).
#[derive(Debug)]
pub enum Refusal {
    /// The file system or device refuses direct I/O: `reason` says how it told us.
    Unsupported(String),
    /// Another error of the system calls used to find out.
    Io(&'static str, io::Error),
}

/// The direct-I/O alignment the kernel reports through `statx` (`STATX_DIOALIGN`, Linux 6.1 for
/// files, 6.11 for block devices): `Ok(None)` when it does not say, an error when it says the file
/// does not support direct I/O at all.
fn statx_alignment(file: &File) -> Result<Option<Alignment>, Refusal> {
    // SAFETY: statx writes into the zeroed struct we own; the path is an empty C string and
    // AT_EMPTY_PATH makes the call describe the open descriptor.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // A kernel without statx: fall back to the other ways.
            Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(None),
            _ => Err(Refusal::Io("statx", e)),
        };
    }
    if st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    if st.stx_dio_offset_align == 0 || st.stx_dio_mem_align == 0 {
        return Err(Refusal::Unsupported(
            "statx reports no direct-I/O alignment: the file system does not support O_DIRECT on it"
                .into(),
        ));
    }
    Ok(Some(Alignment {
        mem: st.stx_dio_mem_align as usize,
        offset: st.stx_dio_offset_align,
    }))
}

/// The logical block size of a block device (`BLKSSZGET`).
fn logical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `size`, which we own; the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| io::Error::other(format!("BLKSSZGET gave {size}")))
}

/// One direct read of `len` bytes at offset 0 into a page-aligned buffer.
fn probe_read(file: &File, len: u32) -> io::Result<()> {
    let mut buf = AlignedBuf::zeroed(len as usize, len as usize);
    loop {
        match file.read_at(buf.as_mut_slice(), 0) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The alignment direct I/O on `file` (opened with `O_DIRECT`) needs, checked by one direct read:
/// some file systems accept the flag at open and refuse the first transfer with `EINVAL`.
pub fn alignment(file: &File, block_device: bool) -> Result<Alignment, Refusal> {
    let found = match statx_alignment(file)? {
        Some(a) => Some(a),
        None if block_device => {
            let lbs = logical_block_size(file).map_err(|e| Refusal::Io("BLKSSZGET", e))?;
            Some(Alignment {
                mem: lbs as usize,
                offset: lbs,
            })
        }
        None => None,
    };
    let align = match found {
        Some(a) => a,
        None => {
            // Nobody says: the smallest transfer the file system accepts is the alignment.
            let mut size = 512u32;
            loop {
                match probe_read(file, size) {
                    Ok(()) => {
                        break Alignment {
                            mem: size as usize,
                            offset: size,
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) && size < MAX_PROBE_ALIGN => {
                        size *= 2;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        return Err(Refusal::Unsupported(format!(
                            "a direct read failed at every alignment up to {MAX_PROBE_ALIGN} bytes: {e}"
                        )))
                    }
                    Err(e) => return Err(Refusal::Io("a first direct read", e)),
                }
            }
        }
    };
    if !align.offset.is_power_of_two() || !align.mem.is_power_of_two() {
        return Err(Refusal::Unsupported(format!(
            "the direct-I/O alignment ({} bytes of memory, {} bytes of offset) is not a power of two",
            align.mem, align.offset
        )));
    }
    match probe_read(file, align.offset.max(512)) {
        Ok(()) => Ok(align),
        // RESERVATION CONFLICT: a shared disk of a pair whose persistent reservation this host
        // has not joined yet (the `scsi-pr` agent registers its key after the LUNs are opened,
        // and the pair holds EXCLUSIVE ACCESS - REGISTRANTS ONLY). The read went the direct way
        // to the device, which refused it for the reservation: direct I/O works.
        Err(e) if e.raw_os_error() == Some(libc::EBADE) => Ok(align),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(Refusal::Unsupported(format!(
            "it accepts O_DIRECT at open but refuses a direct read: {e}"
        ))),
        Err(e) => Err(Refusal::Io("a first direct read", e)),
    }
}

/// Reads `buf.len()` bytes at `offset` through a direct descriptor; bytes past the end of the
/// file read as zeros. Reads straight into `buf` when it is aligned, else through one aligned
/// buffer covering the aligned range around `[offset, offset + len)`.
pub fn read_at(file: &File, align: Alignment, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let a = u64::from(align.offset);
    let len = buf.len() as u64;
    if len == 0 {
        return Ok(());
    }
    if offset.is_multiple_of(a) && len.is_multiple_of(a) && is_aligned(buf, align.mem) {
        return read_aligned(file, a, offset, buf);
    }
    let start = offset - offset % a;
    let end = (offset + len).div_ceil(a) * a;
    let mut bounce = AlignedBuf::zeroed((end - start) as usize, align.mem.max(MIN_ALIGN));
    read_aligned(file, a, start, bounce.as_mut_slice())?;
    let from = (offset - start) as usize;
    buf.copy_from_slice(&bounce.as_slice()[from..from + buf.len()]);
    Ok(())
}

/// The read loop of an aligned transfer. A short read is the end of the file: the rest is zeros
/// (a later read at an offset the short read left misaligned would be refused).
fn read_aligned(file: &File, a: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => {
                done += n;
                if done < buf.len() && !(done as u64).is_multiple_of(a) {
                    buf[done..].fill(0);
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `data` at `offset` through a direct descriptor. The range must cover whole units of
/// the offset alignment (a LUN's block size is a multiple of it, so every SCSI write does);
/// misaligned memory is copied once into an aligned buffer.
pub fn write_at(file: &File, align: Alignment, offset: u64, data: &[u8]) -> io::Result<()> {
    let a = u64::from(align.offset);
    let len = data.len() as u64;
    if len == 0 {
        return Ok(());
    }
    if !offset.is_multiple_of(a) || !len.is_multiple_of(a) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a write of {len} bytes at byte {offset} does not cover whole {a}-byte blocks of the \
                 device; direct I/O does not read-modify-write a partial block"
            ),
        ));
    }
    if is_aligned(data, align.mem) {
        return write_aligned(file, a, offset, data);
    }
    let bounce = AlignedBuf::copy_from(data, align.mem.max(MIN_ALIGN));
    write_aligned(file, a, offset, bounce.as_slice())
}

fn write_aligned(file: &File, a: u64, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        match file.write_at(&data[done..], offset + done as u64) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                done += n;
                if done < data.len() && !(done as u64).is_multiple_of(a) {
                    return Err(io::Error::other(format!(
                        "the device wrote {done} of {} bytes, ending inside a {a}-byte block",
                        data.len()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

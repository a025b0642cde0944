//! The device (or regular file) under test, opened with `O_DIRECT`, and the page-aligned
//! buffers direct I/O needs.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: u64 = 0x8008_1272;
/// `BLKSSZGET`: `_IO(0x12, 104)`, the logical block size.
const BLKSSZGET: u64 = 0x1268;

/// The buffer alignment used for every transfer.
pub const ALIGN: usize = 4096;

/// An open device or file.
pub struct Device {
    file: File,
    path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// The smallest transfer and alignment direct I/O on it accepts (the logical block size of
    /// a block device; 512 for a regular file).
    pub sector: u64,
    pub is_block_device: bool,
}

impl Device {
    /// Opens `path` read-write with `O_DIRECT`; every error names the path.
    pub fn open(path: &Path) -> Result<Device, String> {
        let p = path.display();
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!("{p}: no such device or file"),
            _ => format!("{p}: {e}"),
        })?;
        let ft = meta.file_type();
        if !ft.is_block_device() && !ft.is_file() {
            return Err(format!("{p}: neither a block device nor a regular file"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => format!("{p}: refuses O_DIRECT ({e})"),
                _ => format!("{p}: cannot open read-write with O_DIRECT: {e}"),
            })?;
        let fd = file.as_raw_fd();
        let (size, sector) = if ft.is_block_device() {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
            if unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut size as *mut u64) } != 0 {
                return Err(format!(
                    "{p}: cannot get the device size (BLKGETSIZE64): {}",
                    io::Error::last_os_error()
                ));
            }
            let mut sector: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int through the pointer, which is valid.
            if unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut sector as *mut libc::c_int) } != 0
                || sector <= 0
            {
                sector = 512;
            }
            (size, sector as u64)
        } else {
            (meta.len(), 512)
        };
        Ok(Device {
            file,
            path: path.to_path_buf(),
            size,
            sector,
            is_block_device: ft.is_block_device(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a short read is an error (a direct
    /// transfer is never continued at an unaligned offset). `buf` must start at an [`ALIGN`]ed
    /// address (the start of an [`AlignedBuf`]).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        let n = retry_interrupted(|| self.file.read_at(buf, offset))?;
        whole(n, len, io::ErrorKind::UnexpectedEof, "read")
    }

    /// Writes all of `buf` at `offset`; a short write is an error. `buf` must start at an
    /// [`ALIGN`]ed address (the start of an [`AlignedBuf`]).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let n = retry_interrupted(|| self.file.write_at(buf, offset))?;
        whole(n, buf.len(), io::ErrorKind::WriteZero, "write")
    }
}

/// A zeroed heap buffer aligned to [`ALIGN`], as `O_DIRECT` requires.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` must be non-zero.
    pub fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(1), ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(1), ALIGN).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, layout) }
    }
}

/// Runs `op` again while it is interrupted by a signal.
fn retry_interrupted(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A transfer of `n` bytes where `len` were asked for: anything short is an error.
fn whole(n: usize, len: usize, kind: io::ErrorKind, what: &str) -> io::Result<()> {
    if n == len {
        Ok(())
    } else {
        Err(io::Error::new(
            kind,
            format!("short {what} ({n} of {len} bytes)"),
        ))
    }
}

//! The file backend: a regular file or a block device behind a logical unit.
//!
//! Reads and writes are positional (`pread`/`pwrite` through [`FileExt`]), so one open file serves
//! every command at once; the daemon calls these methods from blocking worker threads, never from
//! the async workers. UNMAP punches holes (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), SYNCHRONIZE CACHE
//! and FUA become `fdatasync`.
//!
//! A store opened with `O_DIRECT` ([`OpenSpec::direct`]: every LUN of a controller pair) bypasses
//! the page cache: its alignment and transfers are `direct.rs`'s, and `fdatasync` on it flushes
//! the device's own cache, so it covers writes acknowledged through either controller. Whether the
//! device has a volatile cache at all (the LU's initial WCE) is `cache.rs`'s.
//! Touches the backing file or device, and the reservation-state file beside it.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use duet_core::scsi::{BlockStore, StoreError};

mod cache;
mod direct;
#[cfg(test)]
pub(crate) mod tests;

pub use direct::Alignment;

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl BackendError {
    fn io(path: &Path, what: &'static str, source: std::io::Error) -> BackendError {
        BackendError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}

/// How to open a backend.
#[derive(Clone, Debug)]
pub struct OpenSpec<'a> {
    pub path: &'a Path,
    /// The LUN size in bytes; `None` = the size of the file or device.
    pub size: Option<u64>,
    pub block_size: u32,
    pub read_only: bool,
    /// Create the file (and its directory) if missing, and extend it to `size` if shorter.
    pub create: bool,
    /// Open with `O_DIRECT` (every LUN of an HA controller, or `direct = true`): all media I/O
    /// bypasses the page cache. Refused with an error if the file system cannot do it.
    pub direct: bool,
}

/// How a store opened with `O_DIRECT` must be addressed: every transfer's memory must start on a
/// multiple of `mem_align`, and its file offset and length be multiples of `offset_align`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectIo {
    /// The open descriptor (owned by the store; valid while it lives).
    pub fd: std::os::fd::RawFd,
    pub mem_align: usize,
    pub offset_align: u32,
}

/// A LUN's backing file or block device.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    len: u64,
    read_only: bool,
    block_device: bool,
    /// Cleared once the file system said it cannot punch holes; writes of zeros then stand in.
    can_punch: AtomicBool,
    /// The file lives in memory (tmpfs, ramfs): reading and writing it never waits for a device.
    in_memory: bool,
    /// Set when opened with `O_DIRECT`.
    direct: Option<DirectIo>,
    /// The store has a volatile write cache that `fdatasync` flushes (the LU's initial WCE).
    write_cache: bool,
}

/// Whether `file` is on a memory file system (tmpfs, ramfs), where I/O never waits for a device.
fn is_in_memory(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: fstatfs writes into the zeroed struct we own; the descriptor is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

impl FileStore {
    /// Opens (and, if asked, creates or extends) the backing file or device.
    pub fn open(spec: &OpenSpec<'_>) -> Result<FileStore, BackendError> {
        let path = spec.path;
        let exists = path.exists();
        if !exists && !spec.create {
            return Err(BackendError::Invalid {
                path: path.to_path_buf(),
                message: "does not exist (set `create = true` to create it)".into(),
            });
        }
        if !exists {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| BackendError::io(path, "cannot create its directory", e))?;
            }
        }
        let mut opts = OpenOptions::new();
        opts.read(true);
        if spec.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        if !spec.read_only {
            opts.write(true);
            if spec.create {
                opts.create(true);
            }
        } else if !exists {
            // A read-only LUN that is to be created: create it writable, then reopen.
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| BackendError::io(path, "cannot create", e))?;
        }
        let mut file = opts.open(path).map_err(|e| {
            if spec.direct && e.raw_os_error() == Some(libc::EINVAL) {
                refused(
                    path,
                    &format!("the file system refuses O_DIRECT at open ({e})"),
                )
            } else {
                BackendError::io(path, "cannot open", e)
            }
        })?;
        let meta = file
            .metadata()
            .map_err(|e| BackendError::io(path, "cannot stat", e))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.file_type().is_file() {
            return Err(BackendError::Invalid {
                path: path.to_path_buf(),
                message: "is neither a regular file nor a block device".into(),
            });
        }
        let mut actual = if block_device {
            file.seek(SeekFrom::End(0))
                .map_err(|e| BackendError::io(path, "cannot find the device size", e))?
        } else {
            meta.len()
        };
        let len = match spec.size {
            None => actual,
            Some(want) => {
                if want > actual {
                    if block_device {
                        return Err(BackendError::Invalid {
                            path: path.to_path_buf(),
                            message: format!(
                                "the device has {actual} bytes, less than the configured size {want}"
                            ),
                        });
                    }
                    if !spec.create || spec.read_only && exists {
                        return Err(BackendError::Invalid {
                            path: path.to_path_buf(),
                            message: format!(
                                "the file has {actual} bytes, less than the configured size {want} (set `create = true` to extend it)"
                            ),
                        });
                    }
                    let f = if spec.read_only {
                        OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(|e| BackendError::io(path, "cannot open to extend", e))?
                    } else {
                        file.try_clone()
                            .map_err(|e| BackendError::io(path, "cannot open to extend", e))?
                    };
                    f.set_len(want)
                        .map_err(|e| BackendError::io(path, "cannot extend", e))?;
                    actual = want;
                }
                want.min(actual)
            }
        };
        let bs = u64::from(spec.block_size.max(1));
        let len = len - len % bs;
        if len == 0 {
            return Err(BackendError::Invalid {
                path: path.to_path_buf(),
                message: format!("is smaller than one block ({bs} bytes)"),
            });
        }
        let in_memory = !block_device && is_in_memory(&file);
        let direct = if spec.direct {
            Some(open_direct(&file, path, block_device, spec.block_size)?)
        } else {
            None
        };
        // Buffered: the page cache is the volatile cache. Direct on a block device: the device's
        // own. Direct on a file: the file system's metadata and the device under it.
        let write_cache =
            !(direct.is_some() && block_device) || cache::device_write_cache(meta.rdev());
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            len,
            read_only: spec.read_only,
            block_device,
            can_punch: AtomicBool::new(true),
            in_memory,
            direct,
            write_cache,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether reads and writes of this store never wait for a device (a file on tmpfs or
    /// ramfs), so a short medium phase may run on the connection's own task.
    pub fn never_blocks(&self) -> bool {
        self.in_memory
    }

    /// How to address the store, when it was opened with `O_DIRECT`.
    pub fn direct(&self) -> Option<DirectIo> {
        self.direct
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Whether acknowledged writes sit in a volatile cache until a flush (`fdatasync`): the LU's
    /// initial Caching-page WCE. `false` only for a direct block device whose queue is write
    /// through.
    pub fn write_cache(&self) -> bool {
        self.write_cache
    }

    fn alignment(&self) -> Option<Alignment> {
        self.direct.map(|d| Alignment {
            mem: d.mem_align,
            offset: d.offset_align,
        })
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(StoreError::OutOfRange),
        }
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self.read_only {
            Err(StoreError::Io("the LUN is read-only".into()))
        } else {
            Ok(())
        }
    }
}

/// The error of a file the file system will not do direct I/O on.
fn refused(path: &Path, why: &str) -> BackendError {
    BackendError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "cannot use direct I/O (O_DIRECT), which a LUN of a controller pair or with \
             `direct = true` needs: {why}; put the LUN on a file system or device that supports \
             it (ext4, XFS, a block device)"
        ),
    }
}

/// Finds the alignment of a descriptor opened with `O_DIRECT` and checks that the LUN's block
/// size is a multiple of it.
fn open_direct(
    file: &File,
    path: &Path,
    block_device: bool,
    block_size: u32,
) -> Result<DirectIo, BackendError> {
    let align = direct::alignment(file, block_device).map_err(|r| match r {
        direct::Refusal::Unsupported(why) => refused(path, &why),
        direct::Refusal::Io(what, e) => BackendError::io(path, what, e),
    })?;
    if !block_size.is_multiple_of(align.offset) {
        let fix = if align.offset <= 4096 {
            "set `block_size = 4096` for this LUN".to_string()
        } else {
            "no supported block_size (512 or 4096) is a multiple of it".to_string()
        };
        return Err(BackendError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "direct I/O on it needs transfers aligned to {} bytes, and `block_size` {block_size} \
                 is not a multiple of that: {fix}",
                align.offset
            ),
        });
    }
    Ok(DirectIo {
        fd: file.as_raw_fd(),
        mem_align: align.mem,
        offset_align: align.offset,
    })
}

/// The store error of a failed system call on a backing file or device: Linux reports a SCSI
/// RESERVATION CONFLICT from the device as `EBADE`.
pub fn store_error(e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::EBADE) => StoreError::ReservationConflict,
        _ => StoreError::Io(e.to_string()),
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    store_error(e)
}

impl BlockStore for FileStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check(offset, buf.len() as u64)?;
        if let Some(a) = self.alignment() {
            return direct::read_at(&self.file, a, offset, buf).map_err(io_err);
        }
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                // A file shorter than the LUN (it shrank under us) reads as zeros past its end.
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        self.check(offset, data.len() as u64)?;
        if let Some(a) = self.alignment() {
            return direct::write_at(&self.file, a, offset, data).map_err(io_err);
        }
        self.file.write_all_at(data, offset).map_err(io_err)
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(io_err)
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.can_punch.load(Ordering::Relaxed) {
            let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
            else {
                return Err(StoreError::OutOfRange);
            };
            // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    l,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV) => {
                    self.can_punch.store(false, Ordering::Relaxed);
                }
                _ => return Err(io_err(e)),
            }
        }
        self.write_zeroes(offset, len)
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<(u64, bool), StoreError> {
        self.check(offset, len)?;
        if len == 0 || self.block_device {
            return Ok((len, true));
        }
        let fd = self.file.as_raw_fd();
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Err(StoreError::OutOfRange);
        };
        let end = offset + len;
        // SAFETY: lseek on a file descriptor we own; positional reads and writes ignore the offset.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                // No data from here to the end of the file: a hole.
                Some(libc::ENXIO) => Ok((len, false)),
                _ => Ok((len, true)),
            };
        }
        let data = data as u64;
        if data > offset {
            return Ok(((data.min(end)) - offset, false));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, off, libc::SEEK_HOLE) };
        if hole < 0 {
            return Ok((len, true));
        }
        let hole = (hole as u64).max(offset + 1);
        Ok((hole.min(end) - offset, true))
    }
}

/// Where the persistent-reservation state of a LUN is kept when APTPL is set: next to the image.
pub fn pr_state_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".pr");
    PathBuf::from(name)
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename).
pub fn write_file_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let f = File::create(&tmp)?;
        f.write_all_at(data, 0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

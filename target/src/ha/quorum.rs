//! The quorum area: the arbiter both controllers reach on a path other than the HA link
//! (ARCHITECTURE.md §2.2).
//!
//! [`duet_core::ha::Node`] asks for quorum I/O with [`QuorumOp`]; the runtime carries it out on an
//! [`Arbiter`] (on a blocking thread: every call here blocks) and answers with the
//! [`QuorumResult`] that [`execute`] builds. The embedded arbiter is [`FileQuorum`]: a small area on
//! a file or block device both controllers share. [`MemoryQuorum`] is an in-process arbiter for
//! tests of the runtime.
//!
//! # On-disk layout of a [`FileQuorum`]
//! Three sectors of [`SECTOR_SIZE`] bytes, each at a 4096-byte-aligned offset:
//!
//! | sector | offset | content |
//! |---|---|---|
//! | header | 0 | magic `duet-quorum-area`, layout version, sector size, slot count, CRC32C |
//! | slot 1 | 4096 | node 1's [`QuorumRecord`] |
//! | slot 2 | 8192 | node 2's [`QuorumRecord`] |
//!
//! Header sector: bytes 0..16 magic, 16..20 layout version (u32 LE, [`LAYOUT_VERSION`]), 20..24
//! sector size (u32 LE, 4096), 24..28 slot count (u32 LE, 2), zeros, and 4092..4096 the CRC32C of
//! bytes 0..4092 (u32 LE).
//!
//! Slot sector: bytes 0..16 magic `duet-quorum-slot`, 16..20 record format version (u32 LE,
//! [`SLOT_FORMAT`]), 20 the slot number, 21..24 zero, 24..28 the length of the record (u32 LE),
//! then the postcard-encoded [`QuorumRecord`], zeros, and 4092..4096 the CRC32C of bytes 0..4092.
//! A slot is written with one aligned `pwrite` of the whole sector followed by `fdatasync`, and
//! read with one `pread`. A sector of zeros was never written (`Ok(None)`); a sector whose magic or
//! checksum is wrong (a torn or corrupted write) is reported as [`QuorumError::Corrupt`], which the
//! node treats as "unknown" (safe).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use duet_core::ha::{QuorumOp, QuorumRecord, QuorumResult};

/// Size of each sector of the quorum area, and the alignment of every read and write.
pub const SECTOR_SIZE: usize = 4096;
/// Number of slots (one per `ha_id`: 1 and 2).
pub const SLOTS: u8 = 2;
/// Size of the whole quorum area: the header and one sector per slot.
pub const AREA_SIZE: u64 = (SECTOR_SIZE as u64) * (1 + SLOTS as u64);
/// Version of the area's layout, stored in the header.
pub const LAYOUT_VERSION: u32 = 1;
/// Version of a slot's record encoding, stored in every slot sector. postcard is not
/// self-describing: raise this whenever `QuorumRecord` or `SlotLun` changes shape, so that a
/// record in the old shape is reported as unsupported instead of being misread.
pub const SLOT_FORMAT: u32 = 1;
/// The largest encoded [`QuorumRecord`] a slot sector holds.
pub const MAX_RECORD_LEN: usize = CRC_OFFSET - RECORD_OFFSET;

const HEADER_MAGIC: &[u8; 16] = b"duet-quorum-area";
const SLOT_MAGIC: &[u8; 16] = b"duet-quorum-slot";
const RECORD_OFFSET: usize = 28;
const CRC_OFFSET: usize = SECTOR_SIZE - 4;

/// Why a quorum operation (or opening the quorum area) failed.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// The slot number is not 1 or 2.
    #[error("quorum slot {0} does not exist (slots are 1 and 2)")]
    BadSlot(u8),
    /// The operating system refused a read, write or sync.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The slot's sector holds something other than a whole record this version wrote: a torn or
    /// corrupted write, or another program's data.
    #[error("quorum slot {slot} is corrupt: {reason}")]
    Corrupt { slot: u8, reason: String },
    /// The record does not fit in one sector.
    #[error("quorum slot {slot}: the record needs {len} bytes, a slot holds at most {max}")]
    TooLarge { slot: u8, len: usize, max: usize },
    /// The file or device is not a usable quorum area (wrong header, too small, wrong kind of file).
    #[error("{path}: {reason}")]
    BadArea { path: PathBuf, reason: String },
    /// The arbiter is unreachable or failing (used by arbiters other than [`FileQuorum`]).
    #[error("quorum arbiter unavailable: {0}")]
    Unavailable(String),
}

/// An arbiter: two slots, numbered by `ha_id` (1 and 2), each read and written atomically. Every
/// call blocks; the runtime runs them on `tokio::task::spawn_blocking`. A file on shared storage
/// ([`FileQuorum`]) implements it today; a TCP witness or an etcd lease could later.
pub trait Arbiter: Send + Sync + 'static {
    /// Reads a slot: `Ok(None)` if it was never written.
    fn read(&self, slot: u8) -> Result<Option<QuorumRecord>, QuorumError>;
    /// Writes a slot durably: when this returns `Ok`, a later `read` (by either controller, after
    /// any crash) returns `rec`.
    fn write(&self, slot: u8, rec: &QuorumRecord) -> Result<(), QuorumError>;
    /// A one-line description for logs and `duetctl status`, e.g. `quorum file /srv/q.img`.
    fn describe(&self) -> String;
}

/// Carries out one [`QuorumOp`] on `arbiter` (blocking) and builds the [`QuorumResult`] the node
/// expects; a failure becomes [`QuorumResult::Failed`] with the error's text.
pub fn execute(arbiter: &dyn Arbiter, op: &QuorumOp) -> QuorumResult {
    match op {
        QuorumOp::Read { slot } => match arbiter.read(*slot) {
            Ok(record) => QuorumResult::ReadOk {
                slot: *slot,
                record,
            },
            Err(e) => QuorumResult::Failed {
                slot: *slot,
                reason: e.to_string(),
            },
        },
        QuorumOp::Write { slot, record } => match arbiter.write(*slot, record) {
            Ok(()) => QuorumResult::WriteOk { slot: *slot },
            Err(e) => QuorumResult::Failed {
                slot: *slot,
                reason: e.to_string(),
            },
        },
    }
}

fn check_slot(slot: u8) -> Result<(), QuorumError> {
    if (1..=SLOTS).contains(&slot) {
        Ok(())
    } else {
        Err(QuorumError::BadSlot(slot))
    }
}

/// One sector in memory, aligned for `O_DIRECT`.
#[repr(C, align(4096))]
struct Sector([u8; SECTOR_SIZE]);

impl Sector {
    fn zeroed() -> Box<Sector> {
        Box::new(Sector([0; SECTOR_SIZE]))
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    fn seal(&mut self) {
        let crc = crc32c::crc32c(&self.0[..CRC_OFFSET]);
        self.0[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    }

    fn crc_ok(&self) -> bool {
        let stored = u32_at(&self.0, CRC_OFFSET);
        stored == crc32c::crc32c(&self.0[..CRC_OFFSET])
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn header_sector() -> Box<Sector> {
    let mut s = Sector::zeroed();
    s.0[..16].copy_from_slice(HEADER_MAGIC);
    s.0[16..20].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    s.0[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    s.0[24..28].copy_from_slice(&u32::from(SLOTS).to_le_bytes());
    s.seal();
    s
}

/// Why a header sector is not ours, or `None` if it is.
fn header_problem(s: &Sector) -> Option<String> {
    if s.is_zero() {
        return Some(
            "not formatted as a Duet quorum area (the header sector is all zeros; \
             set quorum_create = true to format it)"
                .into(),
        );
    }
    if &s.0[..16] != HEADER_MAGIC {
        return Some(
            "not a Duet quorum area (wrong magic in the header sector); \
             refusing to use it"
                .into(),
        );
    }
    if !s.crc_ok() {
        return Some("the quorum area's header sector is corrupt (checksum mismatch)".into());
    }
    let version = u32_at(&s.0, 16);
    if version != LAYOUT_VERSION {
        return Some(format!(
            "quorum area layout version {version} is not supported (this duetd knows {LAYOUT_VERSION})"
        ));
    }
    let sector = u32_at(&s.0, 20);
    if sector as usize != SECTOR_SIZE {
        return Some(format!(
            "quorum area sector size {sector} is not supported (expected {SECTOR_SIZE})"
        ));
    }
    let slots = u32_at(&s.0, 24);
    if slots != u32::from(SLOTS) {
        return Some(format!("quorum area has {slots} slots, expected {SLOTS}"));
    }
    None
}

fn encode_slot(slot: u8, rec: &QuorumRecord) -> Result<Box<Sector>, QuorumError> {
    let payload = postcard::to_allocvec(rec).map_err(|e| QuorumError::Corrupt {
        slot,
        reason: format!("cannot encode the record: {e}"),
    })?;
    if payload.len() > MAX_RECORD_LEN {
        return Err(QuorumError::TooLarge {
            slot,
            len: payload.len(),
            max: MAX_RECORD_LEN,
        });
    }
    let mut s = Sector::zeroed();
    s.0[..16].copy_from_slice(SLOT_MAGIC);
    s.0[16..20].copy_from_slice(&SLOT_FORMAT.to_le_bytes());
    s.0[20] = slot;
    s.0[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    s.0[RECORD_OFFSET..RECORD_OFFSET + payload.len()].copy_from_slice(&payload);
    s.seal();
    Ok(s)
}

fn decode_slot(slot: u8, s: &Sector) -> Result<Option<QuorumRecord>, QuorumError> {
    if s.is_zero() {
        return Ok(None);
    }
    let corrupt = |reason: String| QuorumError::Corrupt { slot, reason };
    if &s.0[..16] != SLOT_MAGIC {
        return Err(corrupt("bad magic (torn write or foreign data)".into()));
    }
    if !s.crc_ok() {
        return Err(corrupt(
            "checksum mismatch (torn or corrupted write)".into(),
        ));
    }
    let format = u32_at(&s.0, 16);
    if format != SLOT_FORMAT {
        return Err(corrupt(format!(
            "record format {format} is not supported (this duetd knows {SLOT_FORMAT})"
        )));
    }
    if s.0[20] != slot {
        return Err(corrupt(format!(
            "the sector belongs to slot {}, not {slot}",
            s.0[20]
        )));
    }
    let len = u32_at(&s.0, 24) as usize;
    if len > MAX_RECORD_LEN {
        return Err(corrupt(format!("record length {len} exceeds the sector")));
    }
    let payload = &s.0[RECORD_OFFSET..RECORD_OFFSET + len];
    match postcard::from_bytes::<QuorumRecord>(payload) {
        Ok(rec) => Ok(Some(rec)),
        Err(e) => Err(corrupt(format!("cannot decode the record: {e}"))),
    }
}

/// The quorum area on a file or block device that both controllers reach (see the module
/// documentation for the layout). Each method is one `pread` or one `pwrite` + `fdatasync`;
/// handles are independent, so two processes (or two handles in one process) see each other's
/// writes.
#[derive(Debug)]
pub struct FileQuorum {
    file: File,
    path: PathBuf,
    block_device: bool,
}

impl FileQuorum {
    /// Opens the quorum area at `path`.
    ///
    /// A missing file is created and formatted when `create` is set (atomically: a fully formatted
    /// temporary file is linked into place, so two controllers starting together cannot see a
    /// half-formatted area); otherwise it is an error. An existing file or block device must carry
    /// a valid header, except that with `create` an area that is entirely zeros (a fresh device or
    /// preallocated file) is formatted in place. A block device is never truncated. The area is
    /// opened with `O_DIRECT` when the file system or device allows it, so that reads of shared
    /// storage are never served from a stale cache; a file system that refuses `O_DIRECT` (at
    /// open, or at the first read) is an error, never a fallback to buffered I/O: a cached read
    /// of the peer's slot would make a stale lease look fresh. Errors name the path.
    pub fn open(path: &Path, create: bool) -> Result<FileQuorum, QuorumError> {
        let bad = |reason: String| QuorumError::BadArea {
            path: path.to_path_buf(),
            reason,
        };
        let io_err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source: io::Error| QuorumError::Io {
                path: path.clone(),
                op,
                source,
            }
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("stat")(e)),
        };
        let meta = match meta {
            Some(m) => m,
            None if create => {
                create_formatted(path)?;
                std::fs::metadata(path).map_err(io_err("stat"))?
            }
            None => {
                return Err(bad(
                    "the quorum area does not exist (set quorum_create = true to create it)".into(),
                ))
            }
        };
        let ft = meta.file_type();
        let block_device = ft.is_block_device();
        if !ft.is_file() && !block_device {
            return Err(bad(
                "the quorum area must be a regular file or a block device".into(),
            ));
        }
        let refused = |e: io::Error, when: &str| {
            bad(format!(
                "the file system refuses O_DIRECT {when} ({e}); the quorum area must be on \
                 storage that does direct I/O (a shared block device, or ext4/XFS), or a \
                 controller could read its peer's slot from a stale cache"
            ))
        };
        let file = open_direct(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                refused(e, "at open")
            } else {
                io_err("open")(e)
            }
        })?;
        let q = FileQuorum {
            file,
            path: path.to_path_buf(),
            block_device,
        };
        let size = q.size().map_err(io_err("size"))?;
        if size < AREA_SIZE {
            return Err(bad(format!(
                "too small for a quorum area ({size} bytes, need {AREA_SIZE})"
            )));
        }
        let mut header = Sector::zeroed();
        match q.read_sector(0, &mut header) {
            // Some file systems accept O_DIRECT at open and refuse it at the first I/O.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(refused(e, "at the first read"))
            }
            r => r.map_err(io_err("read the header"))?,
        }
        if let Some(problem) = header_problem(&header) {
            if create && header.is_zero() && q.area_is_zero()? {
                q.write_sector(0, &header_sector())
                    .map_err(io_err("format the header"))?;
            } else {
                return Err(bad(problem));
            }
        }
        Ok(q)
    }

    /// The path the area was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> io::Result<u64> {
        if self.block_device {
            (&self.file).seek(SeekFrom::End(0))
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    fn area_is_zero(&self) -> Result<bool, QuorumError> {
        let mut s = Sector::zeroed();
        for i in 1..=u64::from(SLOTS) {
            self.read_sector(i, &mut s)
                .map_err(|source| QuorumError::Io {
                    path: self.path.clone(),
                    op: "read",
                    source,
                })?;
            if !s.is_zero() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn read_sector(&self, index: u64, s: &mut Sector) -> io::Result<()> {
        self.file
            .read_exact_at(&mut s.0, index * SECTOR_SIZE as u64)
    }

    fn write_sector(&self, index: u64, s: &Sector) -> io::Result<()> {
        self.file.write_all_at(&s.0, index * SECTOR_SIZE as u64)?;
        self.file.sync_data()
    }
}

impl Arbiter for FileQuorum {
    fn read(&self, slot: u8) -> Result<Option<QuorumRecord>, QuorumError> {
        check_slot(slot)?;
        let mut s = Sector::zeroed();
        self.read_sector(u64::from(slot), &mut s)
            .map_err(|source| QuorumError::Io {
                path: self.path.clone(),
                op: "read",
                source,
            })?;
        decode_slot(slot, &s)
    }

    fn write(&self, slot: u8, rec: &QuorumRecord) -> Result<(), QuorumError> {
        check_slot(slot)?;
        let s = encode_slot(slot, rec)?;
        self.write_sector(u64::from(slot), &s)
            .map_err(|source| QuorumError::Io {
                path: self.path.clone(),
                op: "write",
                source,
            })
    }

    fn describe(&self) -> String {
        let kind = if self.block_device { "device" } else { "file" };
        format!("quorum {kind} {}, O_DIRECT", self.path.display())
    }
}

/// Opens read-write with `O_DIRECT`.
fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Creates a formatted quorum file at `path` atomically: formats a temporary file beside it, then
/// hard-links it into place (which fails if another controller created `path` meanwhile; then its
/// file is used).
fn create_formatted(path: &Path) -> Result<(), QuorumError> {
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source: io::Error| QuorumError::Io {
            path: p.clone(),
            op,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err("create the directory", &dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "quorum".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.set_len(AREA_SIZE).map_err(io_err("size", &tmp))?;
        f.write_all_at(&header_sector().0, 0)
            .map_err(io_err("format", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", path)(e)),
        }
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// An arbiter in memory, for tests of the runtime: both slots in one process, with failures on
/// demand.
#[derive(Debug, Default)]
pub struct MemoryQuorum {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    slots: [Option<QuorumRecord>; SLOTS as usize],
    failing: bool,
}

impl MemoryQuorum {
    /// An arbiter with both slots unwritten.
    pub fn new() -> MemoryQuorum {
        MemoryQuorum::default()
    }

    /// Makes every following operation fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Arbiter for MemoryQuorum {
    fn read(&self, slot: u8) -> Result<Option<QuorumRecord>, QuorumError> {
        check_slot(slot)?;
        let st = self.lock();
        if st.failing {
            return Err(QuorumError::Unavailable("failure injected".into()));
        }
        Ok(st.slots[usize::from(slot - 1)].clone())
    }

    fn write(&self, slot: u8, rec: &QuorumRecord) -> Result<(), QuorumError> {
        check_slot(slot)?;
        let mut st = self.lock();
        if st.failing {
            return Err(QuorumError::Unavailable("failure injected".into()));
        }
        st.slots[usize::from(slot - 1)] = Some(rec.clone());
        Ok(())
    }

    fn describe(&self) -> String {
        "quorum in memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_core::ha::SlotLun;

    #[test]
    fn a_full_sector_of_luns_round_trips_and_one_more_is_refused() {
        // Build a record of LUNs with the largest varints, up to the limit.
        let mut rec = QuorumRecord {
            seq: u64::MAX,
            luns: Vec::new(),
        };
        let mut n: duet_core::LunNumber = 0;
        loop {
            rec.luns.push(SlotLun {
                lun: n,
                epoch: u64::MAX - u64::from(n),
                own: n.is_multiple_of(2),
                served: u64::MAX - 1,
            });
            let len = postcard::to_allocvec(&rec).map(|v| v.len()).unwrap_or(0);
            if len > MAX_RECORD_LEN {
                break;
            }
            n += 1;
        }
        assert!(matches!(
            encode_slot(1, &rec),
            Err(QuorumError::TooLarge { slot: 1, .. })
        ));
        rec.luns.pop();
        let s = encode_slot(2, &rec).expect("fits");
        assert_eq!(decode_slot(2, &s).expect("decodes"), Some(rec));
        // A sector written for slot 2 is not accepted as slot 1.
        assert!(matches!(
            decode_slot(1, &s),
            Err(QuorumError::Corrupt { slot: 1, .. })
        ));
    }

    #[test]
    fn the_header_is_recognised_and_damage_is_named() {
        let h = header_sector();
        assert_eq!(header_problem(&h), None);
        let mut bad = header_sector();
        bad.0[100] ^= 1;
        assert!(header_problem(&bad).unwrap().contains("checksum"));
        assert!(header_problem(&Sector::zeroed()).unwrap().contains("zeros"));
    }

    #[test]
    fn execute_maps_results_and_failures() {
        let m = MemoryQuorum::new();
        let rec = QuorumRecord {
            seq: 3,
            luns: vec![],
        };
        assert_eq!(
            execute(&m, &QuorumOp::Read { slot: 2 }),
            QuorumResult::ReadOk {
                slot: 2,
                record: None
            }
        );
        assert_eq!(
            execute(
                &m,
                &QuorumOp::Write {
                    slot: 2,
                    record: rec.clone()
                }
            ),
            QuorumResult::WriteOk { slot: 2 }
        );
        assert_eq!(
            execute(&m, &QuorumOp::Read { slot: 2 }),
            QuorumResult::ReadOk {
                slot: 2,
                record: Some(rec)
            }
        );
        m.set_failing(true);
        assert!(matches!(
            execute(&m, &QuorumOp::Read { slot: 1 }),
            QuorumResult::Failed { slot: 1, .. }
        ));
        assert!(matches!(
            execute(&m, &QuorumOp::Read { slot: 3 }),
            QuorumResult::Failed { slot: 3, .. }
        ));
    }

    #[test]
    fn a_quorum_area_on_a_file_system_without_o_direct_is_refused_not_opened_buffered() {
        let Some(fs) = crate::backend::tests::Ramfs::mount("quorum-ramfs") else {
            return;
        };
        let p = fs.0.join("q.img");
        let e = FileQuorum::open(&p, true).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("O_DIRECT"),
            "{e}"
        );
    }
}

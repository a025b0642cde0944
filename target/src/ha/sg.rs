//! SCSI pass-through on a Linux block device (the `SG_IO` ioctl): one command, its data and its
//! sense, with a timeout the kernel enforces.
//!
//! [`encode`] fills the kernel's `sg_io_hdr` for a [`SgCommand`] and [`decode`] checks what came
//! back (the SCSI status, the adapter's `host_status`, the driver's `driver_status`, the sense
//! and the residual count); both are pure and unit-tested. [`SgDevice`] opens a block device and
//! runs commands on it, blocking: callers run it off the async threads. A leaf: uses `libc` and
//! `duet_core::sense` only. The fencing agent that speaks persistent reservations through it is
//! `super::pr_fence`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use duet_core::sense::SenseCode;

/// The `SG_IO` ioctl request number.
const SG_IO: libc::c_ulong = 0x2285;
/// `interface_id` of the v3 interface.
const SG_INTERFACE_ID: libc::c_int = b'S' as libc::c_int;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;
/// The most sense data asked for.
pub const SENSE_LEN: usize = 64;

/// `host_status` values (the adapter's view of the transport); anything but `DID_OK` fails the
/// command.
mod host {
    pub const DID_OK: u16 = 0x00;
    pub const DID_TIME_OUT: u16 = 0x03;
    /// Used by the tests: the target could not be reached.
    #[cfg(test)]
    pub const DID_NO_CONNECT: u16 = 0x01;
}

/// `driver_status` values (low nibble); `DRIVER_SENSE` (0x08) only says sense is present.
mod driver {
    pub const DRIVER_OK: u16 = 0x00;
    pub const DRIVER_TIMEOUT: u16 = 0x06;
    pub const DRIVER_SENSE: u16 = 0x08;
}

/// The kernel's `struct sg_io_hdr` (`<scsi/sg.h>`), laid out as C lays it out.
#[repr(C)]
#[derive(Debug)]
pub struct SgIoHdr {
    pub interface_id: libc::c_int,
    pub dxfer_direction: libc::c_int,
    pub cmd_len: libc::c_uchar,
    pub mx_sb_len: libc::c_uchar,
    pub iovec_count: libc::c_ushort,
    pub dxfer_len: libc::c_uint,
    pub dxferp: *mut libc::c_void,
    pub cmdp: *const libc::c_uchar,
    pub sbp: *mut libc::c_uchar,
    pub timeout: libc::c_uint,
    pub flags: libc::c_uint,
    pub pack_id: libc::c_int,
    pub usr_ptr: *mut libc::c_void,
    pub status: libc::c_uchar,
    pub masked_status: libc::c_uchar,
    pub msg_status: libc::c_uchar,
    pub sb_len_wr: libc::c_uchar,
    pub host_status: libc::c_ushort,
    pub driver_status: libc::c_ushort,
    pub resid: libc::c_int,
    pub duration: libc::c_uint,
    pub info: libc::c_uint,
}

/// The data phase of a command.
#[derive(Debug)]
pub enum Data<'a> {
    None,
    /// Data-Out: sent to the device.
    Out(&'a [u8]),
    /// Data-In: room for what the device sends.
    In(&'a mut [u8]),
}

/// One command: its CDB, its data phase and how long the kernel lets it run.
#[derive(Debug)]
pub struct SgCommand<'a> {
    pub cdb: &'a [u8],
    pub data: Data<'a>,
    pub timeout: Duration,
}

/// What a command returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgReply {
    /// The SCSI status byte.
    pub status: u8,
    /// The sense data, decoded, when the device returned some.
    pub sense: Option<SenseCode>,
    /// Data-In bytes actually received.
    pub data_len: usize,
}

/// Why a command has no SCSI status to look at.
#[derive(Debug, thiserror::Error)]
pub enum SgError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a block device (a file cannot be fenced at the disk)")]
    NotBlockDevice(PathBuf),
    #[error("CDB of {0} bytes (6 to 16 supported)")]
    CdbLength(usize),
    #[error("SG_IO failed: {0}")]
    Ioctl(#[source] io::Error),
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    #[error("transport error (host_status {0:#04x})")]
    Host(u16),
    #[error("driver error (driver_status {0:#04x})")]
    Driver(u16),
    #[error("the kernel reported {resid} bytes left of a transfer of {len}")]
    Residual { resid: i32, len: usize },
}

/// Fills an `sg_io_hdr` for `cmd` with `sense` as the sense buffer. The pointers in the result
/// borrow `cmd` and `sense`: it must not outlive them.
pub fn encode(cmd: &mut SgCommand<'_>, sense: &mut [u8; SENSE_LEN]) -> Result<SgIoHdr, SgError> {
    if !(6..=16).contains(&cmd.cdb.len()) {
        return Err(SgError::CdbLength(cmd.cdb.len()));
    }
    let (dir, ptr, len) = match &mut cmd.data {
        Data::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
        Data::Out(d) => (SG_DXFER_TO_DEV, d.as_ptr() as *mut libc::c_void, d.len()),
        Data::In(d) => (SG_DXFER_FROM_DEV, d.as_mut_ptr().cast(), d.len()),
    };
    let timeout_ms = u32::try_from(cmd.timeout.as_millis())
        .unwrap_or(u32::MAX - 1)
        .max(1);
    Ok(SgIoHdr {
        interface_id: SG_INTERFACE_ID,
        dxfer_direction: dir,
        cmd_len: cmd.cdb.len() as u8,
        mx_sb_len: SENSE_LEN as u8,
        iovec_count: 0,
        dxfer_len: u32::try_from(len).map_err(|_| SgError::Residual { resid: 0, len })?,
        dxferp: ptr,
        cmdp: cmd.cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    })
}

/// Checks what the kernel wrote back into `hdr` (with `sense` its sense buffer) for a command
/// that ran with `timeout`: a transport or driver failure or a timeout is an error; otherwise the
/// SCSI status and the decoded sense are returned for the caller to judge.
pub fn decode(hdr: &SgIoHdr, sense: &[u8], timeout: Duration) -> Result<SgReply, SgError> {
    match hdr.host_status {
        host::DID_OK => {}
        host::DID_TIME_OUT => return Err(SgError::Timeout(timeout)),
        h => return Err(SgError::Host(h)),
    }
    match hdr.driver_status & 0x0f {
        driver::DRIVER_OK | driver::DRIVER_SENSE => {}
        driver::DRIVER_TIMEOUT => return Err(SgError::Timeout(timeout)),
        d => return Err(SgError::Driver(d)),
    }
    let len = hdr.dxfer_len as usize;
    let resid = hdr.resid;
    if resid < 0 || resid as usize > len {
        return Err(SgError::Residual { resid, len });
    }
    let written = usize::from(hdr.sb_len_wr).min(sense.len());
    let sense = if written > 0 {
        SenseCode::from_sense_data(&sense[..written])
    } else {
        None
    };
    Ok(SgReply {
        status: hdr.status,
        sense,
        data_len: len - resid as usize,
    })
}

/// The paths under a block device: for a device-mapper device (a dm-multipath map) the block
/// devices it sits on, one per path (`/sys/class/block/NAME/slaves`), as `/dev/NAME`; empty for
/// a plain disk. Each path is an I_T nexus of its own, which a reservation key must be
/// registered through.
pub fn paths_of(dev: &Path) -> Vec<PathBuf> {
    let Ok(real) = std::fs::canonicalize(dev) else {
        return Vec::new();
    };
    let Some(name) = real.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    slaves_in(Path::new("/sys/class/block"), name)
        .into_iter()
        .map(|s| Path::new("/dev").join(s))
        .collect()
}

/// The names in `sys_block/NAME/slaves`, sorted.
fn slaves_in(sys_block: &Path, name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(sys_block.join(name).join("slaves")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// A block device opened for SCSI pass-through.
#[derive(Debug)]
pub struct SgDevice {
    path: PathBuf,
    file: File,
}

impl SgDevice {
    /// Opens `path`, which must be a block device (read-write, O_NONBLOCK so that a device
    /// without media still opens).
    pub fn open(path: &Path) -> Result<SgDevice, SgError> {
        let open_err = |source| SgError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if !meta.file_type().is_block_device() {
            return Err(SgError::NotBlockDevice(path.to_path_buf()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        Ok(SgDevice {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `cmd`, blocking until it completes or the kernel's timeout fires.
    pub fn execute(&self, mut cmd: SgCommand<'_>) -> Result<SgReply, SgError> {
        let timeout = cmd.timeout;
        let mut sense = [0u8; SENSE_LEN];
        let mut hdr = encode(&mut cmd, &mut sense)?;
        // SAFETY: `hdr` points at `cmd`'s CDB and data buffer and at `sense`, all alive and not
        // otherwise borrowed until the ioctl returns; the kernel writes at most `dxfer_len` and
        // `mx_sb_len` bytes into them.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), SG_IO as _, &mut hdr as *mut SgIoHdr) };
        if r < 0 {
            return Err(SgError::Ioctl(io::Error::last_os_error()));
        }
        decode(&hdr, &sense, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_header_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<SgIoHdr>(), 88);
        assert_eq!(std::mem::offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(std::mem::offset_of!(SgIoHdr, timeout), 40);
        assert_eq!(std::mem::offset_of!(SgIoHdr, usr_ptr), 56);
        assert_eq!(std::mem::offset_of!(SgIoHdr, status), 64);
        assert_eq!(std::mem::offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(std::mem::offset_of!(SgIoHdr, resid), 72);
        assert_eq!(std::mem::offset_of!(SgIoHdr, info), 80);
    }

    #[test]
    fn encoding_of_each_direction() {
        let cdb = [0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0, 0];
        let mut sense = [0u8; SENSE_LEN];
        let mut buf = [0u8; 8192];
        let mut cmd = SgCommand {
            cdb: &cdb,
            data: Data::In(&mut buf),
            timeout: Duration::from_millis(1500),
        };
        let h = encode(&mut cmd, &mut sense).expect("encodes");
        assert_eq!(h.interface_id, b'S' as i32);
        assert_eq!(h.dxfer_direction, SG_DXFER_FROM_DEV);
        assert_eq!(h.cmd_len, 10);
        assert_eq!(h.mx_sb_len, 64);
        assert_eq!(h.dxfer_len, 8192);
        assert_eq!(h.timeout, 1500);
        assert_eq!(h.cmdp, cdb.as_ptr());

        let params = [0u8; 24];
        let out_cdb = [0x5f, 6, 0, 0, 0, 0, 0, 0, 24, 0];
        let mut cmd = SgCommand {
            cdb: &out_cdb,
            data: Data::Out(&params),
            timeout: Duration::ZERO,
        };
        let h = encode(&mut cmd, &mut sense).expect("encodes");
        assert_eq!(h.dxfer_direction, SG_DXFER_TO_DEV);
        assert_eq!(h.dxfer_len, 24);
        // A zero timeout would mean the kernel's default: never ask for it.
        assert_eq!(h.timeout, 1);

        let tur = [0u8; 6];
        let mut cmd = SgCommand {
            cdb: &tur,
            data: Data::None,
            timeout: T,
        };
        let h = encode(&mut cmd, &mut sense).expect("encodes");
        assert_eq!((h.dxfer_direction, h.dxfer_len), (SG_DXFER_NONE, 0));
        assert!(h.dxferp.is_null());

        let mut cmd = SgCommand {
            cdb: &[0u8; 17],
            data: Data::None,
            timeout: T,
        };
        assert!(matches!(
            encode(&mut cmd, &mut sense),
            Err(SgError::CdbLength(17))
        ));
    }

    fn reply(f: impl FnOnce(&mut SgIoHdr)) -> SgIoHdr {
        let mut sense = [0u8; SENSE_LEN];
        let mut buf = [0u8; 32];
        let mut cmd = SgCommand {
            cdb: &[0u8; 10],
            data: Data::In(&mut buf),
            timeout: T,
        };
        let mut h = encode(&mut cmd, &mut sense).expect("encodes");
        // The pointers are not looked at by `decode`.
        h.dxferp = std::ptr::null_mut();
        h.sbp = std::ptr::null_mut();
        f(&mut h);
        h
    }

    #[test]
    fn decoding_good_check_condition_and_failures() {
        let good = reply(|h| h.resid = 8);
        let r = decode(&good, &[0; SENSE_LEN], T).expect("good");
        assert_eq!((r.status, r.sense, r.data_len), (0, None, 24));

        // CHECK CONDITION with fixed-format sense: UNIT ATTENTION 2A/03.
        let mut sense = [0u8; SENSE_LEN];
        sense[0] = 0x70;
        sense[2] = 0x06;
        sense[7] = 10;
        sense[12] = 0x2a;
        sense[13] = 0x03;
        let cc = reply(|h| {
            h.status = 2;
            h.driver_status = driver::DRIVER_SENSE;
            h.sb_len_wr = 18;
        });
        let r = decode(&cc, &sense, T).expect("a status");
        assert_eq!(r.status, 2);
        assert_eq!(r.sense, Some(SenseCode::UA_RESERVATIONS_PREEMPTED));

        let conflict = reply(|h| h.status = 0x18);
        assert_eq!(decode(&conflict, &sense, T).expect("status").status, 0x18);

        let timed_out = reply(|h| h.host_status = host::DID_TIME_OUT);
        assert!(matches!(
            decode(&timed_out, &sense, T),
            Err(SgError::Timeout(_))
        ));
        let drv_timeout = reply(|h| h.driver_status = driver::DRIVER_TIMEOUT);
        assert!(matches!(
            decode(&drv_timeout, &sense, T),
            Err(SgError::Timeout(_))
        ));
        let no_connect = reply(|h| h.host_status = host::DID_NO_CONNECT);
        assert!(matches!(
            decode(&no_connect, &sense, T),
            Err(SgError::Host(1))
        ));
        let drv = reply(|h| h.driver_status = 0x04);
        assert!(matches!(decode(&drv, &sense, T), Err(SgError::Driver(4))));
        let bad_resid = reply(|h| h.resid = 33);
        assert!(matches!(
            decode(&bad_resid, &sense, T),
            Err(SgError::Residual { resid: 33, .. })
        ));
    }

    #[test]
    fn the_paths_of_a_multipath_map_are_its_slaves() {
        let root = std::env::temp_dir().join(format!("duet-sg-sys-{}", std::process::id()));
        for p in ["dm-3/slaves/sdc", "dm-3/slaves/sdb", "sda"] {
            std::fs::create_dir_all(root.join(p)).expect("fake sysfs");
        }
        let dm = slaves_in(&root, "dm-3");
        let plain = slaves_in(&root, "sda");
        let missing = slaves_in(&root, "sdz");
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(dm, vec!["sdb".to_string(), "sdc".to_string()]);
        assert!(plain.is_empty());
        assert!(missing.is_empty());
        assert!(paths_of(Path::new("/nonexistent/duet")).is_empty());
    }

    #[test]
    fn a_regular_file_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("duet-sg-test-{}", std::process::id()));
        std::fs::write(&path, b"x").expect("temp file");
        let e = SgDevice::open(&path).expect_err("not a block device");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(e, SgError::NotBlockDevice(_)));
        assert!(e.to_string().contains(&path.display().to_string()));
    }
}

//! Whether a backing store has a volatile write cache of its own, for the LU's initial
//! Caching-page WCE: a block device says so in sysfs (`queue/write_cache`: `write back` or
//! `write through`; a partition's queue is its parent disk's, found through
//! `/sys/dev/block/MAJ:MIN`); a regular file always has one (its data and the file system's
//! metadata are volatile until `fdatasync`). Reads sysfs only.

use std::path::{Path, PathBuf};

/// The major and minor numbers of a device number (glibc's encoding).
fn major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    (major, minor)
}

/// The sysfs directory of the disk whose queue serves the block device `rdev`: the device's own,
/// or its parent's for a partition.
fn queue_dir(sys: &Path, rdev: u64) -> Option<PathBuf> {
    let (major, minor) = major_minor(rdev);
    let dev = sys
        .join("dev/block")
        .join(format!("{major}:{minor}"))
        .canonicalize()
        .ok()?;
    if dev.join("partition").exists() {
        dev.parent().map(|p| p.join("queue"))
    } else {
        Some(dev.join("queue"))
    }
}

/// What a `queue/write_cache` file says: `Some(true)` for `write back`, `Some(false)` for
/// `write through`, `None` for anything else.
pub fn parse_write_cache(text: &str) -> Option<bool> {
    match text.trim() {
        "write back" => Some(true),
        "write through" => Some(false),
        _ => None,
    }
}

/// Whether the block device `rdev` caches writes volatilely, as sysfs mounted at `sys` says;
/// `true` when it cannot be told (the host then flushes, which is always safe).
pub fn device_write_cache_in(sys: &Path, rdev: u64) -> bool {
    queue_dir(sys, rdev)
        .and_then(|q| std::fs::read_to_string(q.join("write_cache")).ok())
        .and_then(|t| parse_write_cache(&t))
        .unwrap_or(true)
}

/// [`device_write_cache_in`] on the system's `/sys`.
pub fn device_write_cache(rdev: u64) -> bool {
    device_write_cache_in(Path::new("/sys"), rdev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_words_map_to_wce() {
        assert_eq!(parse_write_cache("write back\n"), Some(true));
        assert_eq!(parse_write_cache("write through\n"), Some(false));
        assert_eq!(parse_write_cache(""), None);
    }

    /// glibc's `makedev`.
    fn makedev(major: u64, minor: u64) -> u64 {
        (major & 0xfff) << 8 | (major & !0xfff) << 32 | (minor & 0xff) | (minor & !0xff) << 12
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        assert_eq!(major_minor(0x801), (8, 1));
        for (major, minor) in [(8, 1), (259, 65536), (4095, 255), (4096, 1 << 20)] {
            assert_eq!(major_minor(makedev(major, minor)), (major, minor));
        }
    }

    #[test]
    fn a_partition_reports_its_disks_queue() {
        let root = std::env::temp_dir().join(format!("duet-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let disk = root.join("devices/sdx");
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::create_dir_all(disk.join("sdx1")).unwrap();
        std::fs::write(disk.join("sdx1/partition"), "1\n").unwrap();
        std::fs::write(disk.join("queue/write_cache"), "write through\n").unwrap();
        std::fs::create_dir_all(root.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, root.join("dev/block/8:0")).unwrap();
        std::os::unix::fs::symlink(disk.join("sdx1"), root.join("dev/block/8:1")).unwrap();
        assert!(!device_write_cache_in(&root, 0x800));
        assert!(!device_write_cache_in(&root, 0x801));
        std::fs::write(disk.join("queue/write_cache"), "write back\n").unwrap();
        assert!(device_write_cache_in(&root, 0x801));
        // Unknown device: assume a volatile cache.
        assert!(device_write_cache_in(&root, 0x802));
        let _ = std::fs::remove_dir_all(&root);
    }
}

//! The `scsi-pr` fencing agent's part of `[ha]`: reservation keys as written (`0x…`), and the
//! completion of the agent with what only the whole configuration knows (the LUNs' backing
//! devices, the first target's name as the default cluster id), refusing a file-backed LUN or
//! quorum area by name. Uses `super` (the `[ha]` section), the configuration's model and core's
//! key derivation; touches the file system only to ask what a path is.

use std::path::PathBuf;

use duet_core::ha::peer_of;
use duet_core::scsi::host_pr::derive_key;

use super::HaConfig;
use crate::config::error::ConfigError;
use crate::config::model::Target;
use crate::ha::fence::FenceAgent;

/// Parses a reservation key: `0x` and 1 to 16 hex digits, not zero.
pub(super) fn parse_pr_key(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .ok_or_else(|| format!("expected 0x and up to 16 hex digits, got `{t}`"))?;
    if hex.is_empty() || hex.len() > 16 {
        return Err(format!("expected 0x and 1 to 16 hex digits, got `{t}`"));
    }
    match u64::from_str_radix(hex, 16) {
        Ok(0) => Err("key 0 is not a reservation key (it means \"unregister\")".into()),
        Ok(k) => Ok(k),
        Err(_) => Err(format!("expected 0x and up to 16 hex digits, got `{t}`")),
    }
}

/// Completes a `scsi-pr` agent with what only the whole configuration knows: the backing paths
/// of the served LUNs (fenced after the quorum device) and, without `cluster_id`, keys derived
/// from the first target's name (in name order; both controllers serve the same targets). A
/// backing path that exists and is not a block device is an error naming it: a file cannot be
/// fenced at the disk. Does nothing for other agents.
pub fn attach_scsi_pr(
    file: &str,
    ha: &mut HaConfig,
    targets: &[Target],
) -> Result<(), ConfigError> {
    let FenceAgent::ScsiPr(pr) = &mut ha.fencing else {
        return Ok(());
    };
    if ha.cluster_id.is_none() {
        let Some(first) = targets.iter().map(|t| t.name.as_str()).min() else {
            return Err(ConfigError::new(
                file,
                ha.line,
                "[ha]: fencing = \"scsi-pr\" without `cluster_id` needs a target to name the pair",
            ));
        };
        if pr.key == 0 {
            pr.key = derive_key(first, ha.id);
        }
        if pr.peer_key == 0 {
            pr.peer_key = derive_key(first, peer_of(ha.id));
        }
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    for lun in targets.iter().flat_map(|t| &t.luns) {
        if lun.path == pr.quorum {
            return Err(ConfigError::new(
                file,
                ha.line,
                format!(
                    "[ha]: LUN {} is backed by the quorum device {}",
                    lun.number,
                    lun.path.display()
                ),
            ));
        }
        if let Some(kind) = not_a_block_device(&lun.path) {
            return Err(ConfigError::new(
                file,
                ha.line,
                format!(
                    "[ha]: fencing = \"scsi-pr\" needs every LUN on a shared block device; LUN {} \
                     is backed by {}, {kind}: a file cannot be fenced at the disk",
                    lun.number,
                    lun.path.display()
                ),
            ));
        }
        if !paths.contains(&lun.path) {
            paths.push(lun.path.clone());
        }
    }
    if let Some(kind) = not_a_block_device(&pr.quorum) {
        return Err(ConfigError::new(
            file,
            ha.line,
            format!(
                "[ha]: fencing = \"scsi-pr\" needs the quorum area on a shared block device; {} is {kind}",
                pr.quorum.display()
            ),
        ));
    }
    pr.luns = paths;
    Ok(())
}

/// What `path` is when it exists and is not a block device (a missing path is left to the start).
fn not_a_block_device(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_block_device() {
        None
    } else if t.is_file() {
        Some("a regular file")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a block device")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ha::pr_fence::ScsiPrConfig;

    /// A pair's configuration with one LUN backed by `lun` and the `[ha]` lines `ha`.
    fn config(lun: &str, ha: &str) -> String {
        format!(
            "[portal_group.pg0]\nlisten = [\"127.0.0.1:3260\"]\ndiscovery_auth_group = \"none\"\n\
             [[target]]\nname = \"iqn.2026-12.dev.duet:vault\"\nportal_group = \"pg0\"\n\
             auth_group = \"none\"\n[[target.lun]]\nnumber = 1\npath = \"{lun}\"\n\
             [ha]\nid = 1\npeer = \"listen 127.0.0.1:7777\"\nquorum = \"/dev/duet-test-quorum\"\n\
             secret = \"0123456789abcdef\"\n{ha}"
        )
    }

    fn pr_of(c: &Config) -> &ScsiPrConfig {
        match &c.ha.as_ref().expect("[ha]").fencing {
            FenceAgent::ScsiPr(pr) => pr,
            other => panic!("not scsi-pr: {other:?}"),
        }
    }

    #[test]
    fn scsi_pr_keys_default_from_the_cluster_id_or_the_target_name() {
        let c = Config::parse(
            "a.toml",
            &config("/dev/duet-test-lun", "fencing = \"scsi-pr\"\n"),
        )
        .expect("parses");
        let pr = pr_of(&c);
        assert_eq!(pr.key, derive_key("iqn.2026-12.dev.duet:vault", 1));
        assert_eq!(pr.peer_key, derive_key("iqn.2026-12.dev.duet:vault", 2));
        assert_eq!(pr.quorum, PathBuf::from("/dev/duet-test-quorum"));
        assert_eq!(pr.luns, vec![PathBuf::from("/dev/duet-test-lun")]);

        let c = Config::parse(
            "a.toml",
            &config(
                "/dev/duet-test-lun",
                "fencing = \"scsi-pr\"\ncluster_id = \"pair-7\"\n",
            ),
        )
        .expect("parses");
        assert_eq!(pr_of(&c).key, derive_key("pair-7", 1));

        let c = Config::parse(
            "a.toml",
            &config(
                "/dev/duet-test-lun",
                "fencing = \"scsi-pr\"\npr_key = \"0xABC\"\npeer_pr_key = \"0x0def\"\n",
            ),
        )
        .expect("parses");
        assert_eq!((pr_of(&c).key, pr_of(&c).peer_key), (0xabc, 0xdef));
    }

    #[test]
    fn scsi_pr_errors_name_file_line_and_key() {
        let e = |ha: &str| {
            Config::parse("a.toml", &config("/dev/duet-test-lun", ha))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("fencing = \"scsi-pr\"\npr_key = \"0x0\"\n"),
            "a.toml:17: [ha]: `pr_key`: key 0 is not a reservation key (it means \"unregister\")"
        );
        assert!(e("fencing = \"scsi-pr\"\npr_key = \"12\"\n").contains("expected 0x"));
        assert!(
            e("fencing = \"scsi-pr\"\npr_key = \"0x12345678901234567\"\n")
                .contains("1 to 16 hex digits")
        );
        assert!(e("fencing = \"none\"\npr_key = \"0x12\"\n")
            .contains("only used with fencing = \"scsi-pr\""));
        assert!(
            e("fencing = \"scsi-pr\"\npr_key = \"0x12\"\npeer_pr_key = \"0x12\"\n")
                .contains("need different keys")
        );
        assert!(e("fencing = \"scsi-pr\"\ncluster_id = \" \"\n").contains("`cluster_id`"));
    }

    #[test]
    fn scsi_pr_refuses_a_file_backed_lun_by_name() {
        let file = std::env::temp_dir().join(format!("duet-pr-cfg-{}.img", std::process::id()));
        std::fs::write(&file, b"").expect("temp file");
        let text = config(&file.display().to_string(), "fencing = \"scsi-pr\"\n");
        let e = Config::parse("a.toml", &text).unwrap_err().to_string();
        let _ = std::fs::remove_file(&file);
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("a regular file"), "{e}");
        assert!(e.contains("cannot be fenced at the disk"), "{e}");
    }
}

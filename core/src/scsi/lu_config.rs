//! The configuration of one logical unit ([`LuConfig`]) and its validation ([`ConfigError`]).
//! Plain data: read by the executor (`scsi::lu`) and the data builders (`scsi::inquiry`).

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
    /// The Caching page's WCE at power on and after a cold reset (its default value): whether the
    /// store keeps acknowledged writes in a volatile cache until a flush. The runtime sets it from
    /// the backing store (a direct block device whose queue is write through: `false`).
    #[serde(default = "write_cache_default")]
    pub write_cache: bool,
}

fn write_cache_default() -> bool {
    true
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
            write_cache: true,
        }
    }

    /// Checks the configuration as [`LogicalUnit::new`](super::LogicalUnit::new) requires, and
    /// returns the NAA 6 designator the LU reports (the configured one, or the serial's default).
    pub fn validate(&self) -> Result<[u8; 16], ConfigError> {
        if self.block_size != 512 && self.block_size != 4096 {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        if self.num_blocks == 0 {
            return Err(ConfigError::Empty);
        }
        if self.serial.is_empty()
            || self.serial.len() > 200
            || !self.serial.bytes().all(|b| (0x21..0x7F).contains(&b))
        {
            return Err(ConfigError::Serial);
        }
        if self.lbppbe > 15 {
            return Err(ConfigError::Limits);
        }
        if self.max_transfer_blocks == 0
            || self.max_write_same_blocks == 0
            || (self.thin && (self.max_unmap_blocks == 0 || self.max_unmap_descriptors == 0))
        {
            return Err(ConfigError::Limits);
        }
        let naa = match self.naa {
            Some(n) if n[0] >> 4 == 6 => n,
            Some(_) => return Err(ConfigError::Naa),
            None => super::ident::default_naa(&self.serial),
        };
        Ok(naa)
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

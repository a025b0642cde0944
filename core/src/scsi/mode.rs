//! Mode pages (SPC-4 7.5, SBC-3 6.4): Caching (08h), Control (0Ah) and Informational
//! Exceptions Control (1Ch), with MODE SENSE page control (current, changeable, default) and
//! MODE SELECT validation against the changeable mask.

use super::sense_data::Sense;
use crate::sense::SenseCode;

pub(crate) const PAGE_CACHING: u8 = 0x08;
pub(crate) const PAGE_CONTROL: u8 = 0x0A;
pub(crate) const PAGE_IEC: u8 = 0x1C;
pub(crate) const PAGE_ALL: u8 = 0x3F;

const PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_IEC];

/// 05/39/00 SAVING PARAMETERS NOT SUPPORTED.
const SAVING_NOT_SUPPORTED: SenseCode = SenseCode::new(0x05, 0x39, 0x00);

/// The default value of a page; `wce` is the Caching page's WCE (the store's own volatile cache).
fn default_page(code: u8, wce: bool) -> Vec<u8> {
    match code {
        // WCE=1: a write-back cache, flushed by SYNCHRONIZE CACHE and FUA. WCE=0: every write is
        // durable before GOOD.
        PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = PAGE_CACHING;
            p[1] = 0x12;
            p[2] = if wce { 0x04 } else { 0 };
            p
        }
        // TST 0, D_SENSE 0, QAM 1 (unrestricted reordering), QERR 0, UA_INTLCK 0, SWP 0,
        // TAS 1, busy timeout unlimited.
        PAGE_CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_CONTROL;
            p[1] = 0x0A;
            p[3] = 0x10;
            p[5] = 0x40;
            p[8] = 0xFF;
            p[9] = 0xFF;
            p
        }
        // DEXCPT=1 (informational exceptions disabled), MRIE 0.
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_IEC;
            p[1] = 0x0A;
            p[2] = 0x08;
            p
        }
    }
}

fn changeable_mask(code: u8) -> Vec<u8> {
    let mut m = vec![0u8; default_page(code, true).len()];
    m[0] = code;
    m[1] = (m.len() - 2) as u8;
    match code {
        PAGE_CACHING => m[2] = 0x04, // WCE
        PAGE_CONTROL => {
            m[2] = 0x04; // D_SENSE
            m[4] = 0x08; // SWP
        }
        _ => {}
    }
    m
}

/// The current mode page values of one logical unit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModePages {
    pages: Vec<Vec<u8>>,
    /// The Caching page's default WCE (what MODE SENSE reports as the default value).
    #[serde(default = "default_wce")]
    default_wce: bool,
}

fn default_wce() -> bool {
    true
}

impl Default for ModePages {
    /// The pages of a store with a volatile write cache (WCE=1).
    fn default() -> Self {
        ModePages::new(true)
    }
}

impl ModePages {
    /// The default pages, with the Caching page's WCE set to `wce`
    /// ([`LuConfig::write_cache`](super::LuConfig::write_cache)).
    pub fn new(wce: bool) -> ModePages {
        ModePages {
            pages: PAGES.iter().map(|c| default_page(*c, wce)).collect(),
            default_wce: wce,
        }
    }

    fn current(&self, code: u8) -> &[u8] {
        self.pages
            .iter()
            .find(|p| p[0] & 0x3F == code)
            .map(|p| &p[..])
            .unwrap_or(&[])
    }

    /// Write cache enabled (Caching page WCE).
    pub fn wce(&self) -> bool {
        self.current(PAGE_CACHING)
            .get(2)
            .is_some_and(|b| b & 0x04 != 0)
    }

    /// Descriptor-format sense data (Control page D_SENSE).
    pub fn d_sense(&self) -> bool {
        self.current(PAGE_CONTROL)
            .get(2)
            .is_some_and(|b| b & 0x04 != 0)
    }

    /// Software write protect (Control page SWP).
    pub fn swp(&self) -> bool {
        self.current(PAGE_CONTROL)
            .get(4)
            .is_some_and(|b| b & 0x08 != 0)
    }

    /// The page(s) for MODE SENSE: `pc` 0 current, 1 changeable, 2 default; 3 (saved) fails.
    pub(crate) fn sense_pages(&self, pc: u8, page: u8, subpage: u8) -> Result<Vec<u8>, Sense> {
        if pc == 3 {
            return Err(Sense::new(SAVING_NOT_SUPPORTED));
        }
        let codes: Vec<u8> = if page == PAGE_ALL {
            if subpage != 0 && subpage != 0xFF {
                return Err(Sense::cdb_field(3, None));
            }
            PAGES.to_vec()
        } else if PAGES.contains(&page) {
            if subpage != 0 {
                return Err(Sense::cdb_field(3, None));
            }
            vec![page]
        } else {
            return Err(Sense::cdb_field(2, Some(5)));
        };
        let mut out = Vec::new();
        for c in codes {
            match pc {
                0 => out.extend_from_slice(self.current(c)),
                1 => out.extend_from_slice(&changeable_mask(c)),
                _ => out.extend_from_slice(&default_page(c, self.default_wce)),
            }
        }
        Ok(out)
    }

    /// Apply MODE SELECT page data (the part after header and block descriptors). `base` is the
    /// offset of `data` within the parameter list, for field pointers. Returns whether anything
    /// changed. Nothing changes unless every page is valid.
    pub(crate) fn select(&mut self, data: &[u8], base: usize) -> Result<bool, Sense> {
        let mut new = self.pages.clone();
        let mut at = 0usize;
        while at < data.len() {
            if data.len() - at < 2 {
                return Err(Sense::new(SenseCode::PARAM_LIST_LENGTH_ERROR));
            }
            let code = data[at] & 0x3F;
            if data[at] & 0x40 != 0 || !PAGES.contains(&code) {
                return Err(Sense::param_field((base + at) as u16, None));
            }
            let len = data[at + 1] as usize + 2;
            let cur = default_page(code, true);
            if len != cur.len() {
                return Err(Sense::param_field((base + at + 1) as u16, None));
            }
            if data.len() - at < len {
                return Err(Sense::new(SenseCode::PARAM_LIST_LENGTH_ERROR));
            }
            let mask = changeable_mask(code);
            let Some(slot) = new.iter_mut().find(|p| p[0] & 0x3F == code) else {
                return Err(Sense::param_field((base + at) as u16, None));
            };
            let given = &data[at..at + len];
            for i in 2..len {
                if (given[i] ^ slot[i]) & !mask[i] != 0 {
                    return Err(Sense::param_field((base + at + i) as u16, None));
                }
            }
            for i in 2..len {
                slot[i] = (slot[i] & !mask[i]) | (given[i] & mask[i]);
            }
            at += len;
        }
        let changed = new != self.pages;
        self.pages = new;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_changes_only_changeable_bits() {
        let mut m = ModePages::default();
        assert!(m.wce());
        let mut ctl = default_page(PAGE_CONTROL, true);
        ctl[2] |= 0x04;
        assert_eq!(m.select(&ctl, 4), Ok(true));
        assert!(m.d_sense());
        let mut bad = default_page(PAGE_CONTROL, true);
        bad[3] = 0x20; // QERR not changeable
        assert!(m.select(&bad, 4).is_err());
        assert!(m.d_sense(), "a rejected select changes nothing");
        let mut cache = default_page(PAGE_CACHING, true);
        cache[2] = 0;
        assert_eq!(m.select(&cache, 4), Ok(true));
        assert!(!m.wce());
    }

    #[test]
    fn all_pages_equal_the_single_pages() {
        let m = ModePages::default();
        let all = m.sense_pages(0, PAGE_ALL, 0).unwrap();
        let ctl = m.sense_pages(0, PAGE_CONTROL, 0).unwrap();
        assert!(all.windows(ctl.len()).any(|w| w == &ctl[..]));
        assert!(m.sense_pages(3, PAGE_ALL, 0).is_err());
        assert!(m.sense_pages(0, 0x15, 0).is_err());
    }

    #[test]
    fn the_initial_wce_is_the_default_and_survives_the_peer_copy() {
        let m = ModePages::new(false);
        assert!(!m.wce());
        let default = m.sense_pages(2, PAGE_CACHING, 0).unwrap();
        assert_eq!(default[2] & 0x04, 0);
        // The changeable mask still offers WCE.
        assert_eq!(m.sense_pages(1, PAGE_CACHING, 0).unwrap()[2], 0x04);
        // Pages serialized before the default was kept read back with WCE=1 as the default.
        let old = r#"{"pages":[[8,18,4,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}"#;
        let back: ModePages = serde_json::from_str(old).unwrap();
        assert!(back.default_wce);
    }
}

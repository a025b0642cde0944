//! Persistent reservations (SPC-4 5.13): registrations per I_T nexus, the reservation, its
//! generation and APTPL. [`PrState`] is plain serde data so the runtime can persist it (APTPL)
//! and the HA link can copy it to the peer controller.

use super::sense_data::Sense;
use super::types::Nexus;
use crate::sense::SenseCode;
use serde::{Deserialize, Serialize};

/// Reservation types (PERSISTENT RESERVE OUT TYPE field).
pub mod pr_type {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_RO: u8 = 5;
    pub const EXCLUSIVE_ACCESS_RO: u8 = 6;
    pub const WRITE_EXCLUSIVE_AR: u8 = 7;
    pub const EXCLUSIVE_ACCESS_AR: u8 = 8;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod pr_out {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    matches!(
        t,
        pr_type::WRITE_EXCLUSIVE_AR | pr_type::EXCLUSIVE_ACCESS_AR
    )
}

fn registrants_only(t: u8) -> bool {
    matches!(
        t,
        pr_type::WRITE_EXCLUSIVE_RO | pr_type::EXCLUSIVE_ACCESS_RO
    )
}

/// One registration: an I_T nexus and its reservation key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

/// The persistent reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The nexus that holds it (for all-registrants types: the one that created it; every
    /// registrant is a holder).
    pub holder: Nexus,
    /// Reservation type ([`pr_type`]).
    pub ptype: u8,
}

/// The persistent reservation state of one logical unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss, as last set by a registration.
    pub aptpl: bool,
}

/// How a command uses the medium, for the reservation access matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Never blocked by a persistent reservation.
    Always,
    Read,
    Write,
}

/// A PR OUT failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PrFail {
    Conflict,
    Check(Sense),
}

impl From<Sense> for PrFail {
    fn from(s: Sense) -> PrFail {
        PrFail::Check(s)
    }
}

/// Unit attentions a PR OUT asks for: (nexus, condition).
pub(crate) type PrUas = Vec<(Nexus, SenseCode)>;

/// The parsed basic PR OUT parameter list.
pub(crate) struct PrOutParams {
    pub key: u64,
    pub sa_key: u64,
    pub spec_i_pt: bool,
    pub all_tg_pt: bool,
    pub aptpl: bool,
    /// REGISTER AND MOVE only.
    pub unreg: bool,
    pub move_rtpi: u16,
    pub transport_id: Vec<u8>,
}

fn be64(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

impl PrOutParams {
    /// Parse the parameter list for service action `sa`; `param_len` is the CDB's length.
    pub fn parse(sa: u8, param_len: u32, data: &[u8]) -> Result<PrOutParams, Sense> {
        if sa == pr_out::REGISTER_AND_MOVE {
            if param_len < 24 || data.len() < 24 || (data.len() as u64) < param_len as u64 {
                return Err(Sense::new(SenseCode::PARAM_LIST_LENGTH_ERROR));
            }
            let tid_len = u32::from_be_bytes([data[20], data[21], data[22], data[23]]) as usize;
            if 24 + tid_len > param_len as usize {
                return Err(Sense::new(SenseCode::PARAM_LIST_LENGTH_ERROR));
            }
            return Ok(PrOutParams {
                key: be64(data, 0),
                sa_key: be64(data, 8),
                spec_i_pt: false,
                all_tg_pt: false,
                aptpl: data[17] & 1 != 0,
                unreg: data[17] & 2 != 0,
                move_rtpi: u16::from_be_bytes([data[18], data[19]]),
                transport_id: data[24..24 + tid_len].to_vec(),
            });
        }
        if param_len != 24 || data.len() < 24 {
            return Err(Sense::new(SenseCode::PARAM_LIST_LENGTH_ERROR));
        }
        Ok(PrOutParams {
            key: be64(data, 0),
            sa_key: be64(data, 8),
            spec_i_pt: data[20] & 0x08 != 0,
            all_tg_pt: data[20] & 0x04 != 0,
            aptpl: data[20] & 0x01 != 0,
            unreg: false,
            move_rtpi: 0,
            transport_id: Vec::new(),
        })
    }
}

/// Parse an iSCSI TransportID (format 00b name or 01b name + ISID) into (name, isid).
fn parse_transport_id(t: &[u8]) -> Option<(String, Option<[u8; 6]>)> {
    if t.len() < 4 || t[0] & 0x0F != 5 {
        return None;
    }
    let len = u16::from_be_bytes([t[2], t[3]]) as usize;
    let body = t.get(4..4 + len.min(t.len() - 4))?;
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    let s = std::str::from_utf8(&body[..end]).ok()?;
    match t[0] >> 6 {
        0 => Some((s.to_string(), None)),
        1 => {
            let (name, rest) = s.split_once(",i,0x").or_else(|| s.split_once(",I,0x"))?;
            if rest.len() != 12 {
                return None;
            }
            let mut isid = [0u8; 6];
            for (i, b) in isid.iter_mut().enumerate() {
                *b = u8::from_str_radix(rest.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some((name.to_string(), Some(isid)))
        }
        _ => None,
    }
}

/// The iSCSI TransportID (format 01b: name,i,0xISID) of a nexus' initiator port.
pub(crate) fn transport_id(n: &Nexus) -> Vec<u8> {
    let mut name = n.initiator_port_name().into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut v = vec![0x45, 0];
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend_from_slice(&name);
    v
}

impl PrState {
    /// The key registered for `nexus`.
    pub fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| &r.nexus == nexus)
            .map(|r| r.key)
    }

    /// Whether `nexus` holds the reservation (every registrant for all-registrants types).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if all_registrants(r.ptype) => self.key_of(nexus).is_some(),
            Some(r) => &r.holder == nexus,
        }
    }

    /// Whether a command of class `access` from `nexus` conflicts with the reservation.
    pub(crate) fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        let Some(res) = &self.reservation else {
            return false;
        };
        if access == Access::Always || self.is_holder(nexus) {
            return false;
        }
        let registered = self.key_of(nexus).is_some();
        match res.ptype {
            pr_type::WRITE_EXCLUSIVE => access == Access::Write,
            pr_type::EXCLUSIVE_ACCESS => true,
            pr_type::WRITE_EXCLUSIVE_RO | pr_type::WRITE_EXCLUSIVE_AR => {
                !registered && access == Access::Write
            }
            pr_type::EXCLUSIVE_ACCESS_RO | pr_type::EXCLUSIVE_ACCESS_AR => !registered,
            _ => false,
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn others(&self, nexus: &Nexus) -> Vec<Nexus> {
        self.registrations
            .iter()
            .filter(|r| &r.nexus != nexus)
            .map(|r| r.nexus.clone())
            .collect()
    }

    /// Remove `nexus`' registration, ending or handing over the reservation as SPC-4 5.13.11.
    fn unregister(&mut self, nexus: &Nexus, uas: &mut PrUas) {
        let was_holder = self.is_holder(nexus);
        self.registrations.retain(|r| &r.nexus != nexus);
        if let Some(res) = self.reservation.clone() {
            if all_registrants(res.ptype) {
                if self.registrations.is_empty() {
                    self.reservation = None;
                } else if res.holder == *nexus {
                    // Keep the reservation; record a remaining registrant as nominal holder.
                    if let Some(r) = self.registrations.first() {
                        self.reservation = Some(Reservation {
                            holder: r.nexus.clone(),
                            ptype: res.ptype,
                        });
                    }
                }
            } else if was_holder {
                self.reservation = None;
                if registrants_only(res.ptype) {
                    for n in self.others(nexus) {
                        uas.push((n, SenseCode::UA_RESERVATIONS_RELEASED));
                    }
                }
            }
        }
    }

    /// Execute PERSISTENT RESERVE OUT. Returns the unit attentions to raise.
    pub(crate) fn out(
        &mut self,
        nexus: &Nexus,
        sa: u8,
        scope: u8,
        ptype: u8,
        p: &PrOutParams,
    ) -> Result<PrUas, PrFail> {
        let mut uas = PrUas::new();
        let current = self.key_of(nexus);
        if p.spec_i_pt {
            return Err(Sense::param_field(20, Some(3)).into());
        }
        if p.all_tg_pt {
            return Err(Sense::param_field(20, Some(2)).into());
        }
        match sa {
            pr_out::REGISTER | pr_out::REGISTER_AND_IGNORE => {
                match current {
                    None => {
                        if sa == pr_out::REGISTER && p.key != 0 {
                            return Err(PrFail::Conflict);
                        }
                        if p.sa_key == 0 {
                            // SPC-4 5.13.7: an unregistered nexus registering key 0 gets GOOD
                            // and nothing changes (not even APTPL).
                            return Ok(uas);
                        }
                        self.registrations.push(Registration {
                            nexus: nexus.clone(),
                            key: p.sa_key,
                        });
                    }
                    Some(k) => {
                        if sa == pr_out::REGISTER && p.key != k {
                            return Err(PrFail::Conflict);
                        }
                        if p.sa_key == 0 {
                            self.unregister(nexus, &mut uas);
                        } else if let Some(r) =
                            self.registrations.iter_mut().find(|r| &r.nexus == nexus)
                        {
                            r.key = p.sa_key;
                        }
                    }
                }
                self.aptpl = p.aptpl;
                self.bump();
                Ok(uas)
            }
            pr_out::RESERVE => {
                if current != Some(p.key) || current.is_none() {
                    return Err(PrFail::Conflict);
                }
                if scope != 0 {
                    return Err(Sense::cdb_field(2, Some(4)).into());
                }
                if !valid_type(ptype) {
                    return Err(Sense::cdb_field(2, Some(0)).into());
                }
                match &self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: nexus.clone(),
                            ptype,
                        });
                        Ok(uas)
                    }
                    Some(r) if self.is_holder(nexus) && r.ptype == ptype => Ok(uas),
                    Some(_) => Err(PrFail::Conflict),
                }
            }
            pr_out::RELEASE => {
                if current.is_none() || current != Some(p.key) {
                    return Err(PrFail::Conflict);
                }
                let Some(res) = self.reservation.clone() else {
                    return Ok(uas);
                };
                if !self.is_holder(nexus) {
                    return Ok(uas);
                }
                if scope != 0 || res.ptype != ptype {
                    return Err(PrFail::Check(Sense::new(SenseCode::new(0x05, 0x26, 0x04))));
                }
                self.reservation = None;
                if registrants_only(res.ptype) || all_registrants(res.ptype) {
                    for n in self.others(nexus) {
                        uas.push((n, SenseCode::UA_RESERVATIONS_RELEASED));
                    }
                }
                Ok(uas)
            }
            pr_out::CLEAR => {
                if current.is_none() || current != Some(p.key) {
                    return Err(PrFail::Conflict);
                }
                for n in self.others(nexus) {
                    uas.push((n, SenseCode::UA_RESERVATIONS_PREEMPTED));
                }
                self.registrations.clear();
                self.reservation = None;
                self.bump();
                Ok(uas)
            }
            pr_out::PREEMPT | pr_out::PREEMPT_AND_ABORT => {
                if current.is_none() || current != Some(p.key) {
                    return Err(PrFail::Conflict);
                }
                let remove_key = |st: &mut PrState, key: u64, uas: &mut PrUas| -> usize {
                    let victims: Vec<Nexus> = st
                        .registrations
                        .iter()
                        .filter(|r| r.key == key && &r.nexus != nexus)
                        .map(|r| r.nexus.clone())
                        .collect();
                    for v in &victims {
                        st.registrations.retain(|r| &r.nexus != v);
                        uas.push((v.clone(), SenseCode::UA_REGISTRATIONS_PREEMPTED));
                    }
                    victims.len()
                };
                match self.reservation.clone() {
                    None => {
                        if p.sa_key == 0 {
                            return Err(Sense::param_field(8, None).into());
                        }
                        if remove_key(self, p.sa_key, &mut uas) == 0 {
                            return Err(PrFail::Conflict);
                        }
                    }
                    Some(res) if all_registrants(res.ptype) => {
                        if p.sa_key == 0 {
                            if scope != 0 {
                                return Err(Sense::cdb_field(2, Some(4)).into());
                            }
                            if !valid_type(ptype) {
                                return Err(Sense::cdb_field(2, Some(0)).into());
                            }
                            for n in self.others(nexus) {
                                uas.push((n, SenseCode::UA_REGISTRATIONS_PREEMPTED));
                            }
                            self.registrations.retain(|r| &r.nexus == nexus);
                            self.reservation = Some(Reservation {
                                holder: nexus.clone(),
                                ptype,
                            });
                        } else if remove_key(self, p.sa_key, &mut uas) == 0 {
                            return Err(PrFail::Conflict);
                        }
                    }
                    Some(res) => {
                        let holder_key = self.key_of(&res.holder);
                        if holder_key == Some(p.sa_key) {
                            if scope != 0 {
                                return Err(Sense::cdb_field(2, Some(4)).into());
                            }
                            if !valid_type(ptype) {
                                return Err(Sense::cdb_field(2, Some(0)).into());
                            }
                            remove_key(self, p.sa_key, &mut uas);
                            // SPC-4 5.13.11.4.3: the other registrants hear RESERVATIONS RELEASED only when the
                            // type (or scope) changes.
                            let changed = res.ptype != ptype;
                            self.reservation = Some(Reservation {
                                holder: nexus.clone(),
                                ptype,
                            });
                            if changed {
                                for r in &self.registrations {
                                    if &r.nexus != nexus {
                                        uas.push((
                                            r.nexus.clone(),
                                            SenseCode::UA_RESERVATIONS_RELEASED,
                                        ));
                                    }
                                }
                            }
                        } else {
                            if p.sa_key == 0 {
                                return Err(Sense::param_field(8, None).into());
                            }
                            if remove_key(self, p.sa_key, &mut uas) == 0 {
                                return Err(PrFail::Conflict);
                            }
                        }
                    }
                }
                self.bump();
                Ok(uas)
            }
            pr_out::REGISTER_AND_MOVE => {
                let Some(k) = current else {
                    return Err(PrFail::Conflict);
                };
                if k != p.key {
                    return Err(PrFail::Conflict);
                }
                let Some(res) = self.reservation.clone() else {
                    return Err(PrFail::Conflict);
                };
                if !self.is_holder(nexus) || all_registrants(res.ptype) {
                    return Err(PrFail::Conflict);
                }
                if p.sa_key == 0 {
                    return Err(Sense::param_field(8, None).into());
                }
                let Some((name, isid)) = parse_transport_id(&p.transport_id) else {
                    return Err(Sense::param_field(24, None).into());
                };
                let dest = Nexus {
                    initiator: name,
                    isid: isid.unwrap_or(nexus.isid),
                    rtpi: p.move_rtpi,
                };
                if dest == *nexus {
                    return Err(Sense::param_field(24, None).into());
                }
                match self.registrations.iter_mut().find(|r| r.nexus == dest) {
                    Some(r) => r.key = p.sa_key,
                    None => self.registrations.push(Registration {
                        nexus: dest.clone(),
                        key: p.sa_key,
                    }),
                }
                self.reservation = Some(Reservation {
                    holder: dest,
                    ptype: res.ptype,
                });
                if p.unreg {
                    self.registrations.retain(|r| &r.nexus != nexus);
                }
                self.aptpl = p.aptpl;
                self.bump();
                Ok(uas)
            }
            _ => Err(Sense::cdb_field(1, Some(4)).into()),
        }
    }

    /// PERSISTENT RESERVE IN data for service action `sa` (not cut to the allocation length).
    pub(crate) fn in_data(&self, sa: u8) -> Result<Vec<u8>, Sense> {
        let mut v = self.generation.to_be_bytes().to_vec();
        match sa {
            0 => {
                let keys: Vec<u64> = self.registrations.iter().map(|r| r.key).collect();
                v.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
                for k in keys {
                    v.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => match &self.reservation {
                None => v.extend_from_slice(&0u32.to_be_bytes()),
                Some(r) => {
                    v.extend_from_slice(&16u32.to_be_bytes());
                    let key = if all_registrants(r.ptype) {
                        0
                    } else {
                        self.key_of(&r.holder).unwrap_or(0)
                    };
                    v.extend_from_slice(&key.to_be_bytes());
                    v.extend_from_slice(&[0, 0, 0, 0, 0, r.ptype & 0x0F, 0, 0]);
                }
            },
            2 => {
                // REPORT CAPABILITIES: length 8; CRH 0, SIP_C 0, ATP_C 0, PTPL_C 1;
                // TMV 1, ALLOW COMMANDS 0, PTPL_A; type mask.
                v = vec![0, 8, 0x01, 0x80 | u8::from(self.aptpl), 0xEA, 0x01, 0, 0];
            }
            3 => {
                let mut body = Vec::new();
                for r in &self.registrations {
                    let holder = self.is_holder(&r.nexus);
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    body.push(u8::from(holder));
                    body.push(match (&self.reservation, holder) {
                        (Some(res), true) => res.ptype & 0x0F,
                        _ => 0,
                    });
                    body.extend_from_slice(&[0, 0, 0, 0]);
                    body.extend_from_slice(&r.nexus.rtpi.to_be_bytes());
                    let tid = transport_id(&r.nexus);
                    body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                v.extend_from_slice(&(body.len() as u32).to_be_bytes());
                v.extend_from_slice(&body);
            }
            _ => return Err(Sense::cdb_field(1, Some(4))),
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nx(i: u8) -> Nexus {
        Nexus::new(
            &format!("iqn.2026-11.test:init{i}"),
            [0x40, 0, 0, 0, 0, i],
            1,
        )
    }

    fn params(key: u64, sa_key: u64) -> PrOutParams {
        PrOutParams {
            key,
            sa_key,
            spec_i_pt: false,
            all_tg_pt: false,
            aptpl: false,
            unreg: false,
            move_rtpi: 0,
            transport_id: Vec::new(),
        }
    }

    #[test]
    fn transport_id_round_trips() {
        let n = nx(3);
        let t = transport_id(&n);
        assert_eq!(t.len() % 4, 0);
        let (name, isid) = parse_transport_id(&t).unwrap();
        assert_eq!(name, n.initiator);
        assert_eq!(isid, Some(n.isid));
    }

    #[test]
    fn register_with_wrong_key_conflicts_and_generation_counts_registrations() {
        let mut st = PrState::default();
        let a = nx(1);
        st.out(&a, pr_out::REGISTER, 0, 0, &params(0, 5)).unwrap();
        assert_eq!(st.generation, 1);
        assert_eq!(
            st.out(&a, pr_out::REGISTER, 0, 0, &params(6, 7)),
            Err(PrFail::Conflict)
        );
        st.out(&a, pr_out::RESERVE, 0, 1, &params(5, 0)).unwrap();
        assert_eq!(st.generation, 1, "reserve does not bump the generation");
        st.out(&a, pr_out::REGISTER_AND_IGNORE, 0, 0, &params(0, 9))
            .unwrap();
        assert_eq!(st.key_of(&a), Some(9));
        assert_eq!(st.generation, 2);
    }
}

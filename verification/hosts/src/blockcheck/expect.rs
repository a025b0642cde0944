//! What each block may hold (the oracle), the verdict on a block read back, and the state file
//! that carries the expectations from one run to the next (`--state`). Pure but for the file.

use super::block::Content;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What one block may hold.
///
/// `gen` is the newest acknowledged generation (0: nothing known, the block is not checked
/// unless this run writes it), written by `writer`. `tried` is the newest generation ever
/// submitted (`tried >= gen`): while a write is in flight, or after it failed, any generation in
/// `gen..=tried` is acceptable, since the failed write may or may not have reached the disk,
/// until a read shows one of them there ([`Expect::observe`]) or a newer write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub gen: u64,
    pub writer: u64,
    pub tried: u64,
}

impl Expect {
    /// The generation the next write of this block carries.
    pub fn next_gen(&self) -> u64 {
        self.gen.max(self.tried) + 1
    }

    /// Before submitting a write of generation `gen`.
    pub fn submit(&mut self, gen: u64) {
        self.tried = self.tried.max(gen);
    }

    /// After the write of generation `gen` by `writer` was acknowledged.
    pub fn ack(&mut self, gen: u64, writer: u64) {
        self.gen = gen;
        self.writer = writer;
        self.tried = self.tried.max(gen);
    }

    /// After a read judged [`Verdict::Ok`] returned `c`: a generation of ours newer than the
    /// acknowledged one (a write whose outcome was unknown) is on the disk, so from now on an
    /// older one is stale, as for an acknowledged write.
    pub fn observe(&mut self, c: &Content, ours: u64) {
        if let Content::Block { gen, writer } = *c {
            if gen > self.gen && gen <= self.tried && writer == ours {
                self.gen = gen;
                self.writer = writer;
            }
        }
    }
}

/// The verdict on one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Intact, but older than what was acknowledged (or another run's data): a stale read
    /// while the workload runs, a lost write at the final check.
    Old(String),
    /// Not an intact block of ours for this block number.
    Corrupt(String),
}

/// Judges what block content `c` means for a block expected to be `e`, this run's writer being
/// `ours`.
pub fn check(e: &Expect, c: &Content, ours: u64) -> Verdict {
    let acked = || {
        if e.gen == 0 {
            "nothing acknowledged".to_string()
        } else if e.tried > e.gen {
            format!(
                "generation {} acknowledged (writer {:016x}), up to {} tried",
                e.gen, e.writer, e.tried
            )
        } else {
            format!(
                "generation {} acknowledged (writer {:016x})",
                e.gen, e.writer
            )
        }
    };
    match *c {
        Content::Corrupt(ref m) => Verdict::Corrupt(m.clone()),
        Content::Zero if e.gen == 0 => Verdict::Ok,
        Content::Zero => Verdict::Old(format!("reads as zeros, {}", acked())),
        Content::Block { gen, writer } => {
            if e.gen == 0 {
                // Nothing acknowledged: what was there before this run is unknown, so only a
                // generation of this run's that was never submitted is wrong.
                if writer == ours && gen > e.tried {
                    Verdict::Corrupt(format!(
                        "generation {gen} of this run was never written, {}",
                        acked()
                    ))
                } else {
                    Verdict::Ok
                }
            } else if gen == e.gen && writer == e.writer {
                Verdict::Ok
            } else if gen > e.gen && gen <= e.tried {
                // A write whose outcome is unknown (in flight or failed) reached the disk.
                Verdict::Ok
            } else if gen < e.gen {
                Verdict::Old(format!("holds generation {gen}, {}", acked()))
            } else if writer == ours && gen > e.tried {
                Verdict::Corrupt(format!(
                    "generation {gen} of this run was never written, {}",
                    acked()
                ))
            } else {
                Verdict::Old(format!(
                    "holds generation {gen} of another run (writer {writer:016x}), {}",
                    acked()
                ))
            }
        }
    }
}

/// The expectations of a whole area, as saved by `--state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    pub block_size: u64,
    /// Device block number of the area's first block.
    pub first_block: u64,
    pub blocks: u64,
    /// One per block of the area, in order.
    pub expect: Vec<Expect>,
}

/// The `format` of a state file.
pub const STATE_FORMAT: &str = "duet-blockcheck-state-1";

impl State {
    /// Loads `path`: `Ok(None)` when it does not exist; an error when it is unreadable, not a
    /// state file, or for another area (`block_size`, `first_block`, `blocks`).
    pub fn load(
        path: &Path,
        block_size: u64,
        first_block: u64,
        blocks: u64,
    ) -> Result<Option<State>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "{}: cannot read the state file: {e}",
                    path.display()
                ))
            }
        };
        let s: State = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a duet-blockcheck state file: {e}", path.display()))?;
        if s.format != STATE_FORMAT || s.expect.len() as u64 != s.blocks {
            return Err(format!(
                "{}: not a duet-blockcheck state file (format `{}`, {} entries for {} blocks)",
                path.display(),
                s.format,
                s.expect.len(),
                s.blocks
            ));
        }
        if (s.block_size, s.first_block, s.blocks) != (block_size, first_block, blocks) {
            return Err(format!(
                "{}: saved for another area ({} blocks of {} bytes from block {}), this run has {} blocks of {} bytes from block {}",
                path.display(),
                s.blocks,
                s.block_size,
                s.first_block,
                blocks,
                block_size,
                first_block
            ));
        }
        Ok(Some(s))
    }

    /// Writes the state to `path` (through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string(self)
            .map_err(|e| format!("{}: cannot encode the state: {e}", path.display()))?;
        super::write_atomically(path, text.as_bytes())
            .map_err(|e| format!("{}: cannot write the state file: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 7;
    const THEM: u64 = 9;

    fn blk(gen: u64, writer: u64) -> Content {
        Content::Block { gen, writer }
    }

    #[test]
    fn verdicts() {
        let unknown = Expect::default();
        assert_eq!(check(&unknown, &Content::Zero, US), Verdict::Ok);
        assert_eq!(check(&unknown, &blk(40, THEM), US), Verdict::Ok);
        assert!(matches!(
            check(&unknown, &Content::Corrupt("x".into()), US),
            Verdict::Corrupt(_)
        ));

        let mut e = Expect::default();
        let g = e.next_gen();
        assert_eq!(g, 1);
        e.submit(g);
        // In flight or failed, first write: old unknown content or the new generation.
        assert_eq!(check(&e, &blk(1, US), US), Verdict::Ok);
        assert_eq!(check(&e, &blk(3, THEM), US), Verdict::Ok);
        assert!(matches!(check(&e, &blk(2, US), US), Verdict::Corrupt(_)));
        let mut seen = e;
        seen.observe(&blk(3, THEM), US);
        assert_eq!(seen, e, "another run's block says nothing of ours");
        e.ack(1, US);
        assert_eq!(check(&e, &blk(1, US), US), Verdict::Ok);
        assert!(matches!(check(&e, &Content::Zero, US), Verdict::Old(_)));
        assert!(matches!(check(&e, &blk(1, THEM), US), Verdict::Old(_)));
        assert!(matches!(check(&e, &blk(5, THEM), US), Verdict::Old(_)));

        // Two failed writes after an acknowledged one: any of the three.
        e.submit(e.next_gen());
        e.submit(e.next_gen());
        assert_eq!(e.tried, 3);
        for g in 1..=3 {
            assert_eq!(check(&e, &blk(g, US), US), Verdict::Ok, "gen {g}");
        }
        // A read shows that the second failed write landed: the older ones are stale now.
        e.observe(&blk(3, US), US);
        assert!(matches!(check(&e, &blk(2, US), US), Verdict::Old(_)));
        assert_eq!(check(&e, &blk(3, US), US), Verdict::Ok);
        // Then one acknowledged: only it.
        let g = e.next_gen();
        assert_eq!(g, 4);
        e.submit(g);
        e.ack(g, US);
        assert_eq!(check(&e, &blk(4, US), US), Verdict::Ok);
        for g in 1..=3 {
            assert!(
                matches!(check(&e, &blk(g, US), US), Verdict::Old(_)),
                "gen {g}"
            );
        }
    }
}

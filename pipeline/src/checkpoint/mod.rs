//! Checkpoints on disk: what each worker hands over at a cut while running (see [`crate::cut`])
//! or when the job stops on SIGTERM (its sources' positions and watermarks, its devices, its
//! tenants), and how a start finds the latest complete checkpoint, skipping partial or corrupt
//! ones with a warning.
//!
//! Layout: `<dir>/gen-<generation>/part-<worker>-of-<workers>.bin`, each file written to a
//! temporary name on a thread of its own ([`part`]), fsynced and renamed, then the directory
//! fsynced. A generation is complete when every worker's part is there, reads back (magic,
//! lengths and checksum) and was cut at the same event time as the others (a run that crashed
//! while writing generation `g` leaves parts a later run's `g` must not be mixed with). Worker 0 numbers the cuts on from the generation the
//! job resumed from, and a stop takes the next number, so every process agrees on the names.

mod part;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::Options;
use schemas::StatusTransition;
use serde::{Deserialize, Serialize};

use crate::engine::EngineState;
use crate::reading::route;
use crate::tenant::Tenants;
use crate::watermark::PartitionClock;

pub use part::{PartWriter, Written, encode_into, encoding};

/// Generations kept besides the newest: if the newest turns out partial (a crash while its
/// parts were written), the one before is complete.
const KEEP: u64 = 2;

/// One worker's part of a checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerPart {
    /// The event time the checkpoint was cut at: everything before it is in the state, nothing
    /// at or after it; the source replays from `positions` and skips accepted readings before
    /// it. `None`: written on stop, with everything each partition had read.
    pub cut: Option<i64>,
    /// Everything before this event time is in the state: the cut, or, on stop, where the
    /// device operator had got to. A resumed job never cuts before it (the state is already
    /// past it).
    pub through: i64,
    /// Next offset to read, per partition (a partition not listed starts at its beginning).
    pub positions: Vec<(i32, i64)>,
    /// Those partitions' event-time state.
    pub clocks: Vec<PartitionClock>,
    /// The worker's devices and the readings they had not processed: an [`EngineState`] as
    /// [`crate::engine::Engine::state`] wrote it. Read back, or written on stop; a cut's part
    /// streams them into its [`PartWriter`] instead.
    #[serde(skip)]
    pub engine: Vec<u8>,
    /// The worker's tenants.
    pub tenants: Tenants,
    /// Status transitions the tenant operator had not applied.
    pub transitions: Vec<StatusTransition>,
    /// Why this part cannot be written: an operator could not encode its state.
    #[serde(skip)]
    pub broken: Option<String>,
}

/// A complete checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its generation.
    pub generation: u64,
    /// Every worker's part, in worker order.
    pub parts: Vec<WorkerPart>,
}

impl Checkpoint {
    /// The event time it was cut at (`None`: written on stop).
    pub fn cut(&self) -> Option<i64> {
        self.parts.first().and_then(|p| p.cut)
    }

    /// Everything before this event time is in the state (every part).
    pub fn through(&self) -> i64 {
        self.parts.iter().map(|p| p.through).max().unwrap_or(0)
    }

    /// Every part's devices and pending readings.
    pub fn engines(&self) -> Result<Vec<EngineState>, Unreadable> {
        self.parts
            .iter()
            .map(|p| {
                encoding()
                    .deserialize(&p.engine)
                    .map_err(Unreadable::Devices)
            })
            .collect()
    }

    /// Where the checkpoint's partitions were: the union of every part's positions.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.parts
            .iter()
            .flat_map(|p| p.positions.iter().copied())
            .collect()
    }

    /// Every part's partition clocks.
    pub fn clocks(&self) -> Vec<PartitionClock> {
        self.parts
            .iter()
            .flat_map(|p| p.clocks.iter().cloned())
            .collect()
    }
}

/// Whether `key` belongs to worker `index` of `peers`, by the routing the dataflow exchanges
/// with: a checkpoint written by one number of workers restores onto another.
pub fn owned(key: &str, index: usize, peers: usize) -> bool {
    route(key) % (peers.max(1) as u64) == index as u64
}

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
    /// A part could not be encoded.
    #[error("cannot encode a checkpoint part: {0}")]
    Encode(String),
    /// The thread writing a part stopped without saying why.
    #[error("the thread writing a checkpoint part {0}")]
    Writer(&'static str),
    /// A part was asked for a cut this worker was not told of, or without a checkpoint
    /// directory.
    #[error("no checkpoint cut at {0} to write a part of")]
    NoCut(i64),
}

/// Why a checkpoint (or one of its parts) cannot be read back: the warning that skips it says so.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// The file is not a part at all.
    #[error("not a checkpoint part")]
    NotAPart,
    /// A part of an older (or newer) format.
    #[error("written in another format ({0}) by another version of fleetpulse")]
    OtherFormat(String),
    /// Shorter than its trailer says.
    #[error("cut short")]
    CutShort,
    /// Its contents are not what was written.
    #[error("checksum mismatch")]
    Checksum,
    /// The file system refused.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Intact, but its contents do not decode.
    #[error("{0}")]
    Decode(#[from] bincode::Error),
    /// Intact, but its devices do not decode.
    #[error("devices: {0}")]
    Devices(bincode::Error),
    /// The generation's directory holds no part.
    #[error("no parts")]
    NoParts,
    /// Every part is there and intact, but not of the same cut.
    #[error("its parts were cut at different times (left by a crashed run)")]
    MixedCuts,
    /// One of the generation's parts.
    #[error("part {worker} of {workers}: {problem}")]
    Part {
        /// Whose.
        worker: usize,
        /// Of how many.
        workers: usize,
        /// What is wrong with it.
        problem: Box<Unreadable>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The checkpoints of one job.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under `dir` (created when first written).
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    fn generation_dir(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("gen-{generation:012}"))
    }

    /// Starts worker `worker`'s part of generation `generation` (see [`PartWriter`]).
    pub fn begin(
        &self,
        generation: u64,
        worker: usize,
        workers: usize,
    ) -> Result<PartWriter, CheckpointError> {
        PartWriter::start(self, generation, worker, workers)
    }

    /// Writes worker `worker`'s part of generation `generation` whole, devices included, and
    /// waits until it is durable and in place; `prune`: then removes generations no longer
    /// needed (one worker of the job does).
    pub fn write_part(
        &self,
        generation: u64,
        worker: usize,
        workers: usize,
        part: &WorkerPart,
        prune: bool,
    ) -> Result<(), CheckpointError> {
        let mut writer = self.begin(generation, worker, workers)?;
        writer
            .write_all(&part.engine)
            .map_err(|e| CheckpointError::Encode(e.to_string()))?;
        writer.finish(part, prune)?.wait()
    }

    fn generations(&self) -> Vec<u64> {
        let mut found: Vec<u64> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("gen-"))
                    .and_then(|g| g.parse().ok())
            })
            .collect();
        found.sort_unstable();
        found
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The part files of `generation` and how many workers wrote it, as the first part's name
    /// says (`None`: no parts).
    fn part_names(&self, generation: u64) -> Result<(Vec<String>, Option<usize>), Unreadable> {
        let names: Vec<String> = fs::read_dir(self.generation_dir(generation))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("part-") && n.ends_with(".bin"))
            .collect();
        let workers = names
            .first()
            .and_then(|n| n.rsplit("-of-").next())
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<usize>().ok());
        Ok((names, workers))
    }

    /// Reads generation `generation` whole, or says what is wrong with it.
    pub fn load(&self, generation: u64) -> Result<Checkpoint, Unreadable> {
        let dir = self.generation_dir(generation);
        let workers = self.part_names(generation)?.1.ok_or(Unreadable::NoParts)?;
        let mut parts = Vec::with_capacity(workers);
        for worker in 0..workers {
            let path = dir.join(format!("part-{worker}-of-{workers}.bin"));
            let part = part::read(&path).map_err(|problem| Unreadable::Part {
                worker,
                workers,
                problem: Box::new(problem),
            })?;
            parts.push(part);
        }
        if parts.iter().any(|p| p.cut != parts[0].cut) {
            return Err(Unreadable::MixedCuts);
        }
        Ok(Checkpoint { generation, parts })
    }

    /// The highest generation number present, complete or not (0 if none): a job that ignores
    /// the checkpoints numbers its own above them, so they never pass for its own.
    pub fn highest(&self) -> u64 {
        self.generations().last().copied().unwrap_or(0)
    }

    /// Whether every part of `generation` is there (by name; contents are checked on load).
    fn has_all_parts(&self, generation: u64) -> bool {
        self.part_names(generation)
            .is_ok_and(|(names, workers)| workers.is_some_and(|w| names.len() == w))
    }

    /// Removes generations older than the last [`KEEP`] before `newest` (just written), except,
    /// when none of those recent ones has all its parts (cuts given up, a worker still
    /// writing), the newest older one that has.
    pub fn prune(&self, newest: u64) {
        let generations = self.generations();
        let recent_complete = generations
            .iter()
            .any(|g| *g + KEEP >= newest && *g < newest && self.has_all_parts(*g));
        let old: Vec<u64> = generations
            .into_iter()
            .filter(|g| *g + KEEP < newest)
            .collect();
        let fallback = if recent_complete {
            None
        } else {
            old.iter().rev().copied().find(|g| self.has_all_parts(*g))
        };
        for generation in old {
            if Some(generation) != fallback {
                let _ = fs::remove_dir_all(self.generation_dir(generation));
            }
        }
    }

    /// The newest complete checkpoint, if any. Newer generations that are partial or corrupt are
    /// reported and removed, older complete ones too (superseded); the one returned is kept.
    pub fn latest(&self) -> Option<Checkpoint> {
        let generations = self.generations();
        let mut chosen = None;
        for generation in generations.iter().rev() {
            match self.load(*generation) {
                Ok(c) => {
                    chosen = Some(c);
                    break;
                }
                Err(e) => tracing::warn!(
                    generation,
                    error = %e,
                    dir = %self.dir.display(),
                    "skipping an incomplete or corrupt checkpoint"
                ),
            }
        }
        let keep = chosen.as_ref().map(|c| c.generation);
        for generation in generations {
            if Some(generation) != keep {
                let _ = fs::remove_dir_all(self.generation_dir(generation));
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: i64) -> WorkerPart {
        WorkerPart {
            positions: vec![(0, offset)],
            ..WorkerPart::default()
        }
    }

    #[test]
    fn the_latest_complete_generation_wins_and_damage_is_skipped() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        assert!(store.latest().is_none());
        store
            .write_part(1, 0, 2, &part(10), false)
            .expect("written");
        store
            .write_part(1, 1, 2, &part(11), false)
            .expect("written");
        // Generation 2 is partial: one of two parts.
        store
            .write_part(2, 0, 2, &part(20), false)
            .expect("written");
        let c = store.latest().expect("generation 1");
        assert_eq!(c.generation, 1);
        assert_eq!(c.positions(), vec![(0, 10), (0, 11)]);
        assert!(
            !dir.path().join("gen-000000000002").exists(),
            "the partial one is removed"
        );

        // Generation 3 is complete but a byte of it flips: back to 1.
        store
            .write_part(3, 0, 1, &part(30), false)
            .expect("written");
        let file = dir.path().join("gen-000000000003/part-0-of-1.bin");
        let mut bytes = fs::read(&file).expect("readable");
        if let Some(last) = bytes.last_mut() {
            *last ^= 0xff;
        }
        fs::write(&file, bytes).expect("writable");
        assert_eq!(store.latest().map(|c| c.generation), Some(1));

        store
            .write_part(4, 0, 1, &part(40), false)
            .expect("written");
        assert_eq!(store.latest().map(|c| c.positions()), Some(vec![(0, 40)]));
        assert!(!dir.path().join("gen-000000000001").exists(), "superseded");

        // Generation 5 holds one part of a crashed run and one of the run after it: both
        // present, intact, but cut at different times.
        let cut = |at: i64| WorkerPart {
            cut: Some(at),
            ..part(50)
        };
        store
            .write_part(5, 0, 2, &cut(1_000), false)
            .expect("written");
        store
            .write_part(5, 1, 2, &cut(2_000), false)
            .expect("written");
        assert_eq!(store.latest().map(|c| c.generation), Some(4));
        assert_eq!(store.highest(), 4, "the mixed one is removed");
    }

    #[test]
    fn pruning_keeps_the_last_three_and_a_complete_one() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        for g in 1..=3 {
            store
                .write_part(g, 0, 1, &part(g as i64), false)
                .expect("written");
        }
        // 4 to 6 are partial: one part of two each.
        for g in 4..=6 {
            store
                .write_part(g, 0, 2, &part(g as i64), false)
                .expect("written");
        }
        store.prune(6);
        let left: Vec<u64> = store.generations();
        assert_eq!(left, vec![3, 4, 5, 6], "3 stays: none after it is complete");
        store.write_part(7, 0, 1, &part(7), false).expect("written");
        store.write_part(8, 0, 1, &part(8), false).expect("written");
        store.prune(8);
        assert_eq!(store.generations(), vec![6, 7, 8]);
        assert_eq!(store.highest(), 8);
    }
}

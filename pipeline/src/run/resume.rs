//! Where one worker starts: its input opened at the positions to resume from, and its share of
//! the checkpoint (if any) split into what the source and the operators start from.

use std::collections::HashMap;
use std::sync::Arc;

use super::InputSpec;
use crate::checkpoint::{Checkpoint, Unreadable};
use crate::dataflow::WorkerState;
use crate::source::ahead::Ahead;
use crate::source::decoder::Decoder;
use crate::source::file::FileInput;
use crate::source::joined::{Joined, split};
use crate::source::kafka::{KafkaInput, KafkaSettings};
use crate::source::memory::MemoryInput;
use crate::source::{Input, SourceError};
use crate::watermark::PartitionClock;

/// How long a worker waits for the inventory topic's metadata once the telemetry's answered.
const INVENTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens worker `index`'s share of `input` at `start`, read ahead and decoded by `decoder` on a
/// thread of its own.
pub(super) fn open(
    input: &InputSpec,
    index: usize,
    peers: usize,
    start: &HashMap<i32, i64>,
    decoder: Decoder,
) -> Result<Box<dyn Input>, SourceError> {
    let input: Box<dyn Input + Send> = match input {
        InputSpec::Kafka(settings) => {
            let (start, at) = split(start);
            let telemetry = Box::new(KafkaInput::new(settings, index, peers, &start)?);
            let Some(topic) = &settings.inventory else {
                return Ok(Box::new(Ahead::start(telemetry, decoder)?));
            };
            // The brokers answered for the telemetry already: an inventory topic that does not
            // show within seconds does not exist (no inventory was ever applied, and nothing
            // created it, as a replay to files does not), and the telemetry is read alone.
            let settings = KafkaSettings {
                topic: topic.clone(),
                inventory: None,
                topic_wait: Some(INVENTORY_WAIT),
                ..settings.clone()
            };
            match KafkaInput::new(&settings, index, peers, &at) {
                Ok(inventory) => Box::new(Joined::new(telemetry, Box::new(inventory))),
                Err(SourceError::NoTopic(_)) => {
                    tracing::warn!(topic = %topic, "no inventory topic: reading the telemetry alone");
                    telemetry
                }
                Err(e) => return Err(e),
            }
        }
        InputSpec::File(path) => Box::new(FileInput::open(
            path,
            index,
            start.get(&0).copied().unwrap_or(0),
        )?),
        InputSpec::Memory {
            partitions,
            inventory,
            bounded,
        } => {
            let (start, at) = split(start);
            let telemetry = Box::new(MemoryInput::new(
                Arc::clone(partitions),
                index,
                peers,
                *bounded,
                &start,
            ));
            if inventory.is_empty() {
                telemetry
            } else {
                let inventory =
                    MemoryInput::new(Arc::clone(inventory), index, peers, *bounded, &at)
                        .named("memory-inventory");
                Box::new(Joined::new(telemetry, Box::new(inventory)))
            }
        }
    };
    Ok(Box::new(Ahead::start(input, decoder)?))
}

/// What one worker starts from.
#[derive(Default)]
pub(super) struct Resumed {
    /// Next offset per partition.
    pub(super) positions: HashMap<i32, i64>,
    /// Partition clocks.
    pub(super) clocks: Vec<PartitionClock>,
    /// The cut the checkpoint was taken at.
    pub(super) cut: Option<i64>,
    /// The operators' state.
    pub(super) state: WorkerState,
}

/// Splits a checkpoint into what the source and the operators of one worker start from.
pub(super) fn resume(checkpoint: Option<Checkpoint>) -> Result<Resumed, Unreadable> {
    let Some(checkpoint) = checkpoint else {
        return Ok(Resumed::default());
    };
    let mut state = WorkerState {
        engines: checkpoint.engines()?,
        through: checkpoint.through(),
        ..WorkerState::default()
    };
    // A checkpoint taken on stop holds readings and transitions not yet processed, which no
    // source will read again: a cut must not come before them, or its part (which holds neither)
    // would lose them.
    let unprocessed = state
        .engines
        .iter()
        .flat_map(|e| e.pending.iter().map(|r| r.ts))
        .chain(
            checkpoint
                .parts
                .iter()
                .flat_map(|p| p.transitions.iter().map(|t| t.ts)),
        )
        .max();
    if let Some(ts) = unprocessed {
        state.through = state.through.max(ts.saturating_add(1));
    }
    let (positions, clocks, cut) = (
        checkpoint.positions().into_iter().collect(),
        checkpoint.clocks(),
        checkpoint.cut(),
    );
    for part in checkpoint.parts {
        state.tenants.push(part.tenants);
        state.transitions.extend(part.transitions);
    }
    Ok(Resumed {
        positions,
        clocks,
        cut,
        state,
    })
}

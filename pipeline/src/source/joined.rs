//! The telemetry input and the inventory input read as one. The inventory's partitions are
//! numbered from [`INVENTORY`] on, so that watermarks, idleness, the end of a bounded run and
//! checkpoint positions treat them as partitions like any other, and its records reach the
//! devices they name through the same exchange, in event-time order with their readings.

use std::collections::HashMap;

use super::{Input, RawRecord, SourceError};

/// The number of inventory partition 0 in the joined input: above any partition count a topic
/// has (Kafka caps a topic far below it).
pub const INVENTORY: i32 = 1 << 20;

/// Whether joined partition `p` is an inventory partition.
pub fn is_inventory(p: i32) -> bool {
    p >= INVENTORY
}

/// The inventory topic's own number of joined partition `p`, and `p` for telemetry partitions.
pub fn source_partition(p: i32) -> i32 {
    if is_inventory(p) { p - INVENTORY } else { p }
}

/// Splits the joined positions to resume from into the telemetry's and the inventory's.
pub fn split(start: &HashMap<i32, i64>) -> (HashMap<i32, i64>, HashMap<i32, i64>) {
    let (inventory, telemetry): (HashMap<i32, i64>, HashMap<i32, i64>) =
        start.iter().partition(|(p, _)| is_inventory(**p));
    let inventory = inventory
        .into_iter()
        .map(|(p, o)| (source_partition(p), o))
        .collect();
    (telemetry, inventory)
}

/// A worker's telemetry and inventory partitions as one input.
pub struct Joined {
    telemetry: Box<dyn Input + Send>,
    inventory: Box<dyn Input + Send>,
    partitions: Vec<i32>,
}

impl Joined {
    /// Joins a worker's share of the telemetry with its share of the inventory; both are bounded
    /// or neither.
    pub fn new(telemetry: Box<dyn Input + Send>, inventory: Box<dyn Input + Send>) -> Joined {
        let partitions = telemetry
            .partitions()
            .iter()
            .copied()
            .chain(inventory.partitions().iter().map(|p| p + INVENTORY))
            .collect();
        Joined {
            telemetry,
            inventory,
            partitions,
        }
    }
}

impl Input for Joined {
    fn topic(&self) -> &str {
        self.telemetry.topic()
    }

    fn inventory_topic(&self) -> Option<&str> {
        Some(self.inventory.topic())
    }

    fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    fn bounded(&self) -> bool {
        self.telemetry.bounded()
    }

    /// The inventory first: it is small, and a registration read early holds nothing back.
    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError> {
        let taken = self.inventory.poll(max, &mut |mut rec| {
            rec.partition += INVENTORY;
            each(rec);
        })?;
        if taken >= max {
            return Ok(taken);
        }
        match self.telemetry.poll(max - taken, each) {
            Ok(n) => Ok(taken + n),
            // The inventory's records were handed over; the failure shows on the next poll.
            Err(_) if taken > 0 => Ok(taken),
            Err(e) => Err(e),
        }
    }

    fn take_finished(&mut self) -> Vec<i32> {
        let mut finished = self.telemetry.take_finished();
        finished.extend(
            self.inventory
                .take_finished()
                .into_iter()
                .map(|p| p + INVENTORY),
        );
        finished
    }

    fn positions(&self) -> Vec<(i32, i64)> {
        let mut positions = self.telemetry.positions();
        positions.extend(
            self.inventory
                .positions()
                .into_iter()
                .map(|(p, o)| (p + INVENTORY, o)),
        );
        positions
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::memory::{MemoryInput, MemoryRecord};

    fn memory(records: usize, start: &HashMap<i32, i64>) -> Box<dyn Input + Send> {
        let partition = vec![MemoryRecord::json("d", 1_000); records];
        Box::new(MemoryInput::new(
            Arc::new(vec![partition.clone(), partition]),
            0,
            1,
            true,
            start,
        ))
    }

    #[test]
    fn inventory_partitions_are_numbered_apart_and_resume_where_they_stopped() {
        let start = HashMap::from([(1, 2), (INVENTORY, 1)]);
        let (telemetry, inventory) = split(&start);
        assert_eq!(telemetry, HashMap::from([(1, 2)]));
        assert_eq!(inventory, HashMap::from([(0, 1)]));
        let mut joined = Joined::new(memory(3, &telemetry), memory(2, &inventory));
        assert_eq!(joined.partitions(), [0, 1, INVENTORY, INVENTORY + 1]);
        let mut seen = Vec::new();
        let taken = joined.poll(100, &mut |r| seen.push((r.partition, r.offset)));
        assert!(taken.is_ok());
        let inventory: Vec<_> = seen.iter().filter(|(p, _)| is_inventory(*p)).collect();
        assert_eq!(
            inventory,
            [&(INVENTORY, 1), &(INVENTORY + 1, 0), &(INVENTORY + 1, 1)]
        );
        assert_eq!(seen.len(), 3 + 1 + 3);
        let mut finished = joined.take_finished();
        finished.sort_unstable();
        assert_eq!(finished, [0, 1, INVENTORY, INVENTORY + 1]);
        assert_eq!(
            joined.positions(),
            [(0, 3), (1, 3), (INVENTORY, 2), (INVENTORY + 1, 2)]
        );
        assert_eq!(source_partition(INVENTORY + 1), 1);
        assert_eq!(source_partition(3), 3);
    }
}

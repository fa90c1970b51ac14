//! What `/readyz` says about the sink: whether Kafka and ClickHouse answer, kept by the loop
//! and the stages as they find out, with the gauges beside.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::events;

/// What `/readyz` reports: the sink is ready while Kafka and ClickHouse both answer.
#[derive(Debug, Default)]
pub struct Health {
    kafka_down: AtomicBool,
    clickhouse_down: AtomicBool,
}

impl Health {
    /// Whether Kafka was last found not answering.
    pub(super) fn kafka_down(&self) -> bool {
        self.kafka_down.load(Ordering::Relaxed)
    }

    /// Ready to work.
    pub fn ready(&self) -> bool {
        !self.kafka_down.load(Ordering::Relaxed) && !self.clickhouse_down.load(Ordering::Relaxed)
    }

    /// What is wrong, for `/readyz`.
    pub fn problem(&self) -> Option<&'static str> {
        if self.clickhouse_down.load(Ordering::Relaxed) {
            Some("clickhouse is not accepting inserts")
        } else if self.kafka_down.load(Ordering::Relaxed) {
            Some("kafka is not answering")
        } else {
            None
        }
    }

    /// ClickHouse answers (`true`) or not.
    pub fn clickhouse(&self, up: bool) {
        self.clickhouse_down.store(!up, Ordering::Relaxed);
        events::clickhouse_up(up);
    }

    /// Kafka answers (`true`) or not; called for every record, so the gauge is only touched
    /// when the state changes.
    pub(super) fn kafka(&self, up: bool) {
        if self.kafka_down.swap(!up, Ordering::Relaxed) == up {
            events::kafka_up(up);
        }
    }
}

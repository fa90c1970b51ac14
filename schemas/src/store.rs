//! The schemas a codec knows, by Confluent schema id.
//!
//! The file-backed registry is the set of `schemas/avro/*.avsc` files compiled into this crate,
//! each with a fixed id ([`builtin_schemas`]). A networked registry adds ids with
//! [`SchemaStore::insert`] and names the ids to write with through [`SchemaStore::use_for_writing`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::error::SchemaError;
use crate::record::RecordKind;

/// A schema shipped in `schemas/avro/`, with the id and subject version the file-backed registry
/// gives it.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinSchema {
    /// Schema id in the Confluent wire format.
    pub id: u32,
    /// Which record it describes.
    pub kind: RecordKind,
    /// Version under the record's default subject (1 is the first).
    pub version: u32,
    /// The schema text, as in the `.avsc` file.
    pub json: &'static str,
}

// Ids are part of the wire format of everything written without a networked registry: never
// renumber, only append.
const BUILTIN: [BuiltinSchema; 13] = [
    BuiltinSchema {
        id: 1,
        kind: RecordKind::Telemetry,
        version: 1,
        json: include_str!("../avro/telemetry.v1.avsc"),
    },
    BuiltinSchema {
        id: 2,
        kind: RecordKind::Telemetry,
        version: 2,
        json: include_str!("../avro/telemetry.avsc"),
    },
    BuiltinSchema {
        id: 3,
        kind: RecordKind::WindowAggregate,
        version: 1,
        json: include_str!("../avro/window_aggregate.v1.avsc"),
    },
    BuiltinSchema {
        id: 4,
        kind: RecordKind::Anomaly,
        version: 1,
        json: include_str!("../avro/anomaly.v1.avsc"),
    },
    BuiltinSchema {
        id: 5,
        kind: RecordKind::StatusTransition,
        version: 1,
        json: include_str!("../avro/status_transition.v1.avsc"),
    },
    BuiltinSchema {
        id: 6,
        kind: RecordKind::DeadLetter,
        version: 1,
        json: include_str!("../avro/dead_letter.v1.avsc"),
    },
    // Version 2 of the derived records (clock truth, device retention): clock_offset_ms on
    // aggregates, the clock_skew anomaly and dead-letter reason, the retired transition.
    BuiltinSchema {
        id: 7,
        kind: RecordKind::WindowAggregate,
        version: 2,
        json: include_str!("../avro/window_aggregate.avsc"),
    },
    BuiltinSchema {
        id: 8,
        kind: RecordKind::Anomaly,
        version: 2,
        json: include_str!("../avro/anomaly.avsc"),
    },
    BuiltinSchema {
        id: 9,
        kind: RecordKind::StatusTransition,
        version: 2,
        json: include_str!("../avro/status_transition.v2.avsc"),
    },
    BuiltinSchema {
        id: 10,
        kind: RecordKind::DeadLetter,
        version: 2,
        json: include_str!("../avro/dead_letter.avsc"),
    },
    BuiltinSchema {
        id: 11,
        kind: RecordKind::LastSeen,
        version: 1,
        json: include_str!("../avro/last_seen.avsc"),
    },
    BuiltinSchema {
        id: 12,
        kind: RecordKind::Registration,
        version: 1,
        json: include_str!("../avro/registration.avsc"),
    },
    // Version 3 of the status transition (the inventory and push ingest): the never_seen,
    // decommissioned and reported_offline reasons.
    BuiltinSchema {
        id: 13,
        kind: RecordKind::StatusTransition,
        version: 3,
        json: include_str!("../avro/status_transition.avsc"),
    },
];

/// The schemas shipped with fleetpulse, oldest first.
pub fn builtin_schemas() -> &'static [BuiltinSchema] {
    &BUILTIN
}

/// Parsed schemas live for the whole process: avro's readers and writers borrow them, and a
/// process only ever sees a handful of distinct schemas, so interning them by canonical form
/// bounds what this keeps.
fn intern(schema: Schema) -> &'static Schema {
    static INTERNED: LazyLock<Mutex<HashMap<String, &'static Schema>>> =
        LazyLock::new(Default::default);
    let mut map = INTERNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(schema.canonical_form())
        .or_insert_with(|| Box::leak(Box::new(schema)))
}

fn parse(json: &str) -> Result<(RecordKind, &'static Schema), SchemaError> {
    let schema = Schema::parse_str(json).map_err(|e| SchemaError::Parse(e.to_string()))?;
    let name = schema
        .name()
        .map(|n| n.fullname(None))
        .ok_or_else(|| SchemaError::Foreign("a schema that is not a named record".into()))?;
    let kind = RecordKind::from_full_name(&name).ok_or(SchemaError::Foreign(name))?;
    Ok((kind, intern(schema)))
}

/// The built-in schema with the highest version for `kind`.
#[allow(clippy::expect_used)] // compiled-in constants, checked by a unit test; not input
fn newest(kind: RecordKind) -> &'static BuiltinSchema {
    BUILTIN
        .iter()
        .filter(|b| b.kind == kind)
        .max_by_key(|b| b.version)
        .expect("every kind has a built-in schema")
}

/// The current (newest) schema of each kind, the one data is written and read with.
#[allow(clippy::expect_used)] // compiled-in constants, parsed by a unit test; not input
static CURRENT: LazyLock<[&'static Schema; RecordKind::ALL.len()]> = LazyLock::new(|| {
    RecordKind::ALL.map(|kind| parse(newest(kind).json).expect("built-in schemas parse").1)
});

/// How to read data written with one schema id.
pub(crate) struct WriterSchema {
    pub(crate) kind: RecordKind,
    /// Reads straight into the record type when the writer schema is the current one, and
    /// through schema resolution otherwise.
    pub(crate) reader: GenericDatumReader<'static>,
    pub(crate) resolves: bool,
}

/// How to write one kind: the id to put in the header and the schema's writer.
pub(crate) struct CurrentSchema {
    pub(crate) id: u32,
    pub(crate) writer: GenericDatumWriter<'static>,
}

/// Schema ids a codec can read, and the id it writes each record kind with.
#[derive(Clone)]
pub struct SchemaStore {
    writers: HashMap<u32, Arc<WriterSchema>>,
    current: [Arc<CurrentSchema>; RecordKind::ALL.len()],
}

impl std::fmt::Debug for SchemaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.writers.keys().collect();
        ids.sort();
        f.debug_struct("SchemaStore")
            .field("ids", &ids)
            .field(
                "writing",
                &self.current.iter().map(|c| c.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn current_schema(id: u32, kind: RecordKind) -> Result<Arc<CurrentSchema>, SchemaError> {
    let writer = GenericDatumWriter::builder(CURRENT[kind.index()])
        .build()
        .map_err(|e| SchemaError::Parse(e.to_string()))?;
    Ok(Arc::new(CurrentSchema { id, writer }))
}

impl SchemaStore {
    /// The file-backed registry: every schema in `schemas/avro/` under its fixed id.
    #[allow(clippy::expect_used)] // compiled-in constants, checked by a unit test; not input
    pub fn builtin() -> SchemaStore {
        let mut writers = HashMap::new();
        for b in &BUILTIN {
            let entry = writer_schema(b.id, b.json).expect("built-in schemas are compatible");
            writers.insert(b.id, entry);
        }
        let current = RecordKind::ALL.map(|kind| {
            current_schema(newest(kind).id, kind).expect("built-in schemas build writers")
        });
        SchemaStore { writers, current }
    }

    /// Adds a writer schema fetched from a registry, so data written with `id` decodes. Returns
    /// the kind of record it describes.
    pub fn insert(&mut self, id: u32, json: &str) -> Result<RecordKind, SchemaError> {
        let entry = writer_schema(id, json)?;
        let kind = entry.kind;
        self.writers.insert(id, entry);
        Ok(kind)
    }

    /// Writes `kind` with schema id `id` from now on: the id a networked registry gave the
    /// current schema of that kind.
    pub fn use_for_writing(&mut self, kind: RecordKind, id: u32) -> Result<(), SchemaError> {
        self.current[kind.index()] = current_schema(id, kind)?;
        self.writers.insert(
            id,
            writer_schema(id, &CURRENT[kind.index()].canonical_form())?,
        );
        Ok(())
    }

    /// The schema id records of `kind` are written with.
    pub fn writing_id(&self, kind: RecordKind) -> u32 {
        self.current[kind.index()].id
    }

    /// Whether data written with `id` can be decoded.
    pub fn knows(&self, id: u32) -> bool {
        self.writers.contains_key(&id)
    }

    /// The current schema of `kind`, as in its `.avsc` file: what fleetpulse registers.
    pub fn current_schema_json(kind: RecordKind) -> &'static str {
        newest(kind).json
    }

    /// The current schema of `kind`, parsed.
    pub fn current_schema(kind: RecordKind) -> &'static Schema {
        CURRENT[kind.index()]
    }

    pub(crate) fn reader(&self, id: u32) -> Option<&WriterSchema> {
        self.writers.get(&id).map(|w| w.as_ref())
    }

    pub(crate) fn writer(&self, kind: RecordKind) -> &CurrentSchema {
        &self.current[kind.index()]
    }
}

fn writer_schema(id: u32, json: &str) -> Result<Arc<WriterSchema>, SchemaError> {
    let (kind, schema) = parse(json)?;
    let current = CURRENT[kind.index()];
    let incompatible = |detail: String| SchemaError::Incompatible {
        id,
        kind: kind.full_name(),
        detail,
    };
    let resolves = schema.canonical_form() != current.canonical_form();
    let reader = if resolves {
        SchemaCompatibility::can_read(schema, current).map_err(|e| incompatible(e.to_string()))?;
        GenericDatumReader::builder(schema)
            .reader_schema(current)
            .build()
    } else {
        GenericDatumReader::builder(schema).build()
    }
    .map_err(|e| incompatible(e.to_string()))?;
    Ok(Arc::new(WriterSchema {
        kind,
        reader,
        resolves,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ids_are_unique_and_every_kind_has_a_current_schema() {
        let store = SchemaStore::builtin();
        let mut ids: Vec<u32> = BUILTIN.iter().map(|b| b.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), BUILTIN.len());
        for kind in RecordKind::ALL {
            let id = store.writing_id(kind);
            assert_eq!(store.reader(id).map(|r| r.kind), Some(kind));
        }
        assert_eq!(store.writing_id(RecordKind::Telemetry), 2);
    }

    #[test]
    fn the_older_telemetry_schema_resolves() {
        let store = SchemaStore::builtin();
        assert!(store.reader(1).is_some_and(|r| r.resolves));
        assert!(store.reader(2).is_some_and(|r| !r.resolves));
    }

    #[test]
    fn foreign_and_broken_schemas_are_refused() {
        let mut store = SchemaStore::builtin();
        let foreign = r#"{"type":"record","name":"Other","fields":[]}"#;
        assert!(matches!(
            store.insert(99, foreign),
            Err(SchemaError::Foreign(_))
        ));
        assert!(matches!(store.insert(99, "{"), Err(SchemaError::Parse(_))));
        let incompatible = r#"{"type":"record","name":"Telemetry","namespace":"io.fleetpulse",
            "fields":[{"name":"tenant_id","type":"long"}]}"#;
        assert!(matches!(
            store.insert(99, incompatible),
            Err(SchemaError::Incompatible { .. })
        ));
        assert!(!store.knows(99));
    }
}

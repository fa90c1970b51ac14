//! One definition of the window aggregate's columns: its Avro schema
//! (`schemas/avro/window_aggregate.avsc`). Every other place that spells the fields out is
//! checked against it here: the Rust record, its borrowed twin, the direct reader's order, the
//! ClickHouse row, the RowBinary columns and the table's SQL. A field added to the schema alone
//! fails this test with one line per place still to change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clickhouse_sink::ddl::TABLES;
use clickhouse_sink::encoded::AGGREGATE_COLUMNS;
use clickhouse_sink::rows::AggregateRow;
use schemas::{RecordKind, SchemaStore, WindowAggregate, WindowAggregateRef};
use serde_json::{Map, Value, json};

/// Columns the ClickHouse side adds of its own: the window's length (from its bounds) and the
/// insert time the ReplacingMergeTree keeps the latest copy by.
const CLICKHOUSE_ONLY: [&str; 2] = ["window_ms", "inserted_at"];

/// The fields of `schema` (an Avro record schema), in order, and a record holding a value of
/// each field's type.
fn schema_fields(schema: &Value) -> (Vec<String>, Map<String, Value>) {
    let mut names = Vec::new();
    let mut record = Map::new();
    for field in schema["fields"].as_array().expect("a record schema") {
        let name = field["name"].as_str().expect("a named field").to_string();
        let value = match &field["type"] {
            Value::String(t) if t == "string" => json!("x"),
            Value::String(t) if t == "long" || t == "int" => json!(1),
            Value::String(t) if t == "double" || t == "float" => json!(1.5),
            Value::String(t) if t == "boolean" => json!(true),
            // A union with null: null fits every Rust `Option`.
            _ => Value::Null,
        };
        record.insert(name.clone(), value);
        names.push(name);
    }
    (names, record)
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// What `place` lacks of `wanted` and has beyond it, or `None` when they agree; `ordered` places
/// must also list them in the schema's order.
fn compare(place: &str, wanted: &[String], found: &[String], ordered: bool) -> Option<String> {
    let missing: Vec<&String> = wanted.iter().filter(|n| !found.contains(n)).collect();
    let extra: Vec<&String> = found.iter().filter(|n| !wanted.contains(n)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Some(format!(
            "{place}: lacks {missing:?}, has beyond the schema {extra:?}"
        ));
    }
    (ordered && wanted != found).then(|| format!("{place}: not in the schema's order: {found:?}"))
}

/// The column names of the `CREATE TABLE` in `sql`, in order.
fn sql_columns(sql: &str) -> Vec<String> {
    let body = sql
        .split_once("\n(\n")
        .and_then(|(_, rest)| rest.split_once("\n)\n"))
        .map_or("", |(body, _)| body);
    body.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// One line for each place whose fields differ from those of `schema`.
fn places_that_differ(schema: &Value) -> Vec<String> {
    let (wanted, record) = schema_fields(schema);
    let without_clickhouse_own = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| !CLICKHOUSE_ONLY.contains(&n.as_str()))
            .collect()
    };
    let mut wrong = Vec::new();
    match serde_json::from_value::<WindowAggregate>(Value::Object(record)) {
        Err(e) => wrong.push(format!(
            "schemas::WindowAggregate (schemas/src/derived.rs) does not read the schema's fields: {e}"
        )),
        Ok(aggregate) => {
            let owned = serde_json::to_value(&aggregate).expect("serializable");
            wrong.extend(compare(
                "schemas::WindowAggregate (schemas/src/derived.rs)",
                &wanted,
                &keys(&owned),
                false,
            ));
            let borrowed = serde_json::to_value(aggregate.borrowed()).expect("serializable");
            wrong.extend(compare(
                "schemas::WindowAggregateRef (schemas/src/window_aggregate_ref.rs)",
                &wanted,
                &keys(&borrowed),
                false,
            ));
            let row = serde_json::to_value(AggregateRow::from(&aggregate)).expect("serializable");
            wrong.extend(compare(
                "clickhouse_sink::rows::AggregateRow (connectors/clickhouse/src/rows.rs)",
                &wanted,
                &without_clickhouse_own(keys(&row)),
                false,
            ));
        }
    }
    let reader: Vec<String> = WindowAggregateRef::FIELDS
        .iter()
        .map(|n| n.to_string())
        .collect();
    wrong.extend(compare(
        "the direct Avro reader and writer, WindowAggregateRef::FIELDS (schemas/src/window_aggregate_ref.rs)",
        &wanted,
        &reader,
        true,
    ));
    let columns: Vec<String> = AGGREGATE_COLUMNS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    wrong.extend(compare(
        "the RowBinary writer, AGGREGATE_COLUMNS (connectors/clickhouse/src/encoded.rs)",
        &wanted,
        &without_clickhouse_own(columns),
        true,
    ));
    let sql = TABLES
        .iter()
        .find(|(table, _)| *table == "device_aggregates")
        .map_or("", |(_, sql)| sql);
    wrong.extend(compare(
        "the table (schemas/clickhouse/01_device_aggregates.sql)",
        &wanted,
        &without_clickhouse_own(sql_columns(sql)),
        true,
    ));
    wrong
}

fn current_schema() -> Value {
    serde_json::from_str(SchemaStore::current_schema_json(
        RecordKind::WindowAggregate,
    ))
    .expect("the built-in schema is JSON")
}

#[test]
fn every_place_that_names_the_window_aggregate_fields_follows_its_schema() {
    let wrong = places_that_differ(&current_schema());
    assert!(
        wrong.is_empty(),
        "the window aggregate's fields differ from window_aggregate.avsc in:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_field_added_to_the_schema_alone_is_named_in_every_place_left() {
    let mut schema = current_schema();
    schema["fields"]
        .as_array_mut()
        .expect("a record schema")
        .push(json!({"name": "uptime_s", "type": ["null", "long"], "default": null}));
    let wrong = places_that_differ(&schema);
    for place in [
        "schemas/src/derived.rs",
        "WindowAggregateRef (schemas/src/window_aggregate_ref.rs)",
        "connectors/clickhouse/src/rows.rs",
        "WindowAggregateRef::FIELDS",
        "connectors/clickhouse/src/encoded.rs",
        "schemas/clickhouse/01_device_aggregates.sql",
    ] {
        assert!(
            wrong
                .iter()
                .any(|w| w.contains(place) && w.contains("lacks [\"uptime_s\"]")),
            "{place} not named in {wrong:#?}"
        );
    }
}

"""Produces telemetry with Confluent's own Python client and Avro serializer, registering the
schema through the given Confluent-compatible registry (fleetpulse's). The records are a pure
function of their index, so the Rust side can rebuild what it should decode."""

import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def reading(i):
    return {
        "tenant_id": f"py-tenant-{i % 3}",
        "device_id": f"py-dev-{i % 17:03}",
        "ts": 1_700_000_000_000 + i * 1000,
        "response_time_ms": None if i % 5 == 0 else 10.0 + i / 4,
        "ok": i % 7 != 0,
        "error_code": "E_PY" if i % 7 == 0 else None,
        "battery_pct": float(i % 101),
        "signal_dbm": -60.5 - (i % 30),
        "device_class": "sensor" if i % 2 else None,
        "attributes": {"i": str(i)},
    }


def main():
    brokers, topic, registry, count, schema_path = sys.argv[1:6]
    with open(schema_path) as f:
        schema = f.read()
    if "--newer-writer" in sys.argv:
        # A producer a release ahead of the reader: one more field, with a default.
        parsed = json.loads(schema)
        parsed["fields"].append({"name": "firmware", "type": "string", "default": ""})
        schema = json.dumps(parsed)
    client = SchemaRegistryClient({"url": registry})
    serialize = AvroSerializer(client, schema)
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    for i in range(int(count)):
        value = reading(i)
        if "--newer-writer" in sys.argv:
            value["firmware"] = f"9.{i}"
        ctx = SerializationContext(topic, MessageField.VALUE)
        producer.produce(topic, key=value["device_id"], value=serialize(value, ctx))
        producer.poll(0)
    if producer.flush(60) != 0:
        sys.exit("not every message was acknowledged")
    print(client.get_latest_version(f"{topic}-value").schema_id)


if __name__ == "__main__":
    main()

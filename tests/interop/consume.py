"""Consumes a topic with Confluent's own Python client and Avro deserializer, which fetches the
writer schema from the given registry by the id in each message, and prints each record as a
JSON line."""

import json
import sys
import time

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    brokers, topic, registry, count = sys.argv[1:5]
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"interop-{time.time()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen, deadline = 0, time.time() + 90
    while seen < int(count) and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        value = deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
        print(json.dumps({"key": message.key().decode(), "value": value}))
        seen += 1
    consumer.close()


if __name__ == "__main__":
    main()

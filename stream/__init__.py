"""Kafka I/O: the event schema, the producer, the consumer worker and log replay."""

"""The Kafka side: the producer and its topics (`sink.KafkaSink`), per-partition batches
(`batches.BatchWriter`) and Kafka's own partitioner (`partitions.partition_for`)."""

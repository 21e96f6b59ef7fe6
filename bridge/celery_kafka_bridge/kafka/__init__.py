"""The Kafka side: the sink (`sink.KafkaSink`), its topics created and audited
(`topics.TopicAdmin`, `topics.TopicAudit`), the producer's lifecycle
(`producer.Producer`), per-partition batches (`batches.BatchWriter`), what a failed write means
(`errors.classify`) and Kafka's own partitioner (`partitions.partition_for`)."""

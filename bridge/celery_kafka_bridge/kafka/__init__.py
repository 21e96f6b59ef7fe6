"""The Kafka side: the sink and its topics (`sink.KafkaSink`), the producer's lifecycle
(`producer.Producer`), per-partition batches (`batches.BatchWriter`), what a failed write means
(`errors.classify`) and Kafka's own partitioner (`partitions.partition_for`)."""

"""The Redis side: every replica subscribes to Celery's event channel, the replicas agree through
Redis which of them writes each event (`claims`), and a thread hands deliveries to the event loop
(`source.RedisSource`) behind the same interface as the AMQP source."""

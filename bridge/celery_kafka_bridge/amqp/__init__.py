"""The AMQP side: one thread owns the RabbitMQ connection, declares the topology's queues,
consumes with manual acks and hands deliveries to the event loop (`source.AmqpSource`)."""

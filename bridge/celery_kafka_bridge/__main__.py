"""`python -m celery_kafka_bridge` runs the command line."""

from celery_kafka_bridge.cli import main

main()

"""Demo Celery app and task producer for the docker compose stack (not part of the bridge)."""

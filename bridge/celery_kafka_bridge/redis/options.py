"""The Redis transport options that name Celery's event channel (no other dependency, so the
settings can check them)."""

from __future__ import annotations

from pydantic import BaseModel


class TransportOptions(BaseModel):
    """The Redis transport options Celery's workers use (their broker_transport_options)."""

    model_config = {"extra": "ignore", "frozen": True}

    fanout_prefix: bool | str = True
    """True: channels start with ``/{db}.``; a string: that prefix; False: none."""
    fanout_patterns: bool = True
    """True: each event goes to ``<exchange>/<routing key>``; False: to ``<exchange>``."""
    global_keyprefix: str = ""

"""Logging set-up and the masking of credentials in anything logged or raised."""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal

from pythonjsonlogger.orjson import OrjsonFormatter

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\g<scheme>:***@", text)


def describe(exc: BaseException | None) -> str:
    """One masked line naming an exception, for log lines and error messages."""
    if exc is None:
        return "unknown error"
    return mask_credentials(f"{type(exc).__name__}: {exc}".splitlines()[0])


class MaskingFormatter(logging.Formatter):
    """Formats as usual, then masks every URL password in the line."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


class MaskingJsonFormatter(OrjsonFormatter):
    """One JSON object per line (time, level, logger, message, extras), URL passwords masked."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


def setup_logging(level: str, log_format: Literal["auto", "json", "text"] = "auto") -> None:
    """Log to stderr: JSON lines, or text when ``auto`` and stderr is a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json" or (log_format == "auto" and not sys.stderr.isatty()):
        handler.setFormatter(MaskingJsonFormatter())
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # so a warning is a JSON line too, not a stray text line
    # The bridge logs each Kafka state change itself; aiokafka repeats a connection error
    # every second while a broker is away. Its lines are kept for DEBUG.
    logging.getLogger("aiokafka").setLevel(
        root.level if root.level <= logging.DEBUG else logging.CRITICAL
    )

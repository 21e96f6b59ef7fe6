"""The few exceptions that drive control flow."""


class BridgeError(Exception):
    """Base of the bridge's own errors."""


class ConfigError(BridgeError):
    """A setting is invalid; the message is one line naming it (exit code 2)."""


class TransientError(BridgeError):
    """A broker is unreachable or failed; retry with backoff."""

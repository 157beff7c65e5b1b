"""The exception family, one class per boundary (see STYLE.md habit 6)."""


class AvatardError(Exception):
    """Base of every error avatard raises on purpose."""


class ConfigError(AvatardError):
    """A configuration value is invalid; the message names the flag and the value."""


class ProtocolError(AvatardError):
    """A peer sent something the wire protocol does not allow; ``code`` goes into the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RendererError(AvatardError):
    """The renderer cannot start or stopped working."""


class BrainError(AvatardError):
    """The brain cannot start or lost its backend for good."""

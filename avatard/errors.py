"""The exception family, one class per boundary (see STYLE.md habit 6). Every exception avatard raises
on purpose is defined here, so importing one never pulls in the part that raises it."""

from __future__ import annotations

# Error messages quote at most this much of what a peer sent: enough to recognise a typo, while a 100 KB
# "gesture name" cannot make a 100 KB reply (issue 17).
QUOTE_CHARS = 40


def quote(value) -> str:
    """``repr(value)``, cut to QUOTE_CHARS characters with an ellipsis: for messages naming peer input."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 1] + "…"


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


class Refused(AvatardError):
    """The daemon declines a request; the message is shown to whoever asked, with ``code``."""

    code = "refused"


class Busy(Refused):
    """Declined for now: an input budget or queue is full. Nothing was queued; the message says which."""

    code = "busy"


class UnknownGesture(Refused, ValueError):
    """A gesture name the avatar cannot perform; the message lists the ones it can."""

    def __init__(self, name: str, known, why: str = "unknown gesture") -> None:
        super().__init__(f"{why} {quote(name)}; known: {', '.join(sorted(known))}")
        self.name = name


class RendererError(AvatardError):
    """The renderer cannot start or stopped working, for a reason the operator must fix."""


class RendererFailed(RendererError):
    """The renderer stopped working, or could not start for a reason a fallback can paper over."""


class TtsError(AvatardError):
    """Speech could not be synthesized: espeak-ng missing, unknown voice, bad rate."""


class AsyncioCancelledError(AvatardError):
    """An asyncio task was cancelled from the asyncio side, not by trio (usually: the loop is shutting down)."""


class CameraError(AvatardError):
    """A camera could not be opened or read; the message names the device."""


class DetectorUnavailable(AvatardError):
    """The installed OpenCV has no face detector; the message says why. The daemon runs on without presence."""


class BrainFailed(AvatardError):
    """The brain cannot work until the operator changes something (credentials, model, setup); not retried."""

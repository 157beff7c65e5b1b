"""Why a Live connection ended, and whether trying again can help.

Retried: anything nameable that a new connection can fix (a drop, a timeout, a server error, goAway). Not retried:
the server refusing the *setup itself* (before setupComplete) with 1007 (invalid argument: a field this model
does not take) or 1008 (policy: a bad API key, or a model it does not serve). Mid-session the server also closes
with 1008 (a goAway deadline missed), and that is retried.

A refusal is turned into one line for ``status`` and the log that says what to change: the refused model and the
current ids for "not found", the offending field for 1007. The close reason comes from the server, which never
echoes the key or the bearer token.
"""

from __future__ import annotations

import asyncio
import random
import re

from ...errors import AsyncioCancelledError
from .generations import current_models

FATAL_CLOSE_CODES = frozenset({1007, 1008})
BACKOFF_FIRST = 0.5  # seconds before the first reconnect attempt after a drop
BACKOFF_MAX = 30.0  # cap: a long outage is retried every ~30 s, forever
# The real service's "not found" reason (Gemini API): "models/X is not found for API version v1beta, or is not
# supported for bidiGenerateContent. ..."; Vertex: "Publisher Model `projects/.../models/X` not found." A close
# reason is cut at 123 bytes (RFC 6455), and Vertex's long model path can push "not found" past the cut, so its
# "Publisher Model" prefix counts too.
NOT_FOUND = re.compile(r"not (?:be )?found|^(?:\d+ \w+\. )?Publisher Model", re.IGNORECASE)
# How the real service names a field it refuses: 'Unknown name "thinkingConfig" at ...' (protobuf JSON), or
# "Invalid value at 'setup.generation_config.thinking_config'".
FIELD = re.compile(r"""Unknown name "([\w.]+)"|at '([\w.\[\]]+)'""")


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Errors that end one connection attempt; :func:`refusal` says which of them end the retries too."""
    import google.auth.exceptions
    import websockets.exceptions
    from google.genai import errors
    # asyncio.TimeoutError is TimeoutError only from Python 3.11 on. GoogleAuthError: Vertex's bearer token is
    # fetched before each connection (an unreachable token endpoint is a TransportError, retried).
    return (errors.APIError, OSError, websockets.exceptions.WebSocketException, TimeoutError, asyncio.TimeoutError,
            AsyncioCancelledError, google.auth.exceptions.GoogleAuthError)


def refusal(reason, *, established: bool, model: str) -> str | None:
    """The failure line if ``reason`` (how a connection attempt ended) means retrying cannot help, else None."""
    import google.auth.exceptions
    if isinstance(reason, google.auth.exceptions.RefreshError) and not reason.retryable:
        # The token endpoint said no (invalid_grant: a revoked or deleted service-account key). Its answer names
        # the error, never the private key or a token.
        return f"Google Cloud credentials refused: {reason}"
    code = getattr(reason, "code", None)
    if established or code not in FATAL_CLOSE_CODES:
        return None
    message = str(getattr(reason, "message", None) or reason)
    if code == 1008 and NOT_FOUND.search(message):
        return f"model {model!r} is not served ({code}: {message}); current models: {current_models()}"
    if code == 1007:
        field = FIELD.search(message)
        named = f"setup field {field.group(1) or field.group(2)!r} refused" if field else "setup refused"
        return f"{named} for model {model!r} ({code}: {message})"
    return f"{code}: {message}"


def backoff(attempt: int) -> float:
    """Seconds before reconnect attempt ``attempt`` (1, 2, ...): exponential with jitter, capped."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

"""Logging set-up: text for people, JSON lines for log collectors.

Secrets are never passed to loggers by avatard itself; as a second line of defence every record is
scrubbed of the configured secret values, and third-party loggers that print request headers
(websockets at DEBUG prints ``x-goog-api-key``) are never allowed below INFO.
"""

from __future__ import annotations

import json
import logging
import sys

# Libraries whose DEBUG output includes HTTP headers (API keys, Vertex bearer tokens) or is too chatty to be useful.
# google-auth's request/response logging (_helpers.request_log) hashes tokens and does not propagate unless the
# "google" logger is configured; it and urllib3 (the token endpoint's connections) are held at INFO all the same.
QUIET_LOGGERS = ("websockets", "httpx", "httpcore", "google_genai", "trio-websocket", "google.auth", "urllib3")
REDACTED = "***"


class _Scrubber(logging.Formatter):
    def __init__(self, inner: logging.Formatter, secrets: list[str]) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str, fmt: str, secrets: list[str]) -> None:
    inner = JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Scrubber(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO if level == "debug" else logging.WARNING, logging.INFO))

"""Who may do what on the server port: roles from tokens, and the Origin rule. Pure: no I/O.

- No ``--token`` (loopback, or ``--no-auth`` on purpose): everyone may talk.
- ``--token``: it lets a client talk (audio, text, control) and read ``/metrics`` and ``/healthz`` detail;
  ``--viewer-token`` lets a client only watch; anything else is refused.

Tokens arrive as ``?token=`` (browsers cannot set headers on a WebSocket) or ``Authorization: Bearer``
(Prometheus, scripts). They are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

import attrs

TALK = "talk"
WATCH = "watch"


@attrs.frozen
class Access:
    token: str | None = attrs.field(default=None, repr=False)
    viewer_token: str | None = attrs.field(default=None, repr=False)
    allow_origin: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config) -> Access:
        return cls(config.token, config.viewer_token, config.allow_origin)

    @property
    def open(self) -> bool:
        return self.token is None

    def role(self, head) -> str | None:
        """TALK, WATCH, or None for a client that offered no valid token."""
        if self.token is None:
            return TALK
        offered = (head.query.get("token") or head.headers.get("authorization", "").removeprefix("Bearer ")).encode()
        if hmac.compare_digest(offered, self.token.encode()):
            return TALK
        if self.viewer_token is not None and hmac.compare_digest(offered, self.viewer_token.encode()):
            return WATCH
        return None

    def may_operate(self, head) -> bool:
        """``/metrics`` and ``/healthz`` detail: client ids, bytes and turns are the operator's business."""
        return self.role(head) == TALK

    def origin_refused(self, head) -> bool:
        """A browser's Origin must be listed (``--allow-origin``, ``*`` for any) or, by default, be this
        server itself: a page elsewhere that a LAN user opens must not drive the avatar. Clients that are
        not browsers send no Origin."""
        origin = head.headers.get("origin")
        if origin is None or "*" in self.allow_origin or origin in self.allow_origin:
            return False
        if self.allow_origin:
            return True
        return urlsplit(origin).netloc.lower() != head.headers.get("host", "").lower()

"""``--metrics-port``: ``GET /metrics`` on loopback, for a daemon whose server port is not open (local mode, a kiosk).

The server port serves ``/metrics`` itself (with the token beyond loopback). Local mode opens no server port, yet
it is the mode with a microphone, a speaker and an echo canceller to watch; this listener gives a scraper on the
box (Prometheus, node_exporter, an agent) the same exposition without opening anything to the network: it binds
127.0.0.1 only and answers nothing but ``GET``/``HEAD /metrics`` (404 otherwise, 405 for other methods).
``avatarctl metrics`` prints the same text over the control socket.

Each connection answers one request and closes. At most :data:`MAX_CONNECTIONS` are served at once; past that a new
connection is closed at once (a scraper on the box makes one a scrape), and the request head is read under
http_front's own size and time limits.
"""

from __future__ import annotations

import logging

import trio

from ..core import metrics
from ..errors import ConfigError
from .http_front import read_head, respond

logger = logging.getLogger("avatard.metrics_port")

HOST = "127.0.0.1"
MAX_CONNECTIONS = 8


class MetricsPort:
    name = "metrics_port"

    def __init__(self, port: int, registry) -> None:
        self._requested = port
        self._registry = registry
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.port: int | None = None  # bound (``--metrics-port 0`` picks a free one)
        self.scrapes = 0
        self.refused = 0  # connections closed at once: MAX_CONNECTIONS were being served

    def status(self) -> dict:
        return {"metrics_url": f"http://{HOST}:{self.port}/metrics" if self.port is not None else None,
                "metrics_scrapes": self.scrapes, "metrics_refused": self.refused}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(self._requested, host=HOST)
        except OSError as exc:
            raise ConfigError(f"--metrics-port: cannot listen on {HOST}:{self._requested}: {exc.strerror}") from None
        self.port = listeners[0].socket.getsockname()[1]
        logger.info("metrics at http://%s:%d/metrics", HOST, self.port)
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                self.refused += 1
                return
            try:
                await self._answer(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the scraper went away
            finally:
                self._slots.release()

    async def _answer(self, stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        if head is None:
            return
        if head.method not in ("GET", "HEAD"):
            await respond(stream, head, 405, b"method not allowed\n", "text/plain", (("allow", "GET, HEAD"),))
        elif head.path == "/metrics":
            self.scrapes += 1
            await respond(stream, head, 200, metrics.render(self._registry), metrics.CONTENT_TYPE)
        else:
            await respond(stream, head, 404, b"not found (only /metrics here)\n", "text/plain")

"""The event bus: status changes, transcripts, gestures and clients, fanned out to every subscriber.

Subscribers are the control socket's ``subscribe`` connections and the WebSocket clients. Each one gets
its own bounded channel; a subscriber that does not keep up loses events (counted per subscriber and
in total) instead of slowing the publisher, which runs on the renderer's clock.
"""

from __future__ import annotations

import contextlib
import logging
import time

import trio

from ..constants import FRAME_KIND
from .messages import Event

logger = logging.getLogger("avatard.events")

# Room for a few seconds of bursty events (transcript partials arrive a few per second); a subscriber
# that falls this far behind is not reading, and we drop rather than wait.
SUBSCRIBER_BUFFER = 256


class _Subscriber:
    def __init__(self, send: trio.MemorySendChannel, kinds: frozenset[str] | None) -> None:
        self.send = send
        self.kinds = kinds
        self.dropped = 0

    def wants(self, kind: str) -> bool:
        if self.kinds is None:
            return kind != FRAME_KIND
        return kind in self.kinds


class EventBus:
    """Publish from anywhere in the trio thread; never blocks."""

    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []
        self.dropped = 0
        self.last_status: dict = {"status": "starting"}  # the avatar's activity: listening, speaking, ...
        self.last_brain_status: dict = {"status": "brain_connecting"}  # the brain's connection state
        self.last_camera_status: dict = {"status": "camera_on"}  # the camera indicator (core.vision)

    def publish(self, kind: str, **data) -> Event:
        event = Event(kind=kind, data=data, timestamp=time.time())
        if kind == "status":
            if data.get("status", "").startswith("brain_"):
                self.last_brain_status = data
            elif data.get("status", "").startswith("camera_"):
                self.last_camera_status = data
            else:
                self.last_status = data
        for sub in self._subscribers:
            if not sub.wants(kind):
                continue
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
                self.dropped += 1
            except trio.BrokenResourceError:
                pass
        return event

    def wants(self, kind: str) -> bool:
        """Whether anyone listens for ``kind``: lets the renderer skip building per-frame events."""
        return any(sub.wants(kind) for sub in self._subscribers)

    @contextlib.contextmanager
    def subscribe(self, kinds: frozenset[str] | None = None, buffer: int = SUBSCRIBER_BUFFER):
        """Yield a receive channel of events; ``kinds=None`` means everything but per-frame events."""
        send, receive = trio.open_memory_channel(buffer)
        sub = _Subscriber(send, kinds)
        self._subscribers.append(sub)
        try:
            yield receive
        finally:
            self._subscribers.remove(sub)
            send.close()
            receive.close()
            if sub.dropped:
                logger.info("subscriber dropped %d events while not reading", sub.dropped)

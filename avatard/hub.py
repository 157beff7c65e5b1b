"""The operations every front end offers (control socket, WebSocket clients, keyboard): one place.

Front ends never touch the brain or renderer directly; they call the hub, which keeps the rules in
one spot: an interrupt reaches the brain, the renderer and every sink at once; a gesture name is
checked against the renderer's list; user input goes to the brain through its bounded channel.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import trio

from .animator import UnknownGesture
from .events import EventBus
from .latency import LatencyMeter
from .messages import SayText, UserAudio, UserText

logger = logging.getLogger("avatard.hub")

MAX_TEXT_CHARS = 2000  # a turn longer than this is a paste accident, not speech (and TTS time grows with it)


class Refused(Exception):
    """The daemon declines a request; the message is shown to whoever asked."""


class Hub:
    def __init__(self, *, config, renderer, brain, events: EventBus, latency: LatencyMeter,
                 brain_inputs: trio.MemorySendChannel) -> None:
        self.config = config
        self.renderer = renderer
        self.brain = brain
        self.events = events
        self.latency = latency
        self._brain_inputs = brain_inputs
        self._interrupt_hooks: list = []
        self.started = time.monotonic()
        self.interrupts = 0
        self.fanout = None  # set by the app (frame drop counters)
        self.registry = None  # set by the app: the Prometheus registry behind GET /metrics
        self.ws_server = None  # set in server mode (client counters)
        self.audio_file = None  # set with --audio-file: what replay() restarts
        self.local_io: dict = {}  # name -> speaker, microphone, window, recorder, audio file (each has info())

    def on_interrupt(self, hook) -> None:
        """Register a sink's flush: called synchronously inside :meth:`interrupt`."""
        self._interrupt_hooks.append(hook)

    def interrupt(self, source: str) -> None:
        self.interrupts += 1
        self.brain.interrupt()
        dropped = self.renderer.interrupt()
        self.latency.interrupted()
        for hook in self._interrupt_hooks:
            hook()
        logger.info("interrupt from %s (%d queued samples discarded)", source, dropped)
        self.events.publish("status", status="interrupted", source=source)
        if not self.renderer.speaking:  # otherwise the renderer says "listening" with its next, silent frame
            self.events.publish("status", status="listening")

    def gesture(self, name: str, source: str) -> None:
        try:
            self.renderer.gesture(name)
        except UnknownGesture as exc:
            raise Refused(str(exc)) from None
        self.events.publish("gesture", gesture=name, source=source)

    def replay(self, source: str) -> None:
        """Stream the --audio-file to the brain once more (after the pass in progress, if any)."""
        if self.audio_file is None:
            raise Refused("no audio file to replay: start avatard with --audio-file")
        queued = self.audio_file.replay()
        logger.info("replay from %s%s", source, "" if queued else " (one is already queued)")

    @property
    def gestures(self) -> list[str]:
        return self.renderer.gestures

    async def say(self, text: str) -> None:
        await self._brain_inputs.send(SayText(self._checked(text)))

    async def ask(self, text: str, source: str) -> None:
        await self._brain_inputs.send(UserText(self._checked(text), source=source))

    async def user_audio(self, samples: np.ndarray, source: str) -> None:
        await self._brain_inputs.send(UserAudio(samples, source=source))

    def _checked(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise Refused("text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise Refused(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        return text

    def status(self) -> dict:
        """What ``avatarctl status`` shows. Never includes a secret."""
        r = self.renderer
        return {
            "status": self.events.last_status.get("status"),
            "renderer": r.name,
            "renderer_fallback": getattr(r, "fallback_reason", None),
            "brain": self.brain.name,
            "brain_state": self.brain.state,
            "brain_failure": getattr(self.brain, "failure", None),
            "size": f"{r.width}x{r.height}",
            "fps": r.fps,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "speaking": r.speaking,
            "frames_rendered": r.frames_rendered,
            "frames_dropped": r.frames_dropped + (self.fanout.frames_dropped if self.fanout else 0),
            "ticks_skipped": r.ticks_skipped,
            "turns": self.brain.turns,
            "interrupts": self.interrupts,
            "reconnects": getattr(self.brain, "reconnects", 0),
            "events_dropped": self.events.dropped,
            "bytes_sent": self.ws_server.bytes_sent if self.ws_server else 0,
            "video_dropped": self.ws_server.video_dropped if self.ws_server else 0,
            "latency_p95_ms": self.latency.p95_ms(),
            "clients": len(self.ws_server.clients) if self.ws_server else 0,
            "client_list": [dict(id=c.id, **c.info()) for c in self.ws_server.clients.values()] if self.ws_server else [],
            "last_latency": self.latency.last,
            "server": f"http://{self.config.host}:{self.ws_server.port}/" if self.ws_server else None,
            "local_io": {name: part.info() for name, part in self.local_io.items()},
        }

"""The operations every front end offers (control socket, WebSocket clients, keyboard, brains): one place.

Front ends never touch the brain or renderer directly; they call the hub, which keeps the rules in
one spot: an interrupt reaches the brain, the renderer and every sink at once; a gesture name is
checked against the renderer's list; user input goes to the brain through its bounded lanes
(:mod:`avatard.core.input_lanes`): the operator's own, and a shared one where each browser has a
budget (:mod:`avatard.core.input_budget`).

The hub is built complete: every collaborator is passed to its constructor, and ``status()`` asks each
part for its own numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import attrs
import numpy as np

from ..constants import MAX_TEXT_CHARS
from ..errors import Busy, Refused
from .events import EventBus
from .fanout import FanOut
from .input_budget import InputBudget
from .input_lanes import InputLanes
from .interfaces import Brain, Part, Renderer, Sink
from .latency import LatencyMeter
from .messages import Frame, SayText, UserAudio, UserText

logger = logging.getLogger("avatard.hub")


@attrs.define(eq=False)
class Hub:
    renderer: Renderer
    brain: Brain
    events: EventBus
    latency: LatencyMeter
    fanout: FanOut
    inputs: InputLanes = attrs.field(repr=False)
    budget: InputBudget = attrs.field(factory=InputBudget, repr=False)
    sinks: Sequence[Sink] = ()  # flushed on every interrupt
    front_ends: Sequence[Part] = ()  # their status() keys go to the top level (the WebSocket server's clients)
    local_parts: Sequence[Part] = ()  # shown under "local_io" by name
    audio_file: object | None = None  # the --audio-file source: what replay() restarts
    started: float = attrs.field(factory=time.monotonic)
    interrupts: int = attrs.field(default=0, init=False)

    # -- what front ends read ----------------------------------------------------------------------

    @property
    def gestures(self) -> list[str]:
        return self.renderer.gestures

    @property
    def speaking(self) -> bool:
        return self.renderer.speaking

    @property
    def fps(self) -> int:
        return self.renderer.fps

    @property
    def last_frame(self) -> Frame | None:
        return self.renderer.last_frame

    # -- operations --------------------------------------------------------------------------------

    def interrupt(self, source: str) -> None:
        self.interrupts += 1
        inputs = self.inputs.drain()  # first: nothing queued before the interrupt reaches the brain after it
        self.brain.interrupt()
        dropped = self.renderer.interrupt()
        self.latency.interrupted()
        for sink in self.sinks:
            sink.flush()
        logger.info("interrupt from %s (%d queued inputs and %d queued samples discarded)", source, inputs, dropped)
        self.events.publish("status", status="interrupted", source=source)
        if not self.renderer.speaking:  # otherwise the renderer says "listening" with its next, silent frame
            self.events.publish("status", status="listening")

    def gesture(self, name: str, source: str) -> None:
        self.renderer.gesture(name)  # UnknownGesture is a Refused: it reaches whoever asked
        self.events.publish("gesture", gesture=name, source=source)

    def replay(self, source: str) -> None:
        """Stream the --audio-file to the brain once more (after the pass in progress, if any)."""
        if self.audio_file is None:
            raise Refused("no audio file to replay: start avatard with --audio-file")
        queued = self.audio_file.replay()
        logger.info("replay from %s%s", source, "" if queued else " (one is already queued)")

    def say(self, text: str) -> None:
        """The operator's: spoken verbatim, ahead of browser input; Busy if the operator lane is full."""
        self.inputs.put_operator(SayText(self._checked(text)))

    def ask(self, text: str, source: str) -> None:
        """The operator's turn, ahead of browser input; Busy if the operator lane is full."""
        self.inputs.put_operator(UserText(self._checked(text), source=source))

    def user_text(self, text: str, source: str) -> None:
        """A browser's turn: within its budget and while the shared lane has room, else Busy and nothing queued."""
        text = self._checked(text)
        if self.inputs.shared_full:  # checked first so that a refused turn costs no budget
            raise Busy("the avatar has too many inputs waiting; try again after it answers")
        self.budget.spend(source, len(text), self.inputs.turns_waiting(source))
        self.inputs.put_nowait(UserText(text, source=source))

    async def user_audio(self, samples: np.ndarray, source: str) -> None:
        await self.inputs.put(UserAudio(samples, source=source))

    def _checked(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise Refused("text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise Refused(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        return text

    def status(self) -> dict:
        """What ``avatarctl status`` and ``/metrics`` show. Never includes a secret."""
        renderer = self.renderer.status()
        status = {
            "status": self.events.last_status.get("status"),
            **renderer,
            **self.brain.status(),
            "frames_dropped": renderer["frames_dropped"] + self.fanout.frames_dropped,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "interrupts": self.interrupts,
            "events_dropped": self.events.dropped,
            "latency_p95_ms": self.latency.p95_ms(),
            "last_latency": self.latency.last,
            "clients": 0,  # without a WebSocket server; the server's status() replaces these
            "client_list": [],
        }
        for part in self.front_ends:
            status.update(part.status())
        status["local_io"] = {part.name: part.status() for part in self.local_parts}
        return status

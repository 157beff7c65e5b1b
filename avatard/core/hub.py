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
import trio

from ..config import GREET_MODEL
from ..constants import GREET_GESTURE, MAX_TEXT_CHARS
from ..errors import Busy, Refused
from .events import EventBus
from .fanout import FanOut
from .input_budget import InputBudget
from .input_lanes import InputLanes
from .interfaces import Brain, Part, Renderer, Sink
from .latency import LatencyMeter
from .messages import Frame, SayText, UserAudio, UserText
from .vision import Vision, decode_image

logger = logging.getLogger("avatard.hub")

# --greet model: the turn that lets the model greet in its own words (it sees the camera frames too).
GREET_PROMPT = "(Someone just walked up to you and is looking at you. Greet them briefly, in your own words.)"


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
    vision: Vision | None = None  # camera frames and stills; None: this daemon cannot see
    camera_device: object | None = None  # the --camera part: what camera on/off starts and stops
    greeting: str | None = None  # --greet: spoken with a wave on an arrival ("model": a model turn)
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

    # -- vision ----------------------------------------------------------------------------------------

    def _vision(self) -> Vision:
        if self.vision is None:
            raise Refused("this daemon has no camera input (start it with --camera or --server)")
        return self.vision

    async def see(self, image: np.ndarray, source: str) -> None:
        """A camera frame (BGR) from the local camera or a browser: to the brain and presence, as due."""
        change = await self._vision().frame(image, source)
        if change is not None and change.greet and self.greeting is not None:
            self._greet(source)

    async def see_jpeg(self, jpeg: bytes, source: str) -> None:
        """A browser's camera frame: decoded in a worker thread (only when it will be used), then as :meth:`see`."""
        if self._vision().wants(source):
            await self.see(await trio.to_thread.run_sync(decode_image, jpeg), source)

    async def look(self, image: bytes, source: str) -> None:
        """An operator's still (any image file OpenCV decodes): to the brain in its turn, camera on or off."""
        vision = self._vision()
        await vision.still(await trio.to_thread.run_sync(decode_image, image), source)
        logger.info("still from %s sent to the brain", source)

    def camera(self, on: bool, source: str) -> None:
        """``avatarctl camera on|off``: off stops the local camera and ignores browsers' frames."""
        self._vision().set_on(on, source)
        if self.camera_device is not None:
            self.camera_device.enable(on)

    def _greet(self, source: str) -> None:
        greeting = UserText(GREET_PROMPT, source="presence") if self.greeting == GREET_MODEL else SayText(self.greeting)
        try:
            # The shared lane, unbudgeted: the daemon's own input. A full lane means the avatar has plenty to
            # answer already; a greeting queued behind it would come too late, so it is dropped.
            self.inputs.put_nowait(greeting)
        except Busy:
            logger.info("someone arrived (seen by %s); greeting dropped: the avatar has inputs waiting", source)
            return
        logger.info("someone arrived (seen by %s): greeting", source)
        if isinstance(greeting, SayText):
            try:
                self.gesture(GREET_GESTURE, "presence")
            except Refused as exc:  # a bitHuman model without a wave still says hello
                logger.info("greeting without a wave: %s", exc)

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
        if self.vision is not None:
            status.update(self.vision.status())
        for part in self.front_ends:
            status.update(part.status())
        status["local_io"] = {part.name: part.status() for part in self.local_parts}
        return status

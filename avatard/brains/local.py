"""The offline brain: no keys, no network. It speaks text with espeak-ng and echoes what it hears.

- ``SayText``: spoken verbatim.
- ``UserText``: a user turn, answered by speaking it back.
- ``UserAudio``: fed to an energy end-of-utterance detector; each finished utterance is played back
  (the avatar repeats you in your own voice), after the speaker pauses.

Transcription events are emitted for both roles, as the Gemini brain does, so clients and tests see
the same event stream whichever brain runs.
"""

from __future__ import annotations

import functools
import logging

import trio

from ..constants import RATE
from ..core.events import EventBus
from ..core.latency import LatencyMeter
from ..core.messages import SayText, UserAudio, UserText
from . import keyword_gestures, voice
from .keyword_gestures import KeywordGestures
from .vad import EndOfUtterance

logger = logging.getLogger("avatard.brain.local")

# Utterances waiting to be spoken; 8 covers a burst of typed turns. When full, typed turns and `say` wait
# (backpressure to their sources: they must not be lost); echoes of speech are dropped, counted and
# reported with an error event.
UTTERANCE_QUEUE = 8


class LocalBrain:
    name = "local"
    sees = False  # no vision model offline: pictures still drive presence and greetings, never this brain

    def __init__(self, *, renderer, events: EventBus, latency: LatencyMeter, keywords: KeywordGestures) -> None:
        self._renderer = renderer
        self._keywords = keywords
        self._controls = None  # the hub, given to run(): where keyword gestures go
        self._events = events
        self._latency = latency
        self._vad = EndOfUtterance()
        self._send, self._receive = trio.open_memory_channel(UTTERANCE_QUEUE)
        self._speaking_scope: trio.CancelScope | None = None
        # Counts interrupts. An utterance is queued with the generation it was taken in; one from before
        # the latest interrupt is skipped. Without it the turn _handle held while waiting for queue room
        # slipped in right after the interrupt emptied the queue (a flood took three interrupts).
        self._generation = 0
        self.state = "connected"
        self.turns = 0
        self.echoes_dropped = 0

    def interrupt(self) -> None:
        """Drop every queued utterance and cut the one being spoken."""
        self._generation += 1
        while True:
            try:
                self._receive.receive_nowait()
            except trio.WouldBlock:
                break
        if self._speaking_scope is not None:
            self._speaking_scope.cancel()

    def _answering(self, text: str, spoken: bool) -> None:
        """The answer's first audio exists: latency mark, transcript, and the keyword gestures of spoken text."""
        self._latency.model_audio()
        self._events.publish("transcription", role="assistant", text=text, is_final=True)
        if spoken:
            keyword_gestures.fire(self._keywords.feed(text) + self._keywords.end(), self._gesture)

    def _gesture(self, name: str) -> None:
        self._controls.gesture(name, self.name)

    def status(self) -> dict:
        return {"brain": self.name, "brain_state": self.state, "brain_failure": None, "turns": self.turns,
                "reconnects": 0, "echoes_dropped": self.echoes_dropped}

    async def run(self, inputs: trio.MemoryReceiveChannel, controls, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._controls = controls
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._speaker)
            self._events.publish("status", status="brain_connected", brain=self.name)
            task_status.started()
            async with inputs:
                async for message in inputs:
                    await self._handle(message)
            nursery.cancel_scope.cancel()

    async def _handle(self, message) -> None:
        generation = self._generation
        if isinstance(message, SayText):
            await self._send.send(("say", message.text, generation))
        elif isinstance(message, UserText):
            self.turns += 1
            self._latency.user_input_ended()
            self._events.publish("transcription", role="user", text=message.text, is_final=True, source=message.source)
            self._events.publish("status", status="thinking")
            await self._send.send(("say", message.text, generation))
        elif isinstance(message, UserAudio):
            for utterance in self._vad.feed(message.samples):
                seconds = len(utterance) / RATE
                try:
                    # Echoes are best effort: waiting here would let one browser streaming noise hold up
                    # every other source's input behind a queue of 20 s echoes.
                    self._send.send_nowait(("echo", utterance, generation))
                except trio.WouldBlock:
                    self.echoes_dropped += 1
                    self._events.publish("error", code="busy", message=f"still speaking; {seconds:.1f} s of speech not echoed")
                    continue
                self.turns += 1
                self._latency.user_input_ended()
                self._events.publish("transcription", role="user", text=f"[{seconds:.1f} s of speech]", is_final=True,
                                     source=message.source)
                self._events.publish("status", status="thinking")
        else:
            raise TypeError(f"local brain got {type(message).__name__}")

    async def _speaker(self) -> None:
        async for kind, payload, generation in self._receive:
            if generation != self._generation:
                continue  # queued before an interrupt
            with trio.CancelScope() as scope:
                self._speaking_scope = scope
                if kind == "say":
                    await voice.speak(self._renderer, payload, functools.partial(self._answering, payload, True))
                elif len(payload):
                    self._answering(f"[echo of {len(payload) / RATE:.1f} s]", False)
                    await voice.play(self._renderer, payload)
            self._speaking_scope = None

"""The Gemini Live brain: a real-time voice conversation through the official google-genai client.

google-genai is asyncio-only; it runs on the private asyncio loop of :mod:`avatard.core.aio_bridge`, where one
async generator owns each Live connection (connect, receive, close). Everything else is trio. The parts, one job
each:

    inputs --> intake --> Outbox (outbox.py; bounded, kept across reconnects) --> sender --> session
    session --> Receiver (receiver.py: every field of every message)
                  \\-> ModelSpeech (speech.py: resampled into the renderer)   \\-> Transcripts (transcripts.py)
                  \\-> tool calls (tools.py)                                  \\-> tokens, resumption handle

How a model is spoken to (typed turns, setup fields, tool behaviour) is its generation's row in
generations.py; the client (Gemini API key or Vertex AI) is built in client.py; whether a failed connection is
retried is decided in failures.py.

A connection that ends for any nameable reason is *resumed*, not restarted: a ``goAway`` reconnects at
once with the newest session-resumption handle, a dropped link reconnects with exponential backoff and
jitter, and context-window compression lets a session run for hours. A setup the server refuses (close codes
1007/1008 before setupComplete: bad key, a model it does not serve, a field the model does not take) stops the
retries with ``status: brain_failed``; the rest of the daemon keeps running.

``avatarctl say`` is spoken verbatim by the offline voice (espeak-ng), without a model turn: the model
would paraphrase, and an operator announcement must come out exactly as typed.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import trio

from ...constants import RATE
from ...core.aio_bridge import open_asyncio_loop
from ...core.events import EventBus
from ...core.latency import LatencyMeter
from ...core.messages import CameraFrame, SayText, UserAudio, UserText
from ...errors import BrainFailed
from .. import voice
from ..keyword_gestures import KeywordGestures
from ..vad import BLOCK, END_SILENCE_BLOCKS, EndOfUtterance
from . import failures
from .client import load_credentials, make_client
from .generations import REALTIME_TEXT, generation_for
from .live_setup import connect_config
from .outbox import AUDIO, TEXT, VIDEO, Outbox
from .receiver import GO_AWAY, Receiver
from .speech import ModelSpeech
from .transcripts import Transcripts

logger = logging.getLogger("avatard.brain.gemini")

# Queued `say` requests; the intake waits when full (backpressure to the control socket).
SAY_QUEUE = 8
# Live server messages parsed ahead of the trio side (see _sessions): the rest wait in the socket.
LIVE_STREAM_BUFFER = 2
CLOSE_TIMEOUT = 1.0  # for our close frame's echo on shutdown; a dead link must not hold up the exit
# End of user speech is detected locally (the server's VAD decides the turn) only to measure latency.
END_OF_SPEECH_DELAY = END_SILENCE_BLOCKS * BLOCK / RATE


class GeminiBrain:
    name = "gemini"
    sees = True  # camera frames go to the model (send_realtime_input(video=...))

    def __init__(self, *, config, renderer, events: EventBus, latency: LatencyMeter, keywords: KeywordGestures) -> None:
        self._config = config
        self._renderer = renderer
        self._events = events
        self._latency = latency
        self.generation, known = generation_for(config.gemini_model)
        logger.info("Gemini model %s via %s: %s rules%s", config.gemini_model,
                    f"Vertex AI ({config.gcp_project}, {config.gcp_location})" if config.vertex else "the Gemini API",
                    self.generation.name, "" if known else " (an id not in the table: the newest generation's)")
        self.state = "connecting"
        self.failure: str | None = None
        self.reconnects = 0
        self._outbox = Outbox()
        self._say_send, self._say_receive = trio.open_memory_channel(SAY_QUEUE)
        self._say_scope: trio.CancelScope | None = None
        self._interrupts = 0  # a say queued before the latest interrupt is skipped
        self._speech = ModelSpeech(renderer, latency)
        self._transcripts = Transcripts(events, keywords, self._gesture)
        self._receiver: Receiver | None = None  # built in run(), when the controls are known
        self._vad = EndOfUtterance()
        self.video_sent = 0
        self._video_dropped_offline = 0  # frames that came while not connected

    # -- the brain interface ------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._interrupts += 1
        while True:
            try:
                self._say_receive.receive_nowait()
            except trio.WouldBlock:
                break
        if self._say_scope is not None:
            self._say_scope.cancel()
        if self._receiver is not None:
            self._receiver.interrupt()

    def status(self) -> dict:
        receiver = self._receiver
        return {"brain": self.name, "brain_state": self.state, "brain_failure": self.failure,
                "turns": self._transcripts.turns, "reconnects": self.reconnects,
                "audio_dropped": self._outbox.audio_dropped, "model_video_dropped": self.video_dropped,
                "model_video_sent": self.video_sent, "gemini_model": self._config.gemini_model,
                "gemini_rules": self.generation.name,
                "prompt_tokens": receiver.prompt_tokens if receiver else 0,
                "response_tokens": receiver.response_tokens if receiver else 0}

    @property
    def video_dropped(self) -> int:
        """Camera frames not sent: they came while the session was not connected, or were stale by then."""
        return self._video_dropped_offline + self._outbox.video_dropped

    def _gesture(self, name: str) -> None:
        self._receiver.gesture(name)

    async def run(self, inputs: trio.MemoryReceiveChannel, controls, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._receiver = Receiver(generation=self.generation, speech=self._speech, transcripts=self._transcripts,
                                  outbox=self._outbox, controls=controls, name=self.name)
        async with open_asyncio_loop() as aio, trio.open_nursery() as nursery:
            nursery.start_soon(self._intake, inputs)
            nursery.start_soon(self._say_worker)
            task_status.started()
            try:
                # Reads the service-account file (and maybe asks the metadata server): off the trio thread.
                credentials = await trio.to_thread.run_sync(load_credentials) if self._config.vertex else None
                client = make_client(self._config, credentials)
            except BrainFailed as exc:
                self._fail(str(exc))
                return
            await self._sessions(aio, client)
            # Failed for good: the intake keeps refusing input with a status, the rest of the daemon lives on.

    # -- connection management -------------------------------------------------------------------------

    async def _live(self, client, config):
        """One Live connection, on the asyncio loop: yields the session first, then every message."""
        async with client.aio.live.connect(model=self._config.gemini_model, config=config) as session:
            yield session
            while True:
                async for message in session.receive():
                    yield message

    def _set_state(self, state: str, **extra) -> None:
        self.state = state
        self._events.publish("status", status=f"brain_{state}", brain=self.name, **extra)

    def _fail(self, failure: str) -> None:
        self.failure = failure
        logger.error("Gemini cannot work: %s; not retrying", failure)
        self._set_state("failed", reason=failure)

    async def _sessions(self, aio, client) -> None:
        retryable = failures.retryable_errors()
        attempt = 0
        self._set_state("connecting")
        while True:
            reason = None
            established = False
            setup = connect_config(self.generation, self._config, self._renderer.gestures, self._receiver.handle)
            try:
                # Two messages in flight, not the bridge's default 16: an answer comes as a burst (~60 messages
                # at once from an instant server), and 16 parsed ahead kept the asyncio thread holding the GIL
                # while the trio side took the first audio: asyncio yield -> trio p50 2.0 ms with 16, 0.4 with 2
                # (bench/latency.py). The speech buffer, not this hand-off, is where an answer waits.
                async with aio.open_stream(self._live, client, setup, max_buffer=LIVE_STREAM_BUFFER) as messages:
                    session = await messages.receive()
                    established = True
                    attempt = 0
                    self._set_state("connected", resumed=setup.session_resumption.handle is not None)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._sender, aio, session, nursery.cancel_scope)
                            reason = await self._receiver.receive(messages)
                            nursery.cancel_scope.cancel()
                    finally:
                        # Close with 1000 before the stream's task is cancelled: cancelling an open
                        # session makes websockets close with 1011, which the server counts as a failure.
                        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                            with contextlib.suppress(*retryable):
                                await aio.run(session.close)
            except retryable as exc:
                reason = exc
            except trio.EndOfChannel:
                reason = "connection ended"
            failure = failures.refusal(reason, established=established, model=self._config.gemini_model)
            if failure is not None:
                self._fail(failure)
                return
            self.reconnects += 1
            if reason == GO_AWAY:
                delay = 0.0
            else:
                attempt += 1
                delay = failures.backoff(attempt)
            logger.warning("Gemini connection ended (%s); reconnecting in %.1f s", reason, delay)
            self._receiver.end_turn(cut=True)
            self._outbox.drop_video()
            # Announced before the wait, so nobody sees "connected" during the backoff.
            self._set_state("reconnecting", attempt=attempt, delay=round(delay, 2))
            await trio.sleep(delay)

    # -- sending -------------------------------------------------------------------------------------

    async def _intake(self, inputs: trio.MemoryReceiveChannel) -> None:
        async with inputs:
            async for message in inputs:
                if isinstance(message, SayText):
                    await self._say_send.send((message.text, self._interrupts))
                elif self.state == "failed":
                    self._events.publish("error", code="brain_failed", message=f"Gemini is unavailable: {self.failure}")
                elif isinstance(message, UserText):
                    if self._outbox.put_turn(message.text):
                        self._transcripts.typed(message.text, message.source)
                    else:
                        self._events.publish("error", code="busy",
                                             message="too many turns waiting for the Gemini connection; try again")
                elif isinstance(message, UserAudio):
                    self._transcripts.user_source = message.source
                    self._queue_audio(message.samples)
                elif isinstance(message, CameraFrame):
                    if self.state == "connected":
                        self._outbox.put_video(message.jpeg)
                    else:  # a picture held through a reconnect would be stale: drop it, counted
                        self._video_dropped_offline += 1

    def _queue_audio(self, samples) -> None:
        if not self._outbox.put_audio(samples.astype("<i2").tobytes()) and self._outbox.audio_dropped % 100 == 1:
            self._events.publish("error", code="audio_dropped",
                                 message=f"{self._outbox.audio_dropped} audio chunks dropped while Gemini reconnects")
        if self._vad.feed(samples):
            self._latency.user_input_ended(ago=END_OF_SPEECH_DELAY)

    def _call(self, session, item):
        """The SDK call that sends ``item`` the way this model generation accepts it."""
        from google.genai import types
        if item.kind == AUDIO:
            return functools.partial(session.send_realtime_input,
                                     audio=types.Blob(data=item.payload, mime_type=f"audio/pcm;rate={RATE}"))
        if item.kind == VIDEO:
            return functools.partial(session.send_realtime_input,
                                     video=types.Blob(data=item.payload, mime_type=self.generation.video_mime))
        if item.kind == TEXT:
            if self.generation.typed_turn == REALTIME_TEXT:
                return functools.partial(session.send_realtime_input, text=item.payload)
            return functools.partial(session.send_client_content, turns=types.Content(
                role="user", parts=[types.Part(text=item.payload)]), turn_complete=True)
        return functools.partial(session.send_tool_response, function_responses=item.payload)

    async def _sender(self, aio, session, scope: trio.CancelScope) -> None:
        retryable = failures.retryable_errors()
        while True:
            item = await self._outbox.next()
            try:
                await aio.run(self._call(session, item))
            except retryable as exc:
                logger.info("send failed (%s); the item stays queued for the next connection", exc)
                scope.cancel()
                return
            # Sent: only now leave the outbox, so nothing is lost when a connection dies mid-send.
            self._outbox.sent(item)
            self.video_sent += item.kind == VIDEO
            if item.kind == TEXT:
                self._latency.user_input_ended()

    # -- say -----------------------------------------------------------------------------------------

    async def _say_worker(self) -> None:
        async for text, queued_at in self._say_receive:
            if queued_at != self._interrupts:
                continue  # queued before an interrupt
            with trio.CancelScope() as scope:
                self._say_scope = scope
                await voice.speak(self._renderer, text, functools.partial(
                    self._events.publish, "transcription", role="assistant", text=text, is_final=True))
            self._say_scope = None

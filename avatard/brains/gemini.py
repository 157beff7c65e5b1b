"""The Gemini Live brain: a real-time voice conversation through the official google-genai client.

google-genai is asyncio-only; it runs on the private asyncio loop of :mod:`avatard.aio_bridge`, where one
async generator owns each Live connection (connect, receive, close). Everything else is trio:

    inputs --> intake --> outbox (bounded; kept across reconnects) --> sender --> session
    session --> receiver --> renderer.push_audio (24 kHz resampled to 16 kHz, stateful)
                         \\-> transcripts, keyword gestures, tool calls, barge-in, resumption handles

A connection that ends for any nameable reason is *resumed*, not restarted: a ``goAway`` reconnects at
once with the newest session-resumption handle, a dropped link reconnects with exponential backoff and
jitter, and context-window compression lets a session run for hours. Errors retrying cannot fix (bad
key, unknown model: close codes 1007/1008) stop the retries with ``status: brain_failed``.

``avatarctl say`` is spoken verbatim by the offline voice (espeak-ng), without a model turn: the model
would paraphrase, and an operator announcement must come out exactly as typed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import random
import re
import ssl

import certifi
import numpy as np
import trio

from ..constants import RATE
from ..core.aio_bridge import open_asyncio_loop
from ..core.audio import StreamResampler
from ..core.events import EventBus
from ..core.latency import LatencyMeter
from ..core.messages import SayText, UserAudio, UserText
from ..errors import AsyncioCancelledError, Refused
from . import keyword_gestures, voice
from .keyword_gestures import KeywordGestures
from .vad import BLOCK, END_SILENCE_BLOCKS, EndOfUtterance

logger = logging.getLogger("avatard.brain.gemini")

# Audio waiting to be sent. While connected it drains within milliseconds; while reconnecting it keeps the
# newest ~10 s (500 chunks of 20 ms) and drops the oldest, counted and reported with an error event.
OUTBOX_AUDIO = 500
# Text turns and tool responses waiting to be sent; never dropped. When full, new text turns are refused
# with an error event (a person typing faster than a reconnect is rare).
OUTBOX_TURNS = 16
# Queued `say` requests; the intake waits when full (backpressure to the control socket).
SAY_QUEUE = 8
BACKOFF_FIRST = 0.5  # seconds before the first reconnect attempt after a drop
BACKOFF_MAX = 30.0  # cap: a long outage is retried every ~30 s, forever
# Close codes that, when they refuse the setup itself, mean the request is wrong (1007 invalid argument,
# 1008 policy: bad API key, unknown model): retrying cannot fix them. Mid-session the server also uses
# 1008 (e.g. a goAway deadline missed), and that is retried.
FATAL_CLOSE_CODES = frozenset({1007, 1008})
GESTURE_TOOL = "trigger_gesture"
CLOSE_TIMEOUT = 1.0  # for our close frame's echo on shutdown; a dead link must not hold up the exit
# After a goAway, stop finishing the current answer this long before the server's deadline, so the
# new connection is up before the old one is cut (and its resumption handle is the newest we have).
GO_AWAY_MARGIN = 1.0
# End of user speech is detected locally (the server's VAD decides the turn) only to measure latency.
END_OF_SPEECH_DELAY = END_SILENCE_BLOCKS * BLOCK / RATE


def _seconds(duration: str | None) -> float:
    """A protobuf Duration in JSON ("2s", "0.5s") as seconds; unknown forms count as no time at all."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", duration or "")
    return float(match.group(1)) if match else 0.0


def _retryable_errors() -> tuple[type[BaseException], ...]:
    import websockets.exceptions
    from google.genai import errors
    # asyncio.TimeoutError is TimeoutError only from Python 3.11 on.
    return (errors.APIError, OSError, websockets.exceptions.WebSocketException, TimeoutError, asyncio.TimeoutError,
            AsyncioCancelledError)


class GeminiBrain:
    name = "gemini"

    def __init__(self, *, config, renderer, events: EventBus, latency: LatencyMeter, keywords: KeywordGestures) -> None:
        self._config = config
        self._renderer = renderer
        self._events = events
        self._latency = latency
        self._keywords = keywords
        self._controls = None  # the hub, given to run(): barge-in and gestures go through it to every sink
        self.state = "connecting"
        self.failure: str | None = None
        self.turns = 0
        self.reconnects = 0
        self.audio_dropped = 0
        self._handle: str | None = None
        self._audio_out: collections.deque[bytes] = collections.deque(maxlen=OUTBOX_AUDIO)
        self._turns_out: collections.deque = collections.deque()
        self._outbox_ready = trio.Event()
        self._say_send, self._say_receive = trio.open_memory_channel(SAY_QUEUE)
        self._say_scope: trio.CancelScope | None = None
        self._resampler = StreamResampler(24000, RATE)
        self._model_turn_open = False  # model content seen since the last turnComplete
        self._discarding = False  # an interrupt cut this turn: drop its remaining audio
        self._user_text = ""
        self._user_source = "unknown"  # who sent the audio being transcribed: user transcripts go back to it
        self._generation = 0  # counts interrupts: a say queued before the latest one is skipped
        self._assistant_text = ""
        self._vad = EndOfUtterance()
        self._client = None

    # -- the brain interface ------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._generation += 1
        while True:
            try:
                self._say_receive.receive_nowait()
            except trio.WouldBlock:
                break
        if self._say_scope is not None:
            self._say_scope.cancel()
        if self._model_turn_open:
            self._discarding = True
        self._resampler.reset()

    def status(self) -> dict:
        return {"brain": self.name, "brain_state": self.state, "brain_failure": self.failure, "turns": self.turns,
                "reconnects": self.reconnects, "audio_dropped": self.audio_dropped}

    def _gesture(self, name: str) -> None:
        self._controls.gesture(name, self.name)

    async def run(self, inputs: trio.MemoryReceiveChannel, controls, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._controls = controls
        self._client = self._make_client()
        async with open_asyncio_loop() as aio, trio.open_nursery() as nursery:
            nursery.start_soon(self._intake, inputs)
            nursery.start_soon(self._say_worker)
            task_status.started()
            await self._sessions(aio)
            # Failed for good: the intake keeps refusing input with a status, the rest of the daemon lives on.

    # -- connection management -------------------------------------------------------------------------

    def _make_client(self):
        from google import genai
        from google.genai import types
        options = {}
        if self._config.gemini_base_url:
            options["base_url"] = self._config.gemini_base_url
        if self._config.gemini_ca_file:
            # Add the CA to the trust the SDK would use anyway (SSL_CERT_FILE, else certifi), never replace it.
            context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
            context.load_verify_locations(cafile=self._config.gemini_ca_file)
            options["async_client_args"] = {"ssl": context}
        # One client for the life of the daemon: dropping clients schedules aclose() on whatever loop runs.
        return genai.Client(api_key=self._config.gemini_api_key, http_options=types.HttpOptions(**options) if options else None)

    def _connect_config(self):
        from google.genai import types
        gestures = self._renderer.gestures  # read per connection: bitHuman learns its agent's gestures late
        return types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            speech_config=types.SpeechConfig(voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=self._config.gemini_voice))),
            system_instruction=types.Content(role="user", parts=[types.Part(text=self._config.instructions)]),
            input_audio_transcription=types.AudioTranscriptionConfig(),
            output_audio_transcription=types.AudioTranscriptionConfig(),
            session_resumption=types.SessionResumptionConfig(handle=self._handle),
            context_window_compression=types.ContextWindowCompressionConfig(sliding_window=types.SlidingWindow()),
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
                name=GESTURE_TOOL,
                description="Make the avatar perform a gesture, e.g. wave hello or give a thumbs up.",
                parameters=types.Schema(type=types.Type.OBJECT, required=["gesture"], properties={
                    "gesture": types.Schema(type=types.Type.STRING, enum=gestures)}))])],
        )

    async def _live(self, config):
        """One Live connection, on the asyncio loop: yields the session first, then every message."""
        async with self._client.aio.live.connect(model=self._config.gemini_model, config=config) as session:
            yield session
            while True:
                async for message in session.receive():
                    yield message

    def _set_state(self, state: str, **extra) -> None:
        self.state = state
        self._events.publish("status", status=f"brain_{state}", brain=self.name, **extra)

    async def _sessions(self, aio) -> None:
        retryable = _retryable_errors()
        attempt = 0
        self._set_state("connecting")
        while True:
            reason = None
            established = False
            try:
                async with aio.open_stream(self._live, self._connect_config()) as messages:
                    session = await messages.receive()
                    established = True
                    attempt = 0
                    self._set_state("connected", resumed=self._handle is not None)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._sender, aio, session, nursery.cancel_scope)
                            reason = await self._receiver(messages)
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
            code = getattr(reason, "code", None)
            if code in FATAL_CLOSE_CODES and not established:
                self.failure = f"{code}: {getattr(reason, 'message', None) or reason}"
                logger.error("Gemini refused the session (%s); not retrying", self.failure)
                self._set_state("failed", reason=self.failure)
                return
            self.reconnects += 1
            if reason == "go_away":
                delay = 0.0
            else:
                attempt += 1
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            logger.warning("Gemini connection ended (%s); reconnecting in %.1f s", reason, delay)
            self._end_model_turn(cut=True)
            # Announced before the wait, so nobody sees "connected" during the backoff.
            self._set_state("reconnecting", attempt=attempt, delay=round(delay, 2))
            await trio.sleep(delay)

    # -- sending -------------------------------------------------------------------------------------

    async def _intake(self, inputs: trio.MemoryReceiveChannel) -> None:
        async with inputs:
            async for message in inputs:
                if isinstance(message, SayText):
                    await self._say_send.send((message.text, self._generation))
                elif self.state == "failed":
                    self._events.publish("error", code="brain_failed", message=f"Gemini is unavailable: {self.failure}")
                elif isinstance(message, UserText):
                    self._queue_text(message.text, message.source)
                elif isinstance(message, UserAudio):
                    self._user_source = message.source
                    self._queue_audio(message.samples)

    def _queue_text(self, text: str, source: str) -> None:
        if len(self._turns_out) >= OUTBOX_TURNS:
            self._events.publish("error", code="busy", message="too many turns waiting for the Gemini connection; try again")
            return
        self.turns += 1
        self._events.publish("transcription", role="user", text=text, is_final=True, source=source)
        self._events.publish("status", status="thinking")
        self._turns_out.append(("text", text))
        self._outbox_ready.set()

    def _queue_audio(self, samples) -> None:
        if len(self._audio_out) == OUTBOX_AUDIO:
            self.audio_dropped += 1
            if self.audio_dropped % 100 == 1:
                self._events.publish("error", code="audio_dropped",
                                     message=f"{self.audio_dropped} audio chunks dropped while Gemini reconnects")
        self._audio_out.append(samples.astype("<i2").tobytes())
        self._outbox_ready.set()
        if self._vad.feed(samples):
            self._latency.user_input_ended(ago=END_OF_SPEECH_DELAY)

    async def _sender(self, aio, session, scope: trio.CancelScope) -> None:
        from google.genai import types
        while True:
            if self._turns_out:
                item = self._turns_out[0]
                kind, payload = item
                if kind == "text":
                    call = functools.partial(session.send_client_content, turns=types.Content(
                        role="user", parts=[types.Part(text=payload)]), turn_complete=True)
                else:
                    call = functools.partial(session.send_tool_response, function_responses=payload)
            elif self._audio_out:
                payload = self._audio_out[0]
                kind = "audio"
                call = functools.partial(session.send_realtime_input,
                                         audio=types.Blob(data=payload, mime_type=f"audio/pcm;rate={RATE}"))
            else:
                self._outbox_ready = trio.Event()
                await self._outbox_ready.wait()
                continue
            try:
                await aio.run(call)
            except _retryable_errors() as exc:
                logger.info("send failed (%s); the item stays queued for the next connection", exc)
                scope.cancel()
                return
            # Sent: only now leave the outbox, so nothing is lost when a connection dies mid-send.
            if kind == "audio":
                # Unless the full outbox already evicted it (maxlen) while it was being sent.
                if self._audio_out and self._audio_out[0] is payload:
                    self._audio_out.popleft()
            else:
                # Remove what was sent, not what is in front now: a tool call answered while this was being
                # sent put its response ahead of it (appendleft), and popleft() would drop that response and
                # send this turn a second time.
                self._turns_out.remove(item)
                if kind == "text":
                    self._latency.user_input_ended()

    # -- receiving -----------------------------------------------------------------------------------

    async def _receiver(self, messages):
        """Handle messages until the connection ends; returns why (an exception, or "go_away").

        After a ``goAway`` the old connection still works for ``time_left``: an answer in progress is
        finished on it (up to :data:`GO_AWAY_MARGIN` before the deadline) rather than cut, then we resume.
        """
        draining = trio.CancelScope()
        try:
            with draining:
                async for message in messages:
                    if message.go_away is not None:
                        time_left = _seconds(message.go_away.time_left)
                        if not self._model_turn_open:
                            logger.info("goAway (time left %s): resuming on a new connection now", message.go_away.time_left)
                            return "go_away"
                        logger.info("goAway (time left %s): finishing this answer first", message.go_away.time_left)
                        draining.deadline = trio.current_time() + max(0.0, time_left - GO_AWAY_MARGIN)
                    update = message.session_resumption_update
                    if update is not None and update.resumable and update.new_handle:
                        self._handle = update.new_handle
                    if message.tool_call is not None:
                        self._answer_tools(message.tool_call)
                    if message.server_content is not None:
                        await self._content(message.server_content)
                    if draining.deadline != math.inf and not self._model_turn_open:
                        return "go_away"
        except _retryable_errors() as exc:
            return exc
        if draining.cancelled_caught:
            return "go_away"
        return "connection ended"

    async def _content(self, content) -> None:
        if content.interrupted:
            logger.info("the model reports barge-in")
            self._controls.interrupt(self.name)
        if content.input_transcription is not None and content.input_transcription.text:
            self._user_text += content.input_transcription.text
            self._events.publish("transcription", role="user", text=self._user_text.strip(), is_final=False,
                                 source=self._user_source)
        if content.model_turn is not None:
            self._finish_user_text()
            self._model_turn_open = True
            for part in content.model_turn.parts or ():
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/pcm"):
                    await self._speak(blob)
        if content.output_transcription is not None and content.output_transcription.text:
            self._finish_user_text()
            self._model_turn_open = True
            delta = content.output_transcription.text
            self._assistant_text += delta
            if not self._discarding:
                self._events.publish("transcription", role="assistant", text=self._assistant_text.strip(), is_final=False)
                keyword_gestures.fire(self._keywords.feed(delta), self._gesture)
        if content.generation_complete:
            self._renderer.flush()
        if content.turn_complete:
            self._end_model_turn(cut=False)

    async def _speak(self, blob) -> None:
        if self._discarding:
            return
        match = re.search(r"rate=(\d+)", blob.mime_type)
        rate = int(match.group(1)) if match else 24000
        if rate != self._resampler.in_rate:
            self._resampler = StreamResampler(rate, RATE)
        self._latency.model_audio()
        samples = self._resampler.process(np.frombuffer(blob.data, dtype="<i2"))
        if not await self._renderer.push_audio(samples):
            self._discarding = True  # interrupted while waiting for room

    def _finish_user_text(self) -> None:
        if self._user_text.strip():
            self.turns += 1
            self._events.publish("transcription", role="user", text=self._user_text.strip(), is_final=True,
                                 source=self._user_source)
            self._events.publish("status", status="thinking")
        self._user_text = ""

    def _end_model_turn(self, *, cut: bool) -> None:
        self._finish_user_text()
        if self._assistant_text.strip():
            self._events.publish("transcription", role="assistant", text=self._assistant_text.strip(), is_final=True,
                                 **({"interrupted": True} if self._discarding or cut else {}))
            keyword_gestures.fire(self._keywords.end(), self._gesture)
        self._assistant_text = ""
        self._model_turn_open = False
        self._discarding = False
        self._resampler.reset()
        self._renderer.flush()

    def _answer_tools(self, tool_call) -> None:
        from google.genai import types
        responses = []
        for call in tool_call.function_calls or ():
            if call.name == GESTURE_TOOL:
                name = (call.args or {}).get("gesture")
                try:
                    self._gesture(str(name))
                    result = {"ok": True, "gesture": name}
                except Refused as exc:
                    result = {"ok": False, "error": str(exc)}
            else:
                result = {"ok": False, "error": f"unknown function {call.name!r}"}
            responses.append(types.FunctionResponse(id=call.id, name=call.name, response=result))
        if responses:
            # Tool responses jump the queue: the model is waiting on them before it speaks.
            self._turns_out.appendleft(("tool", responses))
            self._outbox_ready.set()

    # -- say -----------------------------------------------------------------------------------------

    async def _say_worker(self) -> None:
        async for text, generation in self._say_receive:
            if generation != self._generation:
                continue  # queued before an interrupt
            with trio.CancelScope() as scope:
                self._say_scope = scope
                samples = await voice.synthesize(text)
                self._events.publish("transcription", role="assistant", text=text, is_final=True)
                await voice.play(self._renderer, samples)
            self._say_scope = None

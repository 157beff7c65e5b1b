"""The bitHuman renderer: a thin adapter from avatard's renderer interface to ``bithuman.AsyncBithuman``.

Matched against **bithuman 2.12.9** (PyPI), its 2.x surface ``bithuman.AsyncBithuman`` (the class is
``bithuman._avatar.AsyncAvatar``, compiled; read with ``help()`` and by experiment)::

    runtime = await AsyncBithuman.create(model_path=..., api_secret=..., agent_code=None)
        # authenticates over the network FIRST, then loads the .imx; ~20 more keyword-only options
    await runtime.start()                       # a no-op kept for parity; the producer starts on run()
    runtime.fps                                 # int, the model's own rate (25; expression-2 models: 20)
    runtime.frame_width, runtime.frame_height   # Optional[int]; None until the engine made a frame
    await runtime.push_audio(data: bytes, sample_rate: int, last_chunk: bool = True)  # int16 LE PCM
    await runtime.flush()                       # end of speech (an empty control)
    runtime.interrupt()                         # sync: drop the utterance in flight, keep running
    await runtime.push(VideoControl(action="mini_wave_hello"))   # a gesture ("action"), str or list
    runtime.run()                               # -> AsyncIterator[VideoFrame], endless (idle loop too)
    await runtime.shutdown()                    # full teardown (stop() only stops the producer)

    VideoFrame(bgr_image: (H, W, 3) uint8 | None, audio_chunk: AudioChunk | None, frame_index,
               source_message_id, end_of_speech: bool)        # has_image, rgb_image
    AudioChunk(data: int16 ndarray, sample_rate: int, last_chunk: bool)  # .array, .bytes, .duration

Not in 2.12.9 although older docs show them: ``get_frame_size()``, ``get_expected_fps()``,
``load_data_async()``. Errors: ``BithumanError`` > ``ModelError`` (``ModelNotFoundError``,
``ModelLoadError``, ``ModelSecurityError``), ``TokenError`` (``TokenRequestError``: the auth server could
not be asked; ``AccountStatusError``, ``TokenExpiredError``, ``TokenValidationError``: refused),
``RuntimeNotReadyError``; and the 3.x family ``AvatarError`` > ``InvalidAvatar``, ``NotSupported``,
``NotAuthorised``, ``Failed``. Found by experiment: ``create()`` authenticates *before* it reads the
model, and network failures come out of libessence as a plain ``RuntimeError("auth_authenticate:
curl_easy_perform: Couldn't resolve host name")``. What those errors mean for avatard, and the offline
model-file check that runs before ``create()``, are in :mod:`avatard.renderers.bithuman_errors`.

How it fits avatard:

* The SDK is asyncio-only; it runs on a private loop from :mod:`avatard.core.aio_bridge`, owned by
  :meth:`BithumanRenderer.run`. Two objects, one per thread: :class:`BithumanRenderer` is the trio side
  (the clock, the audio accounting), :class:`~avatard.renderers.bithuman_session.SdkSession` the asyncio
  side (the runtime, the generation the SDK has seen, the frame generator); the bridge is the only way
  from one to the other. Calls that must keep their order with pushes and the frame stream
  (``interrupt``, ``flush``, gestures) go through ``aio.call_soon`` (FIFO, bounded) and return at once,
  as the interface wants.
* The SDK's ``run()`` paces frames itself (its docs speak of a "paced producer"; that cannot be verified
  here without a paid model), but the adapter holds each frame until its slot on our own clock
  (``start + index / fps``) anyway: harmless if the SDK paces, necessary if it does not. An unpaced SDK is
  then held back by the bridge's credits (:data:`STREAM_BUFFER`) and its own output queue.
* Frame size and fps are the model's: fps from ``runtime.fps`` (it must divide 16000), size from the
  first frame. They are known once ``run()`` has started.
* Each emitted Frame carries exactly ``16000 / fps`` samples: the SDK's audio chunks are resampled to
  16 kHz if needed and re-packetized through a small FIFO, so an odd-sized chunk never breaks sync.
* Interrupts: our generation moves at once; frames the SDK produced before it saw the interrupt are
  tagged with the old generation on the asyncio side and shown silent, and a push that had not reached
  the SDK yet is discarded there (``push_audio`` returns False: False means an interrupt, nothing else).
* Backpressure: ``push_audio`` waits while more than :data:`MAX_AHEAD_SECONDS` of audio is ahead of what
  the frames have played (the SDK's own input queue is unbounded).
* Gestures: the SDK does not list a model's actions. With ``--agent-id``, the names come from bitHuman's
  Dynamics API (:mod:`avatard.renderers.dynamics`) and only those are accepted; otherwise the list shows
  the common bitHuman action names the built-in avatar also draws, and any action-shaped name
  (:data:`ACTION_NAME`) is passed through, since each model brings its own actions. Gestures are lossy:
  beyond :data:`MAX_PENDING_GESTURES` on their way to the SDK they are dropped and counted
  (``gestures_dropped``), so a flood cannot fill the bridge that interrupts need.
* Failures: :func:`~avatard.renderers.bithuman_errors.startup_error` turns an SDK error at start-up into
  ConfigError (the model: exit 2), RendererError (a refused secret: exit 1) or :class:`RendererFailed`
  (unreachable after retries, or anything else: the built-in renderer takes over, see
  :mod:`avatard.renderers.fallback`). Mid-session, every failure -- the stream raising or ending, no frame
  for :data:`STALL_TIMEOUT`, an SDK call (push, flush, interrupt, gesture) raising, the bridge refusing an
  interrupt or flush -- is RendererFailed: ``run()`` raises it, and so does ``push_audio`` (the push that
  hit it and every later one), never False. Messages are one line and never contain the secret;
  tracebacks go to the DEBUG log only.
"""

from __future__ import annotations

import functools
import logging
import re

import cv2
import numpy as np
import trio

from ..constants import GESTURES, RATE
from ..core.aio_bridge import open_asyncio_loop
from ..core.audio import StreamResampler
from ..core.events import EventBus
from ..core.frame_clock import FrameClock
from ..core.latency import LatencyMeter
from ..core.messages import Frame, FrameAudio
from ..errors import AsyncioCancelledError, ConfigError, RendererError, RendererFailed, UnknownGesture
from .animator import mouth_target
from .bithuman_errors import check_model_file, classify, describe, startup_error
from .bithuman_session import SdkSession
from .fallback import FallbackRenderer
from .report import renderer_status
from .speaking import SpeakingTracker, publish_frame
from .speech_buffer import MAX_AHEAD_SECONDS

logger = logging.getLogger("avatard.bithuman")

# Authenticate and load a model of a few hundred MB on a slow edge CPU; past this the start has failed.
CREATE_TIMEOUT = 120.0
# The engine warms up on its first frame; a minute-long silence there is a broken install, not a slow one.
FIRST_FRAME_TIMEOUT = 30.0
# The SDK emits frames while idle too, so a gap this long (125 frames at 25 fps) means a stuck engine:
# fall back rather than freeze the picture.
STALL_TIMEOUT = 5.0
# Waits before the 2nd and 3rd attempt when the licence server cannot be reached at start-up (a box that
# boots before its network is up); then the built-in renderer takes over.
STARTUP_RETRY_DELAYS = (1.0, 3.0)
# SDK frames pulled ahead of our clock. Small on purpose: after an interrupt, frames already pulled are
# shown silent, so this bounds the stale mouth movement (3 frames = 120 ms at 25 fps).
STREAM_BUFFER = 3
# Audio the SDK delivered ahead of the frames that carry it, in frames; beyond this it is dropped (counted
# in audio_dropped) to keep lip sync -- the picture is the clock.
MAX_FIFO_FRAMES = 3
# Shutting the SDK down (producer, runtime, heartbeat) when the daemon stops: well inside its 2 s promise.
CLOSE_TIMEOUT = 1.0
# Gestures sent to the SDK and not yet done; more are dropped and counted (gestures_dropped). A person
# clicking never has more than one or two in flight; a browser spamming the gesture message must not fill
# the bridge's call_soon() bound (aio_bridge.MAX_PENDING_CALLS), which interrupts and flushes rely on.
MAX_PENDING_GESTURES = 4
# What a gesture ("action") name may look like when the model's list is unknown.
ACTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _import_sdk():
    try:
        import bithuman
    except ImportError as exc:
        raise RendererError(f"the bitHuman renderer needs the bithuman package (pip install bithuman): {exc}") from None
    return bithuman


def make_bithuman_renderer(config, events: EventBus, latency: LatencyMeter, *, sdk=None) -> FallbackRenderer:
    """The renderer for ``--renderer bithuman``: the adapter, with the built-in renderer as its stand-by."""
    from .builtin import BuiltinRenderer

    check_model_file(config.model)
    primary = BithumanRenderer(model_path=config.model, api_secret=config.api_secret, agent_code=config.agent_id,
                               events=events, latency=latency, sdk=sdk)

    def make_fallback(geometry):
        width, height, fps = geometry or (config.width, config.height, config.fps)
        return BuiltinRenderer(width=width, height=height, fps=fps, events=events, latency=latency)

    return FallbackRenderer(primary, make_fallback, events)


class BithumanRenderer:
    """The renderer interface over ``AsyncBithuman``. ``sdk`` is the module to use (default: ``bithuman``);
    it needs ``AsyncBithuman`` and ``VideoControl`` -- the seam the tests use for a stand-in."""

    name = "bithuman"

    def __init__(self, *, model_path: str, api_secret: str | None, events: EventBus, latency: LatencyMeter,
                 agent_code: str | None = None, sdk=None, retry_delays=STARTUP_RETRY_DELAYS,
                 stall_timeout: float = STALL_TIMEOUT, max_ahead_seconds: float = MAX_AHEAD_SECONDS) -> None:
        self._model_path = model_path
        self._api_secret = api_secret
        self._agent_code = agent_code
        self._sdk = sdk
        self._events = events
        self._latency = latency
        self._retry_delays = tuple(retry_delays)
        self._stall_timeout = stall_timeout
        self._max_ahead = int(max_ahead_seconds * RATE)
        # The model's, known once run() has started.
        self.width: int | None = None
        self.height: int | None = None
        self.fps: int | None = None
        self.samples_per_frame: int | None = None
        self.started = False
        self._speaking = SpeakingTracker(events, latency)
        self.frames_rendered = 0
        self.frames_dropped = 0  # the fan-out did not take a frame in time
        self._ticks: FrameClock | None = None
        self.audio_dropped = 0  # samples beyond MAX_FIFO_FRAMES, dropped to keep sync
        self.gestures_dropped = 0  # beyond MAX_PENDING_GESTURES in flight
        self.last_frame: Frame | None = None
        self._gestures = sorted(GESTURES)
        self._gestures_from_agent = False
        # The trio side. The asyncio side is self._session, reached only through the bridge (self._aio).
        self._aio = None
        self._session: SdkSession | None = None
        self._ready = trio.Event()  # set once the runtime exists, or run() has ended
        self._ended = trio.Event()  # run() has ended
        self._failure: str | None = None  # why the SDK failed (then run() raises RendererFailed with it)
        self._serving = trio.CancelScope()  # around the clock; _fail() cancels it
        self._gestures_in_flight = 0
        self._generation = 0
        self._pushed = 0  # samples handed to the SDK ...
        self._played = 0  # ... and samples that came back in frames; the difference is what is ahead
        self._space = trio.Event()
        self._flushed = True
        self._fifo = np.zeros(0, dtype=np.int16)
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending_gesture: str | None = None

    # -- the renderer interface ---------------------------------------------------------------------

    @property
    def ticks_skipped(self) -> int:
        return self._ticks.skipped if self._ticks else 0

    @property
    def speaking(self) -> bool:
        return self._speaking.speaking

    @property
    def gestures(self) -> list[str]:
        return list(self._gestures)

    @property
    def generation(self) -> int:
        return self._generation

    def status(self) -> dict:
        return renderer_status(self, audio_dropped=self.audio_dropped, gestures_dropped=self.gestures_dropped)

    async def push_audio(self, samples: np.ndarray) -> bool:
        """Queue speech (int16, 16 kHz mono). Waits when far ahead; False if an interrupt discarded it.

        Raises RendererFailed if the SDK refused it or has failed otherwise (then run() raises it too).
        """
        generation = self._generation
        samples = np.asarray(samples, dtype=np.int16)
        self._flushed = False
        await self._ready.wait()
        # A chunk larger than the whole budget still goes when nothing is ahead, or it could never go.
        while (not self._dead and generation == self._generation and self._pushed > self._played
               and self._pushed - self._played + len(samples) > self._max_ahead):
            self._space = trio.Event() if self._space.is_set() else self._space
            await self._space.wait()
        self._raise_if_failed()
        if self._dead or generation != self._generation:
            return False
        self._pushed += len(samples)
        try:
            pushed = await self._aio.run(self._session.push, generation, samples.astype("<i2").tobytes())
        except (trio.ClosedResourceError, AsyncioCancelledError):
            await self._ended.wait()  # the loop is closing, so run() is ending: learn why
            self._raise_if_failed()
            return False  # the daemon is stopping
        except Exception as exc:
            logger.debug("bitHuman push_audio failed", exc_info=True)
            self._fail(f"bitHuman refused audio: {describe(exc, self._api_secret)}")
            self._raise_if_failed()
        return pushed and generation == self._generation

    def flush(self) -> None:
        """End of the turn: the SDK closes the utterance; once it has played, the avatar listens again."""
        self._flushed = True
        self._call("flush", self._generation)

    def interrupt(self) -> int:
        """Stop speaking now: the next frame is silent. Returns the samples discarded (as far as known)."""
        dropped = max(0, self._pushed - self._played) + len(self._fifo)
        self._generation += 1
        self._pushed = self._played
        self._fifo = np.zeros(0, dtype=np.int16)
        for resampler in self._resamplers.values():
            resampler.reset()
        self._flushed = True
        self._space.set()
        self._call("interrupt", self._generation)
        if self._ticks is not None:
            self._ticks.rephase()  # the next frame (silent: the FIFO is empty) goes out now
        return dropped

    def gesture(self, name: str) -> None:
        """Play a bitHuman action; raises ``UnknownGesture`` (a ValueError) listing the known ones.

        Lossy: with MAX_PENDING_GESTURES still on their way to the SDK, the gesture is dropped and counted.
        """
        if self._gestures_from_agent and name not in self._gestures:
            raise UnknownGesture(name, self._gestures)
        if not ACTION_NAME.fullmatch(name):
            raise UnknownGesture(name, self._gestures, why="invalid gesture name")
        if self._gestures_in_flight >= MAX_PENDING_GESTURES:
            self.gestures_dropped += 1
            logger.debug("gesture %r dropped: %d still on their way to bitHuman", name, self._gestures_in_flight)
            return
        if self._call("gesture", name):
            self._gestures_in_flight += 1
            self._pending_gesture = name

    async def run(self, frames: trio.MemorySendChannel, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start the SDK, then be the clock: the SDK's frames at fps, forever.

        Raises ConfigError / RendererError for what the operator must fix, RendererFailed otherwise.
        """
        sdk = self._sdk if self._sdk is not None else _import_sdk()
        try:
            async with frames, open_asyncio_loop(shutdown_timeout=CLOSE_TIMEOUT) as aio:
                if self._agent_code and self._api_secret:
                    await self._fetch_gestures()
                runtime = await self._create(aio, sdk)
                try:
                    with self._serving:  # cancelled by _fail(): an SDK call failed
                        await self._serve(aio, sdk, runtime, frames, task_status)
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                        try:
                            await aio.run(runtime.shutdown)
                        except Exception:
                            logger.debug("bitHuman shutdown failed", exc_info=True)
                raise RendererFailed(self._failure or "bitHuman stopped")  # _serve() never returns by itself
        except (ConfigError, RendererError) as exc:  # the verdicts made above (RendererFailed is a RendererError)
            self._failure = self._failure or str(exc)
            raise
        except Exception as exc:  # anything else (an SDK property, a bug here): fall back, one line, no traceback
            logger.debug("bitHuman renderer failed", exc_info=True)
            self._failure = self._failure or f"bitHuman renderer failed: {describe(exc, self._api_secret)}"
            raise RendererFailed(self._failure) from None
        finally:
            self._ended.set()
            self._ready.set()
            self._space.set()

    @property
    def _dead(self) -> bool:
        return self._ended.is_set()

    def _fail(self, reason: str) -> None:
        """An SDK call failed mid-session: stop serving; run() raises RendererFailed (the first reason wins)."""
        if self._failure is None:
            self._failure = reason
        self._serving.cancel()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise RendererFailed(self._failure)

    # -- start-up -------------------------------------------------------------------------------------

    async def _fetch_gestures(self) -> None:
        from .dynamics import fetch_gestures
        names = await fetch_gestures(self._agent_code, self._api_secret)
        if names:
            self._gestures = names
            self._gestures_from_agent = True

    async def _create(self, aio, sdk):
        options = dict(model_path=self._model_path, api_secret=self._api_secret)
        if self._agent_code:
            options["agent_code"] = self._agent_code
        delays = list(self._retry_delays)
        while True:
            try:
                with trio.fail_after(CREATE_TIMEOUT):
                    runtime = await aio.run(functools.partial(sdk.AsyncBithuman.create, **options))
                await aio.run(runtime.start)
                return runtime
            except trio.TooSlowError:
                raise RendererFailed(f"bitHuman did not load {self._model_path} within {CREATE_TIMEOUT:.0f} s") from None
            except Exception as exc:
                logger.debug("bitHuman create failed", exc_info=True)
                if classify(exc) == "unreachable" and delays:
                    delay = delays.pop(0)
                    # INFO: the one warning is the fallback's, if it comes to that.
                    logger.info("cannot reach bitHuman (%s); retrying in %.0f s", describe(exc, self._api_secret), delay)
                    await trio.sleep(delay)
                    continue
                raise startup_error(exc, model_path=self._model_path, secret=self._api_secret) from None

    async def _serve(self, aio, sdk, runtime, frames: trio.MemorySendChannel, task_status) -> None:
        fps = int(runtime.fps)
        if not 1 <= fps <= 60 or RATE % fps:
            raise ConfigError(f"--model: {self._model_path} renders at {fps} fps; avatard needs a rate that divides {RATE} (e.g. 20, 25)")
        self.fps, self.samples_per_frame = fps, RATE // fps
        # Interrupts before now had nothing to reach: the session starts at the current generation.
        self._aio, self._session = aio, SdkSession(runtime, sdk.VideoControl, generation=self._generation)
        self._ready.set()  # pushes may go now; the SDK queues them until its producer runs
        async with aio.open_stream(self._session.frames, max_buffer=STREAM_BUFFER) as stream:
            tag, first = await self._next(stream, FIRST_FRAME_TIMEOUT)
            while first.bgr_image is None:  # a control-only frame: no size to learn yet
                self._take_audio(tag, first)
                tag, first = await self._next(stream, FIRST_FRAME_TIMEOUT)
            self.height, self.width = first.bgr_image.shape[:2]
            logger.info("bitHuman model %s: %dx%d @ %d fps", self._model_path, self.width, self.height, fps)
            self.started = True
            task_status.started()
            await self._clock(stream, tag, first, frames)

    # -- the clock ------------------------------------------------------------------------------------

    async def _next(self, stream, timeout: float):
        """The next ``(generation tag, VideoFrame)``; every way the SDK can fail becomes one error."""
        try:
            with trio.fail_after(timeout):
                return await stream.receive()
        except trio.TooSlowError:
            raise RendererFailed(f"bitHuman sent no frame for {timeout:g} s") from None
        except trio.EndOfChannel:
            raise RendererFailed("bitHuman's frame stream ended") from None
        except Exception as exc:
            logger.debug("bitHuman frame stream failed", exc_info=True)
            if not self.started:
                raise startup_error(exc, model_path=self._model_path, secret=self._api_secret) from None
            raise RendererFailed(f"bitHuman stopped: {describe(exc, self._api_secret)}") from None

    async def _clock(self, stream, tag: int, video_frame, frames: trio.MemorySendChannel) -> None:
        self._ticks = FrameClock(self.fps, "bitHuman renderer")
        while True:
            if video_frame.bgr_image is None:
                self._take_audio(tag, video_frame)
            else:
                if self._starts_speech(tag, video_frame):
                    self._ticks.rephase()  # the answer's first frame goes out now, not at the next tick
                frame = self._render(tag, video_frame, *await self._ticks.next_tick())
                # The SDK hands picture and sound over together: the audio goes first only by a hop.
                for item in (FrameAudio.of(frame), frame):
                    try:
                        frames.send_nowait(item)
                    except trio.WouldBlock:
                        self.frames_dropped += 1  # as in the built-in renderer: the clock never waits
            tag, video_frame = await self._next(stream, self._stall_timeout)

    def _starts_speech(self, tag: int, video_frame) -> bool:
        """Whether this SDK frame brings back the first speech of a turn while the avatar is idle.

        The re-phase can only happen here, once the SDK has turned the pushed audio into a frame: how long
        the SDK takes for that is its own (the adapter pushes at once and cannot see inside it).
        """
        chunk = video_frame.audio_chunk
        return (not self.speaking and tag >= self._generation and self._pushed > self._played
                and chunk is not None and bool(np.any(chunk.data)))

    def _take_audio(self, tag: int, video_frame) -> None:
        """Move the frame's audio (16 kHz) into the FIFO if it is current speech."""
        if tag < self._generation:
            return  # produced before an interrupt the SDK had not seen yet: silent
        chunk = video_frame.audio_chunk
        end = bool(video_frame.end_of_speech)  # not chunk.last_chunk: AudioChunk defaults it to True
        if chunk is not None:
            samples = np.asarray(chunk.data, dtype=np.int16).reshape(-1)
            rate = int(chunk.sample_rate)
            if rate != RATE:
                resampler = self._resamplers.setdefault(rate, StreamResampler(rate, RATE))
                samples = resampler.process(samples, last=end)
                if end:  # the resampler's tail is out; the next utterance starts clean
                    resampler.reset()
            # Silent chunks while idle are not speech; silent stretches inside speech we pushed are.
            if samples.size and (self._pushed > self._played or np.any(samples)):
                self._fifo = np.concatenate((self._fifo, samples)) if self._fifo.size else samples
        if end and self._flushed:
            # The SDK has returned all of this utterance: forget what it swallowed or rounded, so the
            # turn ends when the FIFO is empty rather than IDLE_AFTER_FRAMES later.
            self._pushed = min(self._pushed, self._played + len(self._fifo))

    def _render(self, tag: int, video_frame, index: int, timestamp: float) -> Frame:
        spf = self.samples_per_frame
        self._take_audio(tag, video_frame)
        excess = len(self._fifo) - (1 + MAX_FIFO_FRAMES) * spf
        if excess > 0:
            self._fifo = self._fifo[excess:]
            self.audio_dropped += excess
        real = min(spf, len(self._fifo))
        audio = np.zeros(spf, dtype=np.int16)
        audio[:real] = self._fifo[:real]
        self._fifo = self._fifo[real:]
        if real:
            self._played += real
            self._space.set()
        if self._speaking.frame(real, turn_over=self._flushed and self._played >= self._pushed) and self._flushed:
            # Flushed and everything pushed has come back (the SDK may pause between chunks of one
            # turn, hence "come back"): nothing is ahead any more; forget the drift between the two.
            self._pushed = self._played
            self._space.set()
        image = video_frame.bgr_image
        if image.shape[:2] != (self.height, self.width):  # keep sinks' geometry fixed, whatever the SDK does
            image = cv2.resize(image, (self.width, self.height))
        image = np.ascontiguousarray(image, dtype=np.uint8)
        gesture, self._pending_gesture = self._pending_gesture, None
        mouth = mouth_target(audio)
        frame = Frame(index=index, timestamp=timestamp, image=image, audio=audio, speaking=self.speaking,
                      generation=self._generation, mouth=mouth, gesture=gesture)
        self.frames_rendered += 1
        self.last_frame = frame
        publish_frame(self._events, frame)
        return frame

    # -- calls into the SDK's loop ------------------------------------------------------------------

    def _call(self, what: str, *args) -> bool:
        """Schedule ``session.<what>(*args)`` on the SDK's loop, FIFO with pushes, and return at once.

        False if it was not scheduled: no session yet, the renderer has ended or failed, or the bridge is
        full. A full bridge means the SDK's loop is not running our calls any more (gestures are capped far
        below the bound): an interrupt or flush that cannot arrive is a failure, so fall back.
        """
        if self._session is None or self._dead or self._failure is not None:
            return False
        try:
            self._aio.call_soon(getattr(self._session, what), *args, on_done=functools.partial(self._call_done, what))
        except trio.ClosedResourceError:
            return False  # the loop is closing: run() is ending
        except trio.WouldBlock:
            self._fail(f"bitHuman is not taking calls: {what} refused with {self._aio.pending_calls} pending")
            return False
        return True

    def _call_done(self, what: str, result) -> None:  # trio thread, from the bridge
        if what == "gesture":
            self._gestures_in_flight -= 1
        error = getattr(result, "error", None)
        if error is None or isinstance(error, AsyncioCancelledError):  # cancelled: the loop is closing
            return
        logger.debug("bitHuman %s failed", what, exc_info=(type(error), error, error.__traceback__))
        self._fail(f"bitHuman {what} failed: {describe(error, self._api_secret)}")

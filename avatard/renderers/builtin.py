"""The built-in renderer: a drawn face lip-synced to the speech it is fed, and the daemon's clock.

Shaped like bitHuman's ``AsyncBithuman`` so the two are interchangeable: ``push_audio`` 16 kHz int16,
``flush`` at the end of a turn, ``interrupt``, ``gesture``, and ``run`` emitting frames. Each frame
carries the image and exactly ``16000/fps`` samples of the audio that plays during it, so picture and
sound are in sync by construction: the mouth of a frame is computed from that frame's own samples.
"""

from __future__ import annotations

import logging

import numpy as np
import trio

from ..constants import GESTURES, RATE
from ..core.events import EventBus
from ..core.fanout import silence_if_stale
from ..core.frame_clock import FrameClock
from ..core.latency import LatencyMeter
from ..core.messages import Frame, FrameAudio
from . import face
from .animator import Animator
from .report import renderer_status
from .speaking import SpeakingTracker, publish_frame
from .speech_buffer import SpeechBuffer

logger = logging.getLogger("avatard.renderer")

# Scheduler passes the clock yields before drawing a frame, so that what is due reaches its socket first.
# A frame's audio takes five: the fan-out, the WebSocket audio pump, the client's sender waking, the
# stream lock inside trio-websocket's send (trio.Lock.acquire yields once), then the send itself; TLS adds
# SSLStream's own send lock; an interrupt's status takes as many through the event pump. With four, the
# audio's send() ran only after the drawing (measured: tick -> send p50 4.8 ms with 4 yields, 1.3 ms
# with 8). A pass with nothing to run costs microseconds.
YIELDS_BEFORE_DRAW = 8



class BuiltinRenderer:
    name = "builtin"

    def __init__(self, *, width: int, height: int, fps: int, events: EventBus, latency: LatencyMeter, seed: int = 0) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.samples_per_frame = RATE // fps
        self._events = events
        self._latency = latency
        self._animator = Animator(fps, seed=seed)
        self._speech = SpeechBuffer()
        self._flushed = True
        self._starting = False  # speech pushed while idle, not yet a whole frame: re-phase once it is
        self._lead_in_at: float | None = None  # trio time: a start still short of a frame goes out led in then
        self._first_out: trio.Event | None = None  # a turn's first frame: set once its audio has gone out
        self._speaking = SpeakingTracker(events, latency)
        self.frames_rendered = 0
        self.frames_dropped = 0  # the fan-out did not take a frame in time
        self.pictures_reused = 0  # idle frames that showed the last picture again: their follower was due at once
        self._clock: FrameClock | None = None
        self.last_frame: Frame | None = None

    # -- the AsyncBithuman-shaped surface --------------------------------------------------------

    @property
    def gestures(self) -> list[str]:
        return sorted(GESTURES)

    @property
    def ticks_skipped(self) -> int:
        return self._clock.skipped if self._clock else 0

    @property
    def speaking(self) -> bool:
        return self._speaking.speaking

    @property
    def generation(self) -> int:
        return self._speech.generation

    def status(self) -> dict:
        return renderer_status(self, clock_rephased=self._clock.rephased if self._clock else 0,
                               pictures_reused=self.pictures_reused)

    async def push_audio(self, samples: np.ndarray) -> bool:
        """Queue speech (int16, 16 kHz mono). Waits when far ahead; False if an interrupt discarded it.

        Speech that starts while the avatar is idle re-phases the clock: its first frame goes out as soon
        as a whole frame of it is queued, instead of at the next tick of an arbitrary grid. (A frame made
        from a first chunk shorter than a frame -- Gemini's first 40 ms at 24 kHz come out of the resampler
        as 37.1 -- would be padded with silence in the middle of the first word.) A start still short of a frame
        waits for the rest at most as long as the silence that would lead it in instead (:meth:`_lead_in`).
        """
        self._starting = self._starting or (not self.speaking and self._speech.pending == 0)
        self._flushed = False
        queued = await self._speech.put(samples)
        if not (queued and self._starting and self._clock is not None):
            return queued
        if self._speech.pending < self.samples_per_frame:
            self._lead_in()
        else:
            self._started()
            self._latency.speech_queued()
            self._first_out = first_out = trio.Event()
            self._clock.rephase()
            # The producer waits until the first frame's audio has gone out. Gemini's answer arrives as a
            # burst: while the brain took message after message, the asyncio thread parsing them held the
            # GIL against the trio thread sending that first frame (tick -> client p50 ~4 ms with the
            # Gemini brain against ~1.5 with the offline one). An interrupt or the next frame ends the wait.
            await first_out.wait()
        return queued

    def flush(self) -> None:
        """End of the turn: once the queued speech has played, the avatar goes back to listening."""
        self._flushed = True

    def interrupt(self) -> int:
        """Stop speaking now: the next frame is silent. Returns the samples discarded."""
        dropped = self._speech.clear()
        self._animator.interrupt()
        self._flushed = True
        self._started()
        self._release_producer()
        if self._clock is not None:
            self._clock.rephase()  # the silent, closed-mouth frame goes out now, not at the next tick
        return dropped

    def gesture(self, name: str) -> None:
        """Start a gesture animation; raises ``UnknownGesture`` (a ValueError) listing the known ones."""
        self._animator.start_gesture(name)

    async def run(self, frames: trio.MemorySendChannel, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The clock: one frame every 1/fps seconds, forever; never waits for a consumer.

        ``started()`` once the first frame exists, so a snapshot right after start-up has one.
        """
        self._clock = FrameClock(self.fps, "renderer")
        async with frames:
            while True:
                frame = await self._render(frames, *await self._clock.next_tick())
                if self.frames_rendered == 1:
                    task_status.started()
                self._hand_out(frames, frame)

    def _hand_out(self, frames: trio.MemorySendChannel, item: Frame | FrameAudio) -> None:
        try:
            frames.send_nowait(item)
        except trio.WouldBlock:
            # The fan-out is an in-process task that only copies references; if it is this far
            # behind, holding the clock would make every sink late. Drop and count instead.
            self.frames_dropped += 1

    # -- internals --------------------------------------------------------------------------------

    def _started(self) -> None:
        """The start is over (its first frame is due or out, or an interrupt cut it): no re-phase or lead-in pending."""
        self._starting, self._lead_in_at = False, None

    def _lead_in(self) -> None:
        """Speech has begun but is short of a frame: Gemini's first 40 ms chunk gives 37.1 ms out of the resampler
        (the rest is its filter's 2.9 ms look-ahead, out with the next chunk). From a burst the next chunk is there
        within a few ms; from a model speaking in real time, 40 ms later. Wait for it at most as long as the
        silence that would otherwise lead the word in (ski rental: never worse than twice the better choice
        made in hindsight), then send the first frame with that lead-in at its head."""
        if self._lead_in_at is None:
            missing = (self.samples_per_frame - self._speech.pending) / RATE
            self._lead_in_at = trio.current_time() + missing
            self._clock.rephase(at=self._lead_in_at)

    def _take(self) -> tuple[np.ndarray, int]:
        """This frame's samples: a whole frame of speech (or silence); a start short of a frame only once its
        wait is over, led in by silence, and until then nothing of it (never a gap inside the word)."""
        if self._starting and 0 < self._speech.pending < self.samples_per_frame:
            if self._lead_in_at is not None and trio.current_time() >= self._lead_in_at:
                return self._speech.take_led_in(self.samples_per_frame)
            return np.zeros(self.samples_per_frame, dtype=np.int16), 0
        return self._speech.take(self.samples_per_frame)

    def _release_producer(self) -> None:
        if self._first_out is not None:
            self._first_out.set()
            self._first_out = None

    async def _render(self, frames: trio.MemorySendChannel, index: int, timestamp: float) -> Frame:
        generation = self._speech.generation
        audio, real = self._take()
        if real:  # speech has started (on the grid if a tick came first)
            self._started()
        self._speaking.frame(real, turn_over=self._flushed)
        self._hand_out(frames, FrameAudio(index=index, timestamp=timestamp, audio=audio, speaking=self.speaking,
                                          generation=generation))
        pose = self._animator.next_pose(audio)
        # Drawing is the one costly step (~1.4 ms at 512x512 on a quiet box, more while another thread holds
        # the GIL) and it holds the trio thread. What is already due goes first: this frame's audio and an
        # interrupt's status are a few task steps from the socket (fan-out, audio pump or event pump, client
        # sender, trio-websocket), so the clock lets them run before it draws. Rejected: drawing in a worker
        # thread -- measured twice (bench/latency.py): the GIL ping-pong with the drawing thread made the
        # first word later (p95 16.5 -> 21.8 ms), and the hand-off cost ~2 % of a core at 25 fps.
        for _ in range(YIELDS_BEFORE_DRAW):
            await trio.lowlevel.checkpoint()
        self._release_producer()
        last = self.last_frame
        if not real and last is not None and self._clock.due_now:
            # Speech (or an interrupt) came while this silent frame waited to be drawn: the re-phased frame
            # follows at once and replaces its picture within a millisecond or two, so it shows the last
            # picture again rather than hold the trio thread for a draw (~1.4 ms on a quiet box, ~5 while
            # the SDK parses an answer's burst on the asyncio thread) in front of the answer's first frame.
            image, mouth, gesture = last.image, last.mouth, last.gesture
            self.pictures_reused += 1
        else:
            image, mouth, gesture = face.draw(pose, self.width, self.height), pose.mouth, pose.gesture
        frame = Frame(index=index, timestamp=timestamp, image=image, audio=audio, speaking=self.speaking,
                      generation=generation, mouth=mouth, gesture=gesture)
        # Interrupted while yielding: report (and send) it as the sinks will play it, silent.
        frame = silence_if_stale(frame, self._speech.generation)
        self.frames_rendered += 1
        self.last_frame = frame
        publish_frame(self._events, frame)
        return frame

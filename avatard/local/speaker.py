"""Local mode's speaker: the renderer's frame audio played through a PortAudio output stream.

The renderer is the clock and the sound card has its own; between them sits a small ring of samples.
A fan-out sink task writes each frame's audio into the ring; PortAudio's callback, on its own thread,
reads one block (10 ms) at a time. Neither side ever waits for the other:

- the callback finds too little in the ring (an underrun): it plays what there is, then silence, and
  waits for :data:`PREFILL_SECONDS` of audio before playing again, so one late frame costs one gap
  rather than a crackle of tiny ones;
- the writer finds the ring full (the card stalled, e.g. a sound server starting up): the oldest
  samples are dropped, which keeps the speaker at most :data:`RING_SECONDS` behind the picture;
- the ring stays fuller than it needs to (after such a stall, or as the two clocks drift apart): the
  callback watches the lowest fill over each :data:`TRIM_WINDOW_SECONDS` and drops what is above
  :data:`MARGIN_SECONDS`. A jitter buffer that only ever grew would leave the voice late for good.

- speech arrives while the ring holds only silence (the avatar was idle): the queued silence beyond
  :data:`MARGIN_SECONDS` is skipped, so the first word plays within one block plus the device's buffer
  instead of behind idle frames. (The renderer re-phases its clock when speech starts, so the speech
  frame comes early; without the skip that frame's extra 40 ms would pile up in the ring.)

All of these are counted. An interrupt empties the ring synchronously (the hub calls ``flush``), so the
very next callback plays silence: speech stops within one block plus the device's own buffer.

With a microphone in use, every block the callback hands the card also goes to the echo canceller's
:class:`~avatard.local.echo_canceller.ReferenceTap`: the exact signal played is its reference.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np
import trio

from ..constants import RATE
from ..core.audio import StreamResampler
from ..errors import ConfigError
from . import devices
from .echo_canceller import ReferenceTap

logger = logging.getLogger("avatard.speaker")

BLOCK_SECONDS = 0.01  # one callback's worth: an interrupt reaches the card within one block + its latency
# One frame (at 25 fps) must be queued before playback starts or resumes: frames arrive 40 ms apart
# while the card takes 10 ms blocks, so with less the ring runs dry between frames on every jitter.
PREFILL_SECONDS = 0.04
# Four frames of room: absorbs a burst after a scheduling hiccup; beyond it the speaker would lag the
# picture noticeably, so the oldest audio goes instead.
RING_SECONDS = 0.16
# What the ring keeps at its lowest point, against frames arriving late: 20 ms of scheduling jitter.
MARGIN_SECONDS = 0.02
# How long the lowest fill is watched before the excess is dropped: long enough that one early frame
# does not count as excess, short enough that a stall's backlog is gone within a sentence.
TRIM_WINDOW_SECONDS = 1.0
# Frames waiting for the writer task; it only copies samples, so falling behind means the process is
# starved and dropping (counted by the fan-out) beats playing stale audio late.
SINK_BUFFER = 4
# Interrupts whose time to the next played block status keeps (the oldest goes first).
INTERRUPTS_KEPT = 16
# PortAudio's suggested output latency: three blocks. The callback is Python and competes for the GIL
# with drawing and encoding, so some slack rides out a busy moment; it is also what still plays after
# an interrupt. Measured through PulseAudio's ALSA plugin (PortAudio's DAC times, 10 ms blocks): asking
# 40 ms made PulseAudio take blocks in pairs every 20 ms, so an interrupt waited up to 20 ms for the next
# callback (p95 14 ms beyond the device's own delay) and the card was 64 ms behind; 30 ms gives a callback
# every 10.0 ms (p95 10.1) and 40 ms behind, so an interrupt is silent at the DAC within 9.5 ms (p95) of
# the device's delay. Asking less gains nothing there (PulseAudio's floor) and only thins the slack.
DEVICE_LATENCY = 0.03


class SampleRing:
    """Bounded FIFO of int16 samples between a trio task (writer) and PortAudio's thread (reader)."""

    def __init__(self, capacity: int, prefill: int, margin: int, trim_window: int) -> None:
        self._buffer = np.zeros(capacity, dtype=np.int16)
        self._start = 0
        self._count = 0
        self._prefill = prefill
        self._primed = False
        self._margin = margin
        self._trim_window = trim_window  # in samples read
        self._watched = 0
        self._lowest = capacity
        self._lock = threading.Lock()
        self.underruns = 0  # reads that found too little and padded with silence
        self.overflows = 0  # writes that had to drop old samples
        self.dropped_samples = 0
        self.trimmed_samples = 0  # dropped because the ring stayed fuller than the margin
        self.skipped_silence = 0  # queued silence dropped when speech started
        self._written = 0  # samples ever written; those taken out since (read, trimmed, dropped) = written - count
        self._speech_end = 0  # self._written just after the last non-silent sample

    def write(self, samples: np.ndarray) -> None:
        capacity = len(self._buffer)
        with self._lock:
            if samples.any() and self._written - self._count >= self._speech_end:
                # Only silence queued: skip it down to the margin so the first word is not behind it.
                skip = max(0, self._count - self._margin)
                self._drop_oldest(skip)
                self.skipped_silence += skip
            excess = self._count + len(samples) - capacity
            if excess > 0:
                self.overflows += 1
                self.dropped_samples += excess
                samples = samples[max(0, len(samples) - capacity):]
                self._drop_oldest(self._count + len(samples) - capacity)
            end = (self._start + self._count) % capacity
            first = min(len(samples), capacity - end)
            self._buffer[end:end + first] = samples[:first]
            self._buffer[:len(samples) - first] = samples[first:]
            self._count += len(samples)
            self._written += len(samples)
            voiced = np.flatnonzero(samples)
            if voiced.size:
                self._speech_end = self._written - (len(samples) - 1 - int(voiced[-1]))

    def _drop_oldest(self, n: int) -> None:
        self._start = (self._start + n) % len(self._buffer)
        self._count -= n

    def read_into(self, out: np.ndarray) -> None:
        """Fill ``out`` with the oldest samples, padding with silence; never blocks for long."""
        n = len(out)
        capacity = len(self._buffer)
        with self._lock:
            if not self._primed:
                if self._count < self._prefill:
                    out[:] = 0
                    return
                self._primed = True
            take = min(n, self._count)
            first = min(take, capacity - self._start)
            out[:first] = self._buffer[self._start:self._start + first]
            out[first:take] = self._buffer[:take - first]
            out[take:] = 0
            self._start = (self._start + take) % capacity
            self._count -= take
            if take < n:
                self.underruns += 1
                self._primed = False
                self._watched, self._lowest = 0, capacity
                return
            self._lowest = min(self._lowest, self._count)
            self._watched += n
            if self._watched >= self._trim_window:
                excess = self._lowest - self._margin
                if excess > 0:
                    self._start = (self._start + excess) % capacity
                    self._count -= excess
                    self.trimmed_samples += excess
                self._watched, self._lowest = 0, capacity

    def clear(self) -> int:
        """Drop everything queued (interrupt). Returns the number of samples dropped."""
        with self._lock:
            dropped, self._count, self._start = self._count, 0, 0
            self._primed = False
            self._watched, self._lowest = 0, len(self._buffer)
        return dropped

    @property
    def queued(self) -> int:
        return self._count


class Speaker:
    name = "speaker"

    def __init__(self, choice: devices.Choice, reference: ReferenceTap | None = None) -> None:
        self.choice = choice
        self._reference = reference  # the echo canceller's tap (None: no microphone to cancel for)
        self._ring = SampleRing(int(RING_SECONDS * choice.rate), int(PREFILL_SECONDS * choice.rate),
                                margin=int(MARGIN_SECONDS * choice.rate),
                                trim_window=int(TRIM_WINDOW_SECONDS * choice.rate))
        self._resampler = StreamResampler(RATE, choice.rate)
        self.blocks_played = 0
        self.device_underflows = 0  # PortAudio's own report: the callback was late for the card
        self.flushed_samples = 0
        self.latency: float | None = None
        self._flushed_at: float | None = None  # perf_counter() of the last interrupt, until a block is played
        # Seconds from an interrupt to the next block handed to the card (silent from there on), and how far
        # ahead of the DAC that block was (PortAudio's times; None where the host API gives none): the last
        # few, for status. The sum is when the speaker falls silent; the lead is the device's part of it.
        self.interrupt_to_block: collections.deque[float] = collections.deque(maxlen=INTERRUPTS_KEPT)
        self.interrupt_block_lead: collections.deque[float | None] = collections.deque(maxlen=INTERRUPTS_KEPT)

    def delay(self) -> float:
        """Seconds from a sample entering the ring to the card playing it: how late the voice is."""
        return self._ring.queued / self.choice.rate + (self.latency or 0.0)

    def flush(self) -> None:
        """Interrupt hook: silence from the next block on."""
        self._flushed_at = time.perf_counter()
        self.flushed_samples += self._ring.clear()
        self._resampler.reset()

    async def run(self, fanout, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Play frames until cancelled; ``started()`` once the stream runs."""
        stream = await trio.to_thread.run_sync(self._open)
        try:
            self.latency = stream.latency
            logger.info("speaker: %s (%d Hz, %d ch, %.0f ms device latency)", self.choice.name, self.choice.rate,
                        self.choice.channels, stream.latency * 1000)
            with fanout.sink("speaker", SINK_BUFFER, audio_only=True) as frames:
                task_status.started()
                async for frame in frames:
                    self._ring.write(self._resampler.process(frame.audio))
        finally:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
            logger.info("speaker closed: %s", self.status())

    def _open(self):
        sd = devices.sounddevice()
        try:
            stream = sd.OutputStream(device=self.choice.index, samplerate=self.choice.rate,
                                     channels=self.choice.channels, dtype="int16",
                                     blocksize=int(BLOCK_SECONDS * self.choice.rate), latency=DEVICE_LATENCY,
                                     callback=self._callback)
            stream.start()
        except sd.PortAudioError as exc:
            raise ConfigError(f"--output-device: cannot open {self.choice.name!r}: {exc}; {devices.LIST_HINT}") from None
        return stream

    def _callback(self, outdata: np.ndarray, frames: int, time_info, status) -> None:
        # PortAudio's thread: no allocation beyond numpy views and a float, no logging, no waiting on trio.
        self.blocks_played += 1
        if status.output_underflow:
            self.device_underflows += 1
        self._ring.read_into(outdata[:, 0])
        if self._reference is not None:
            self._reference.push(outdata[:, 0])
        flushed_at = self._flushed_at
        if flushed_at is not None:
            self._flushed_at = None
            self.interrupt_to_block.append(time.perf_counter() - flushed_at)
            lead = time_info.outputBufferDacTime - time_info.currentTime
            self.interrupt_block_lead.append(lead if time_info.outputBufferDacTime > 0 and lead >= 0 else None)
        if self.choice.channels > 1:
            outdata[:, 1:] = outdata[:, :1]

    def status(self) -> dict:
        return {"device": self.choice.name, "rate": self.choice.rate, "blocks_played": self.blocks_played,
                "underruns": self._ring.underruns,
                "overflows": self._ring.overflows, "dropped_samples": self._ring.dropped_samples,
                "trimmed_samples": self._ring.trimmed_samples,
                "device_underflows": self.device_underflows, "flushed_samples": self.flushed_samples,
                "queued_samples": self._ring.queued,
                "latency_ms": round(self.latency * 1000, 1) if self.latency is not None else None,
                "interrupt_to_block_ms": [round(seconds * 1000, 2) for seconds in self.interrupt_to_block],
                "interrupt_block_lead_ms": [None if lead is None else round(lead * 1000, 2)
                                            for lead in self.interrupt_block_lead]}

"""Turn latency: end of user input -> first model audio -> first lip-synced frame out; and interrupt -> silence.

The brain marks the first two moments, the renderer the third; the meter publishes one ``latency``
event per turn, keeps the last one for ``avatarctl status`` and feeds the Prometheus histograms that
``GET /metrics`` exposes (the same numbers, by construction).
"""

from __future__ import annotations

import prometheus_client
import trio

from .events import EventBus

# Edge boxes talk to a cloud model: 50 ms to 10 s covers instant local answers to a slow network.
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# The daemon's own share (audio in -> frame rendered, interrupt -> silent frame rendered) is bounded by one
# frame period (40 ms at 25 fps): fine buckets up to there, coarse ones for trouble.
FRAME_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.08, 0.16, 0.32, 0.64)


class LatencyMeter:
    def __init__(self, events: EventBus, registry: prometheus_client.CollectorRegistry) -> None:
        self._events = events
        self._input_end: float | None = None
        self._first_audio: float | None = None
        self._queued: float | None = None  # a whole frame of the answer's speech was queued
        self._interrupted_at: float | None = None
        self.last: dict | None = None
        self.input_to_audio = prometheus_client.Histogram(
            "avatard_latency_input_to_audio_seconds", "End of user input to the first model audio.",
            buckets=TURN_BUCKETS, registry=registry)
        self.audio_to_frame = prometheus_client.Histogram(
            "avatard_latency_audio_to_frame_seconds", "First model audio to its first lip-synced frame, rendered (encoding and sending not included).",
            buckets=FRAME_BUCKETS, registry=registry)
        self.interrupt_to_silence = prometheus_client.Histogram(
            "avatard_latency_interrupt_to_silence_seconds", "Interrupt to the first silent frame, rendered (encoding and sending not included).",
            buckets=FRAME_BUCKETS, registry=registry)

    def user_input_ended(self, ago: float = 0.0) -> None:
        """The user finished a turn now (or ``ago`` seconds ago, when detected after a pause)."""
        self._input_end = trio.current_time() - ago
        self._first_audio = self._queued = None

    def model_audio(self) -> None:
        if self._input_end is not None and self._first_audio is None:
            self._first_audio = trio.current_time()

    def speech_queued(self) -> None:
        """Called by the renderer when a whole frame of a turn's first speech is queued (it re-phases then)."""
        if self._input_end is not None and self._queued is None:
            self._queued = trio.current_time()

    def frame_out(self) -> None:
        """Called by the renderer for the first speaking frame of a turn.

        ``audio_to_frame`` splits into ``audio_to_queued`` (until a whole frame of speech is queued: the
        resampler's delay and the next chunk) and ``queued_to_frame`` (the clock: the re-phase and its gap).
        """
        if self._input_end is None:
            return
        now = trio.current_time()
        first_audio = self._first_audio if self._first_audio is not None else now
        queued = min(max(self._queued if self._queued is not None else now, first_audio), now)
        self.input_to_audio.observe(first_audio - self._input_end)
        self.audio_to_frame.observe(now - first_audio)
        self.last = {
            "input_to_audio_ms": round((first_audio - self._input_end) * 1000, 1),
            "audio_to_frame_ms": round((now - first_audio) * 1000, 1),
            "audio_to_queued_ms": round((queued - first_audio) * 1000, 1),
            "queued_to_frame_ms": round((now - queued) * 1000, 1),
            "total_ms": round((now - self._input_end) * 1000, 1),
        }
        self._input_end = self._first_audio = self._queued = None
        self._events.publish("latency", **self.last)

    def p95_ms(self) -> dict:
        """95th percentiles estimated from the histograms (the upper bucket bound), for ``avatarctl status``."""
        return {name: _p95_ms(histogram) for name, histogram in (
            ("input_to_audio", self.input_to_audio), ("audio_to_frame", self.audio_to_frame),
            ("interrupt_to_silence", self.interrupt_to_silence))}

    def interrupted(self) -> None:
        self._input_end = self._first_audio = self._queued = None
        self._interrupted_at = trio.current_time()

    def silent_frame_out(self) -> None:
        """Called by the renderer for every frame it emits; measures the first one after an interrupt."""
        if self._interrupted_at is not None:
            self.interrupt_to_silence.observe(trio.current_time() - self._interrupted_at)
            self._interrupted_at = None


def _p95_ms(histogram: prometheus_client.Histogram) -> float | None:
    samples = {s.labels["le"]: s.value for s in next(iter(histogram.collect())).samples if s.name.endswith("_bucket")}
    total = samples.get("+Inf", 0)
    if not total:
        return None
    for bound, count in samples.items():
        if count >= 0.95 * total:
            return None if bound == "+Inf" else round(float(bound) * 1000, 1)
    return None

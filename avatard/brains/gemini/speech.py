"""The model's voice into the renderer: 24 kHz (or whatever rate the mime type names) resampled to RATE, with the
filter state carried across chunks, and an answer cut by an interrupt discarded to its end."""

from __future__ import annotations

import re

import numpy as np

from ...constants import RATE
from ...core.audio import SpeechResampler
from ...core.latency import LatencyMeter

MODEL_RATE = 24000  # the Live API's output audio when the mime type names no rate


class ModelSpeech:
    def __init__(self, renderer, latency: LatencyMeter) -> None:
        self._renderer = renderer
        self._latency = latency
        self._resampler = SpeechResampler(MODEL_RATE, RATE)
        self.discarding = False  # an interrupt cut this answer: drop the rest of its audio

    @staticmethod
    def is_audio(blob) -> bool:
        return blob is not None and bool(blob.data) and (blob.mime_type or "").startswith("audio/pcm")

    async def play(self, blob) -> None:
        if self.discarding:
            return
        match = re.search(r"rate=(\d+)", blob.mime_type)
        rate = int(match.group(1)) if match else MODEL_RATE
        if rate != self._resampler.in_rate:
            self._resampler = SpeechResampler(rate, RATE)
        self._latency.model_audio()
        samples = self._resampler.process(np.frombuffer(blob.data, dtype="<i2"))
        if not await self._renderer.push_audio(samples):
            self.discarding = True  # interrupted while waiting for room

    def cut(self, *, discard: bool) -> None:
        """An interrupt: forget the filter state; ``discard`` the rest of the answer if one is playing."""
        self.discarding = self.discarding or discard
        self._resampler.reset()

    async def flush(self) -> None:
        """The model has generated the whole answer: the resampler's look-ahead (the answer's last 2.9 ms) goes
        after the rest, and the renderer plays out what it holds."""
        if not self.discarding:
            tail = self._resampler.process(np.zeros(0, dtype=np.int16), last=True)
            if len(tail) and not await self._renderer.push_audio(tail):
                self.discarding = True
        self._renderer.flush()

    def end_turn(self) -> None:
        self.discarding = False
        self._resampler.reset()
        self._renderer.flush()

"""The audio queue between the brain and the renderer's clock.

The brain produces speech faster than real time (TTS makes a whole sentence at once, Gemini streams
ahead); the clock consumes exactly ``16000/fps`` samples per frame. This buffer holds what is ahead,
bounded by :data:`MAX_AHEAD_SECONDS`: when full, :meth:`put` waits (backpressure reaches the brain,
nothing is dropped). :meth:`clear` is the interrupt: it empties the buffer at once and wakes any waiting
producer, whose samples are then discarded because they belong to the interrupted generation.
"""

from __future__ import annotations

import collections

import numpy as np
import trio

from ..constants import RATE

# Enough to ride out a slow network chunk or a TTS sentence boundary, small enough that memory stays
# flat. It does not affect interrupt latency: clear() drops it all at once.
MAX_AHEAD_SECONDS = 4.0


class SpeechBuffer:
    def __init__(self, max_samples: int = int(MAX_AHEAD_SECONDS * RATE)) -> None:
        self.max_samples = max_samples
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self.pending = 0
        self.generation = 0
        self._space = trio.Event()

    async def put(self, samples: np.ndarray) -> bool:
        """Queue int16 samples; waits for room. Returns False if an interrupt discarded them."""
        generation = self.generation
        samples = np.asarray(samples, dtype=np.int16)
        # A chunk larger than the whole buffer is split so that it can ever fit.
        for start in range(0, len(samples), self.max_samples):
            part = samples[start:start + self.max_samples]
            while self.pending + len(part) > self.max_samples:
                self._space = trio.Event() if self._space.is_set() else self._space
                await self._space.wait()
                if self.generation != generation:
                    return False
            if self.generation != generation:
                return False
            self._chunks.append(part)
            self.pending += len(part)
        return True

    def take(self, n: int) -> tuple[np.ndarray, int]:
        """Exactly ``n`` samples for one frame (zero-padded) and how many of them were real speech."""
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._chunks:
            chunk = self._chunks[0]
            count = min(n - filled, len(chunk))
            out[filled:filled + count] = chunk[:count]
            filled += count
            if count == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[count:]
        self.pending -= filled
        if filled:
            self._space.set()
        return out, filled

    def take_led_in(self, n: int) -> tuple[np.ndarray, int]:
        """Exactly ``n`` samples: silence, then everything queued (fewer than ``n``, all of it real speech). The
        first frame of speech that has begun to arrive: its lead-in before the word, never a gap inside it."""
        lead = max(0, n - self.pending)
        audio, real = self.take(n - lead)
        return np.concatenate([np.zeros(lead, dtype=np.int16), audio]), real

    def clear(self) -> int:
        """Drop everything (interrupt). Returns the number of samples discarded."""
        dropped = self.pending
        self._chunks.clear()
        self.pending = 0
        self.generation += 1
        self._space.set()
        return dropped

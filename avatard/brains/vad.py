"""Energy-based end-of-utterance detection for the offline brain (pure: samples in, utterances out).

A real VAD model would be better at noise, but the offline brain only needs to know when a person
stopped talking so it can echo them; an energy gate with hangover does that with no model to ship.
"""

from __future__ import annotations

import numpy as np

from ..constants import RATE
from ..core.audio import rms_dbfs

BLOCK = RATE // 50  # 20 ms analysis blocks: the granularity of every duration below
SPEECH_DBFS = -42.0  # above this a block counts as voice (normal speech at a mic is -30..-10 dBFS)
MIN_SPEECH_BLOCKS = 5  # 100 ms of voice before we believe it is speech, not a click
END_SILENCE_BLOCKS = 30  # 600 ms of quiet ends the utterance: a natural pause between sentences is shorter
MAX_UTTERANCE_BLOCKS = 50 * 20  # 20 s: a stuck-open mic still gets answered (and memory stays bounded)
PRE_ROLL_BLOCKS = 10  # keep 200 ms before the onset so the first syllable is not clipped


class EndOfUtterance:
    """Feed samples as they come; :meth:`feed` returns every utterance completed by them."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)
        self._blocks: list[np.ndarray] = []
        self._voiced = 0
        self._quiet = 0
        self.in_speech = False

    def feed(self, samples: np.ndarray) -> list[np.ndarray]:
        done = []
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(data) // BLOCK * BLOCK
        self._pending = data[whole:].copy()
        for start in range(0, whole, BLOCK):
            utterance = self._block(data[start:start + BLOCK])
            if utterance is not None:
                done.append(utterance)
        return done

    def _block(self, block: np.ndarray) -> np.ndarray | None:
        loud = rms_dbfs(block) > SPEECH_DBFS
        self._blocks.append(block)
        if not self.in_speech:
            self._voiced = self._voiced + 1 if loud else 0
            if self._voiced >= MIN_SPEECH_BLOCKS:
                self.in_speech = True
                self._quiet = 0
            else:
                del self._blocks[:-(PRE_ROLL_BLOCKS + MIN_SPEECH_BLOCKS)]
            return None
        self._quiet = 0 if loud else self._quiet + 1
        if self._quiet >= END_SILENCE_BLOCKS or len(self._blocks) >= MAX_UTTERANCE_BLOCKS:
            return self._finish()
        return None

    def _finish(self) -> np.ndarray:
        # Trim the trailing silence that ended the utterance; keep a short natural tail.
        keep = len(self._blocks) - max(0, self._quiet - 5)
        utterance = np.concatenate(self._blocks[:keep])
        self._blocks = []
        self._voiced = self._quiet = 0
        self.in_speech = False
        return utterance

    def reset(self) -> None:
        self.__init__()

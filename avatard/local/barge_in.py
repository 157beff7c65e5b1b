"""Barge-in for a brain that has none of its own: speech onset at the microphone while the avatar speaks (pure).

Gemini hears the microphone and interrupts itself (its server-side activity detection); the offline
brain only waits for the end of an utterance. For it, the microphone (after echo cancellation) is
watched while the avatar speaks, and a sustained rise above :data:`ONSET_DBFS` interrupts the avatar.

Each onset is also judged: the echo meter flags 10 ms frames where the microphone *before*
cancellation was louder than the avatar's echo explains. An onset with few such frames was the avatar
hearing itself (a self-interrupt). With the echo canceller running it does not interrupt (the canceller
leaked, see :mod:`avatard.local.microphone`); either way it is counted, so a room where the canceller
fails shows up in status.
"""

from __future__ import annotations

import collections

import attrs
import numpy as np

from ..core.audio import rms_dbfs
from .echo_meter import FRAME

# A voice at a kiosk's microphone is -30..-10 dBFS; the offline brain's detector takes -42 dBFS as
# speech. A little above it, so residual echo and room noise after cancellation stay below.
ONSET_DBFS = -40.0
# 80 ms of voice within 120 ms: long enough that a click or a cough is not a turn, short enough that
# with the sound path (~100 ms) and the speaker's flush the avatar stops within 400 ms of the onset.
ONSET_WINDOW_FRAMES = 12
ONSET_LOUD_FRAMES = 8
# An onset is the visitor's if at least this share of its window had near-end speech. During double
# talk a voice as loud as the echo lifts the frames where it dominates by 6 dB or more; echo alone
# lands there only on level jitter (a frame or two at most).
NEAR_END_SHARE = 0.25


@attrs.frozen
class Onset:
    near_end_share: float  # of the window's frames, judged from the microphone before cancellation

    @property
    def self_interrupt(self) -> bool:
        return self.near_end_share < NEAR_END_SHARE


class SpeechOnset:
    """Feed cancelled audio with its near-end flags while the avatar speaks; an :class:`Onset` when speech starts."""

    def __init__(self) -> None:
        self._loud: collections.deque[bool] = collections.deque(maxlen=ONSET_WINDOW_FRAMES)
        self._near_end: collections.deque[bool] = collections.deque(maxlen=ONSET_WINDOW_FRAMES)

    def feed(self, samples: np.ndarray, near_end: np.ndarray) -> Onset | None:
        for index, flag in enumerate(near_end):
            self._loud.append(rms_dbfs(samples[index * FRAME:(index + 1) * FRAME]) > ONSET_DBFS)
            self._near_end.append(bool(flag))
            if sum(self._loud) >= ONSET_LOUD_FRAMES:
                onset = Onset(near_end_share=sum(self._near_end) / len(self._near_end))
                self.reset()
                return onset
        return None

    def reset(self) -> None:
        self._loud.clear()
        self._near_end.clear()

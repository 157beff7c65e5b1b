"""Barge-in for a brain that has none of its own: speech onset at the microphone while the avatar speaks (pure).

Gemini hears the microphone and interrupts itself (its server-side activity detection); the offline
brain only waits for the end of an utterance. For it, the microphone is watched while the avatar speaks,
and a speech onset interrupts the avatar. Two things make an onset, whichever comes first within the
last :data:`ONSET_WINDOW_FRAMES` 10 ms frames:

- **someone else talking**: :data:`ONSET_NEAR_END_FRAMES` frames that the echo meter judged near-end
  speech, i.e. the microphone *before* cancellation louder, band by band, than the avatar's echo explains.
  This is how a visitor talking over the avatar is heard: after cancellation AEC3's residual-echo
  suppressor mutes the visitor for the first ~300-350 ms of the double talk (measured in bench/aec.py's
  room), so an onset taken from the cancelled level came 450 ms (p50) after the visitor began;
- **sound after cancellation**: :data:`ONSET_LOUD_FRAMES` loud frames of the cancelled microphone (or of
  the microphone itself without a canceller). With too few near-end frames in the window this is the
  avatar hearing itself (a self-interrupt): with the echo canceller running it does not interrupt (the
  canceller leaked, see :mod:`avatard.local.microphone`); either way it is counted, so a room where the
  canceller fails, or one without it (``--aec off``), shows up in status.
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
# The window: 120 ms. 80 ms of sound in it is an onset: long enough that a click is not a turn, short enough
# that a microphone without a canceller (headphones) stops the avatar within 400 ms with the sound path
# (~100 ms) and the speaker's flush.
ONSET_WINDOW_FRAMES = 12
ONSET_LOUD_FRAMES = 8
# ... and so are 3 near-end frames in it. During double talk with a visitor as loud as the echo the meter
# flags a frame where the visitor's formants stand out, not every frame: in 7 recordings of bench/aec.py's
# room the third flagged frame came 20-120 ms after the visitor's onset (p50 50 ms), while 63 s of echo
# alone had no flagged frame at all, and echo alone after a 30 ms jump of the echo path at most 2 in a
# window (see echo_meter's NEAR_END_* and SPREAD_FRAMES). Two would shave ~10 ms and let such a jump
# interrupt; four took up to 380 ms. A cough while the avatar talks is near-end sound too, and interrupts
# it: the price of hearing a visitor through the echo.
ONSET_NEAR_END_FRAMES = 3
# An onset is the visitor's if at least this share of its window had near-end speech: exactly the onsets
# the near-end frames made; one made by loudness alone, with fewer, was the avatar's own echo.
NEAR_END_SHARE = ONSET_NEAR_END_FRAMES / ONSET_WINDOW_FRAMES


@attrs.frozen
class Onset:
    near_end_share: float  # of the window's frames, judged from the microphone before cancellation

    @property
    def self_interrupt(self) -> bool:
        return self.near_end_share < NEAR_END_SHARE


class SpeechOnset:
    """Feed cancelled audio with its near-end flags (judged before cancellation) while the avatar speaks; an
    :class:`Onset` when speech starts."""

    def __init__(self) -> None:
        self._loud: collections.deque[bool] = collections.deque(maxlen=ONSET_WINDOW_FRAMES)
        self._near_end: collections.deque[bool] = collections.deque(maxlen=ONSET_WINDOW_FRAMES)

    def feed(self, samples: np.ndarray, near_end: np.ndarray) -> Onset | None:
        for index, flag in enumerate(near_end):
            self._loud.append(rms_dbfs(samples[index * FRAME:(index + 1) * FRAME]) > ONSET_DBFS)
            self._near_end.append(bool(flag))
            near_end_frames = sum(self._near_end)
            if near_end_frames >= ONSET_NEAR_END_FRAMES or sum(self._loud) >= ONSET_LOUD_FRAMES:
                onset = Onset(near_end_share=near_end_frames / ONSET_WINDOW_FRAMES)
                self.reset()
                return onset
        return None

    def reset(self) -> None:
        self._loud.clear()
        self._near_end.clear()

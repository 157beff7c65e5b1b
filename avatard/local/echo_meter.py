"""How much of the avatar's voice the microphone hears, and whether anyone else is talking (pure: levels in).

The echo canceller feeds one entry per 10 ms frame: the level of the microphone before and after
cancellation, and how many reference (speaker) frames it had been given by then. From that history:

- **the delay** of the echo behind the reference: the lag at which the microphone's level envelope
  best follows the reference's (envelope cross-correlation, re-estimated every :data:`UPDATE_FRAMES`).
  WebRTC's APM keeps its own estimate (``GetStatistics().delay_ms``), but the Python binding does not
  expose it, so this one is ours: it measures the same path, tap to microphone;
- **the echo gain**: the median of microphone minus reference level at that delay, over frames where
  the reference is loud. A median, so a visitor talking over the avatar for less than half the window
  does not lift it;
- **near-end speech** in a frame: the microphone (before cancellation) is louder than the reference
  at the delay predicts, by :data:`NEAR_END_MARGIN_DB`, or is loud while the reference is silent. This
  is a Geigel-style double-talk detector (Duttweiler 1978, "A twelve-channel digital echo canceler":
  compare |mic| with the far end's recent maximum) with the measured gain in place of Geigel's fixed
  6 dB of echo loss, since a kiosk's loudspeaker may be louder at the microphone than the visitor;
- **ERLE** (echo return loss enhancement): microphone power before over after cancellation, in dB, over
  the last :data:`WINDOW_FRAMES` frames of echo alone (reference loud, no near-end speech). ITU-T
  G.168 defines it this way (echo power in over residual echo power out).

Rejected: judging near-end speech by the canceller's output alone (what is left after cancellation
is the visitor *or* echo the canceller has not learned yet, which is exactly what a self-interrupt is).
"""

from __future__ import annotations

import numpy as np

from ..constants import RATE
from ..core.audio import rms_dbfs

FRAME_SECONDS = 0.01  # WebRTC's APM processes 10 ms frames (api/audio/audio_processing.h: "10 ms chunks")
FRAME = round(RATE * FRAME_SECONDS)  # samples per frame at 16 kHz
# Three seconds of history: a sentence or two of the avatar, enough speech for a stable envelope
# correlation and for ERLE "over the last seconds"; 300 entries of four floats.
WINDOW_FRAMES = 300
UPDATE_FRAMES = 100  # re-estimate delay and gain once a second: the room changes slowly
# Longest echo delay searched: speaker device buffer + sound server + room + microphone buffer. A
# kiosk's path is 100-300 ms; AEC3's own delay estimator covers about as much.
MAX_DELAY_FRAMES = 50
# A frame counts as speech (in the reference or at the microphone) above this: vad.py's -42 dBFS
# speech threshold, less 8 dB so the quiet ends of words still count as echo.
ACTIVE_DBFS = -50.0
# The microphone must exceed the predicted echo by this much to count as someone else talking: twice
# the echo's power. Echo alone stays within about +-3 dB of the prediction (level jitter per frame).
NEAR_END_MARGIN_DB = 6.0
# Frames around the delay whose loudest reference level predicts the echo: +-20 ms covers the room's
# response (60 ms of reverberation spreads the echo over several frames) and delay jitter.
SPREAD_FRAMES = 2
# After a frame with near-end speech, this many more are not counted as echo alone (for ERLE): the
# detector misses the quieter frames of a visitor's words, which would read as echo the canceller left.
NEAR_END_HANGOVER_FRAMES = 30
MIN_ACTIVE_FRAMES = 50  # half a second of avatar speech in the window before the delay is trusted
# Envelopes of speech and its echo correlate at 0.8-0.95; below this the microphone is hearing
# something else (or nothing) and the lag would be noise.
MIN_CORRELATION = 0.4


class EchoMeter:
    """Per-frame levels in (:meth:`frame`, :meth:`reference`), delay, gain, near-end flags and ERLE out."""

    def __init__(self) -> None:
        # The reference can run ahead of the microphone (the speaker's tap is drained in bursts); a second
        # of slack keeps the oldest microphone frame's reference in the ring.
        size = WINDOW_FRAMES + MAX_DELAY_FRAMES + SPREAD_FRAMES + 100
        self._reference = np.full(size, -120.0)  # reference levels by reference frame number (ring)
        self._references = 0
        self.speech_frames = 0  # reference frames with the avatar's voice: what the canceller has adapted on
        self._mic_before = np.full(WINDOW_FRAMES, -120.0)  # per microphone frame (ring)
        self._mic_after = np.full(WINDOW_FRAMES, -120.0)
        self._at = np.zeros(WINDOW_FRAMES, dtype=np.int64)  # reference frames given before each microphone frame
        self._echo_only = np.zeros(WINDOW_FRAMES, dtype=bool)
        self._frames = 0
        self._last_near_end = -NEAR_END_HANGOVER_FRAMES - 1  # microphone frame number
        self.delay_frames: int | None = None
        self.gain_db = 0.0  # Geigel's assumption until measured: the echo as loud as the reference
        self.erle_db: float | None = None

    def reference(self, samples: np.ndarray) -> None:
        """One 10 ms frame of what the speaker played."""
        level = rms_dbfs(samples)
        self._reference[self._references % len(self._reference)] = level
        self._references += 1
        self.speech_frames += int(level > ACTIVE_DBFS)

    def frame(self, before: np.ndarray, after: np.ndarray) -> bool:
        """One 10 ms microphone frame before and after cancellation; returns whether someone else talks in it."""
        slot = self._frames % WINDOW_FRAMES
        level = rms_dbfs(before)
        predicted = self._predicted_echo(self._references)
        near_end = level > max(predicted + NEAR_END_MARGIN_DB, ACTIVE_DBFS)
        self._mic_before[slot] = level
        self._mic_after[slot] = rms_dbfs(after)
        self._at[slot] = self._references
        if near_end:
            self._last_near_end = self._frames
        self._echo_only[slot] = predicted > ACTIVE_DBFS and self._frames - self._last_near_end > NEAR_END_HANGOVER_FRAMES
        self._frames += 1
        if self._frames % UPDATE_FRAMES == 0:
            self._update()
        return near_end

    def _predicted_echo(self, at: int) -> float:
        """The echo's level at the microphone, from the loudest reference frame that can reach it now."""
        latest = at - 1  # the newest reference frame given
        if self.delay_frames is None:  # no delay found yet: any frame that could still echo (Geigel)
            low, high = latest - MAX_DELAY_FRAMES, latest + 1
        else:
            centre = latest - self.delay_frames
            low, high = centre - SPREAD_FRAMES, centre + SPREAD_FRAMES + 1
        low, high = max(low, at - len(self._reference), 0), min(high, at)
        if high <= low:
            return -120.0
        window = self._reference[np.arange(low, high) % len(self._reference)]
        return float(window.max()) + self.gain_db

    def _update(self) -> None:
        mic = self._mic_before
        best, best_lag = MIN_CORRELATION, None
        for lag in range(MAX_DELAY_FRAMES + 1):
            ref = self._reference_at(lag)
            if (ref > ACTIVE_DBFS).sum() < MIN_ACTIVE_FRAMES:
                continue
            if mic.std() > 0 and ref.std() > 0:  # a silent microphone correlates with nothing
                correlation = float(np.corrcoef(mic, ref)[0, 1])
                if correlation > best:
                    best, best_lag = correlation, lag
        if best_lag is not None:
            self.delay_frames = best_lag
        # The gain at the delay; with no echo found yet, at any lag: a microphone that stays quiet while
        # the avatar talks gives the same (very low) median at every lag, and that is the measurement.
        ref = self._reference_at(self.delay_frames or 0)
        active = ref > ACTIVE_DBFS
        if active.sum() >= MIN_ACTIVE_FRAMES:
            self.gain_db = float(np.median(mic[active] - ref[active]))
        echo = self._echo_only
        if echo.any():
            before = np.sum(10.0 ** (self._mic_before[echo] / 10.0))
            after = np.sum(10.0 ** (self._mic_after[echo] / 10.0))
            self.erle_db = round(float(10.0 * np.log10(before / max(after, 1e-12))), 1)
        else:
            self.erle_db = None

    def _reference_at(self, lag: int) -> np.ndarray:
        """The reference level ``lag`` frames before each microphone frame in the window."""
        return self._reference[(self._at - 1 - lag) % len(self._reference)]

    @property
    def delay_ms(self) -> float | None:
        return None if self.delay_frames is None else self.delay_frames * FRAME_SECONDS * 1000

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
- **near-end speech** in a frame: in at least :data:`NEAR_END_BANDS` critical bands the microphone
  (before cancellation) is louder than the reference at the delay predicts, by :data:`NEAR_END_MARGIN_DB`.
  This is a Geigel-style double-talk detector (Duttweiler 1978, "A twelve-channel digital echo
  canceler": compare |mic| with the far end's recent maximum) with a measured gain in place of Geigel's
  fixed 6 dB of echo loss, since a kiosk's loudspeaker may be as loud at the microphone as the visitor,
  and run per band: two voices as loud as each other lift the broadband level by only ~3 dB, but at any
  moment they have their energy in different bands (other formants, voiced against unvoiced), where the
  visitor stands 5-30 dB over the echo. Barge-in takes the visitor's onset from these flags (AEC3's
  suppressor mutes the first ~300-350 ms of double talk in the cancelled signal);
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
# Critical bands (Zwicker's Bark scale edges, Hz) up to 8 kHz: the near-end judge compares microphone and
# echo band by band. Each frame's spectrum is taken over it and the frame before (20 ms, Hann window).
BAND_EDGES_HZ = (0, 100, 200, 300, 400, 510, 630, 770, 920, 1080, 1270, 1480, 1720, 2000, 2320, 2700, 3150,
                 3700, 4400, 5300, 6400, 7700, 8000)
# A band has someone else in it when the microphone exceeds the predicted echo (and its own noise floor) by
# this much: three times the power. Echo alone stays below the prediction (the loudest reference frame
# around the delay), bar level jitter of a few dB; a visitor's formant lands 5-30 dB over the echo there.
# Measured on 7 recordings of bench/aec.py's room (63 s of echo alone, a visitor as loud as the echo): at
# 5 dB in 3 bands no frame of echo alone was flagged (at 4 dB in 2 bands, 18), and the visitor's third
# flagged frame came 20-120 ms after the onset; at 10 dB in 4 bands (the first setting) up to 400 ms,
# the flags sparse while AEC3's suppressor mutes the visitor.
NEAR_END_MARGIN_DB = 5.0
# ... in this many bands (of 22) at once: one band over the margin happens in echo alone (a fricative's edge);
# a voice covers several.
NEAR_END_BANDS = 3
NOISE_PERCENTILE = 10  # a band's noise floor: its 10th-percentile level over the window (minimum statistics)
# Frames around the delay whose loudest reference level predicts the echo: +-30 ms covers the room's
# response (60 ms of reverberation spreads the echo over several frames) and a jump of the echo path (a
# starved sound server drops or inserts a block) until the delay is measured again. In the recordings
# above, echo alone after a 30 ms jump flagged up to 8 frames in 120 ms at +-20 ms (a self-interrupt,
# see barge_in.ONSET_NEAR_END_FRAMES), 2 at +-30 ms; at +-40 ms one visitor went unheard for 370 ms.
SPREAD_FRAMES = 3
# After a frame with near-end speech, this many more are not counted as echo alone (for ERLE): the
# detector misses the quieter frames of a visitor's words, which would read as echo the canceller left.
NEAR_END_HANGOVER_FRAMES = 30
MIN_ACTIVE_FRAMES = 50  # half a second of avatar speech in the window before the delay is trusted
# Envelopes of speech and its echo correlate at 0.8-0.95; below this the microphone is hearing
# something else (or nothing) and the lag would be noise.
MIN_CORRELATION = 0.4


_WINDOW = np.hanning(2 * FRAME)
_BAND_OF_BIN = np.digitize(np.fft.rfftfreq(2 * FRAME, 1 / RATE), BAND_EDGES_HZ[1:-1])
BANDS = len(BAND_EDGES_HZ) - 1


class _Spectrum:
    """Band levels (dB) of consecutive 10 ms frames, each over itself and the frame before."""

    def __init__(self) -> None:
        self._previous = np.zeros(FRAME)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        current = samples.astype(np.float64)
        power = np.abs(np.fft.rfft(np.concatenate([self._previous, current]) * _WINDOW)) ** 2
        self._previous = current
        # +100: a floor (about -110 dBFS in a band) so that digital silence is a level, not -inf
        return 10.0 * np.log10(np.bincount(_BAND_OF_BIN, weights=power, minlength=BANDS) + 100.0)


class EchoMeter:
    """Per-frame levels in (:meth:`frame`, :meth:`reference`), delay, gain, near-end flags and ERLE out."""

    def __init__(self) -> None:
        # The reference can run ahead of the microphone (the speaker's tap is drained in bursts); a second
        # of slack keeps the oldest microphone frame's reference in the ring.
        size = WINDOW_FRAMES + MAX_DELAY_FRAMES + SPREAD_FRAMES + 100
        self._reference = np.full(size, -120.0)  # reference levels by reference frame number (ring)
        self._reference_bands = np.zeros((size, BANDS))  # and its band levels
        self._mic_bands = np.zeros((WINDOW_FRAMES, BANDS))  # per microphone frame, before cancellation
        self._reference_spectrum, self._mic_spectrum = _Spectrum(), _Spectrum()
        self.band_gain_db = np.zeros(BANDS)
        # Nobody else is judged to talk until the band gains are measured over a whole window: with Geigel's
        # assumption (echo as loud as the reference) in their place the judge flagged most frames of the
        # avatar's first seconds.
        self._calibrated = False
        self._noise_bands = np.zeros(BANDS)  # the microphone's floor per band
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
        self._reference_bands[self._references % len(self._reference)] = self._reference_spectrum(samples)
        self._references += 1
        self.speech_frames += int(level > ACTIVE_DBFS)

    def frame(self, before: np.ndarray, after: np.ndarray) -> bool:
        """One 10 ms microphone frame before and after cancellation; returns whether someone else talks in it."""
        slot = self._frames % WINDOW_FRAMES
        level = rms_dbfs(before)
        predicted = self._predicted_echo(self._references)
        bands = self._mic_spectrum(before)
        floor = np.maximum(self._predicted_bands(self._references), self._noise_bands)
        near_end = (self._calibrated and level > ACTIVE_DBFS
                    and int((bands > floor + NEAR_END_MARGIN_DB).sum()) >= NEAR_END_BANDS)
        self._mic_bands[slot] = bands
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

    def _echo_frames(self, at: int) -> np.ndarray:
        """Ring slots of the reference frames whose echo can reach the microphone now (maybe none)."""
        latest = at - 1  # the newest reference frame given
        if self.delay_frames is None:  # no delay found yet: any frame that could still echo (Geigel)
            low, high = latest - MAX_DELAY_FRAMES, latest + 1
        else:
            centre = latest - self.delay_frames
            low, high = centre - SPREAD_FRAMES, centre + SPREAD_FRAMES + 1
        low, high = max(low, at - len(self._reference), 0), min(high, at)
        return np.arange(low, high) % len(self._reference)

    def _predicted_echo(self, at: int) -> float:
        """The echo's level at the microphone, from the loudest reference frame that can reach it now."""
        frames = self._echo_frames(at)
        return float(self._reference[frames].max()) + self.gain_db if len(frames) else -120.0

    def _predicted_bands(self, at: int) -> np.ndarray:
        """The same per band: the loudest of those frames in each band, with the band's gain."""
        frames = self._echo_frames(at)
        return self._reference_bands[frames].max(axis=0) + self.band_gain_db if len(frames) else self._noise_bands

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
            slots = (self._at - 1 - (self.delay_frames or 0)) % len(self._reference)
            self.band_gain_db = np.median(self._mic_bands[active] - self._reference_bands[slots[active]], axis=0)
            # With no delay found (no echo heard), against every lag that could echo. Not before the window
            # is full: gains from the first second misjudged the room tests' echo under load.
            self._calibrated = self._frames >= WINDOW_FRAMES
        self._noise_bands = np.percentile(self._mic_bands, NOISE_PERCENTILE, axis=0)
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

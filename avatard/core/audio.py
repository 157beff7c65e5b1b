"""Audio helpers shared by every source and sink: format conversion, resampling, level.

Resampling uses soxr (a real band-limited resampler). Streams that arrive in chunks keep one
:class:`StreamResampler` so filter state carries across chunk edges and there are no clicks. Speech that
plays the moment it arrives (the model's answer, the avatar's voice to WebRTC viewers) has
:class:`SpeechResampler` (libsamplerate) instead: why, in its docstring. The other streams go into buffers
(a sound card's ring, the model's input), where soxr's uneven output costs nothing audible, and soxr costs
10-30 times less CPU (16 -> 48 kHz: 0.06 % of a core against libsamplerate's 0.87 %; 24 -> 16 kHz: 0.02
against 0.33).
"""

from __future__ import annotations

import numpy as np
import samplerate
import soxr

from ..constants import RATE


def pcm16_to_array(data: bytes, channels: int = 1) -> np.ndarray:
    """Little-endian PCM16 bytes -> int16 array of shape (frames, channels) (or (frames,) when mono)."""
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    if channels == 1:
        return samples
    return samples.reshape(-1, channels)


def downmix(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) int16 array into mono int16."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=1).round().astype(np.int16)


class StreamResampler:
    """Stateful int16 mono resampler for one stream of chunks (e.g. Gemini's 24 kHz replies)."""

    def __init__(self, in_rate: int, out_rate: int = RATE) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=last)

    def reset(self) -> None:
        """Forget buffered input (after an interrupt the tail of the old stream must not leak out)."""
        if self._stream is not None:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16", quality="HQ")


class SpeechResampler:
    """Stateful int16 mono resampler for speech that plays as it arrives (the model's answer, chunk by chunk;
    the avatar's voice on its way to WebRTC viewers, frame by frame).

    soxr's streaming output comes in bursts: four 40 ms chunks at 24 kHz give 490, 489, 489 and then 979
    samples at 16 kHz instead of 640 each, so its output lags the input by 9.4 to 28 ms in turn. Played
    the moment it arrives from a model speaking in real time, that starved the renderer three frames in
    four at the start of every answer: 7-9 ms of silence inside the first words. libsamplerate's sinc
    converter gives every chunk's worth as it comes (594 samples for the first, then 640 each), with a
    fixed look-ahead of 46 samples (2.9 ms) instead of soxr HQ's 150-450. ``sinc_medium``: a passband
    of 90 % of Nyquist (7.2 kHz at 16 kHz; soxr HQ 91 %) and 97 dB SNR, beyond 16-bit audio's
    (libsamplerate's converter notes; tests/test_core_units.py measures both).
    """

    CONVERTER = "sinc_medium"
    # Silence fed after the last chunk to push the look-ahead out: the binding sizes its output by its input,
    # so an empty last call gives nothing. 5 ms covers the 2.9 ms held back; the rest is the silence after it.
    FLUSH_SECONDS = 0.005

    def __init__(self, in_rate: int, out_rate: int = RATE) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._ratio = out_rate / in_rate
        self._stream = samplerate.Resampler(self.CONVERTER, channels=1)
        self._holding = False  # samples went in since the last reset: the look-ahead holds some of them

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; ``last`` also gives out the look-ahead held back (the stream then starts over).
        A ``last`` with nothing held back and nothing new gives nothing (not the flush's silence)."""
        self._holding = self._holding or len(samples) > 0
        if last:
            if not self._holding:
                return np.zeros(0, dtype=np.int16)
            samples = np.concatenate([samples, np.zeros(round(self.in_rate * self.FLUSH_SECONDS), dtype=np.int16)])
        out = self._stream.process(samples.astype(np.float32) / 32768.0, self._ratio, end_of_input=last)
        if last:
            self.reset()
        return np.clip(np.rint(out * 32768.0), -32768, 32767).astype(np.int16)

    def reset(self) -> None:
        """Forget buffered input (after an interrupt the tail of the old stream must not leak out)."""
        self._stream.reset()
        self._holding = False


def resample(samples: np.ndarray, in_rate: int, out_rate: int = RATE) -> np.ndarray:
    """One-shot resampling of a whole int16 mono signal."""
    if in_rate == out_rate or len(samples) == 0:
        return samples
    return soxr.resample(samples, in_rate, out_rate, quality="HQ")


def rms_dbfs(samples: np.ndarray) -> float:
    """Level of int16 samples in dB relative to full scale; silence is -120."""
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    if rms < 1e-3:
        return -120.0
    return 20.0 * np.log10(rms / 32768.0)

"""Audio helpers shared by every source and sink: format conversion, resampling, level.

Resampling uses soxr (a real band-limited resampler). Streams that arrive in chunks keep one
:class:`StreamResampler` so filter state carries across chunk edges and there are no clicks.
"""

from __future__ import annotations

import numpy as np
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

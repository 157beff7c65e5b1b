"""``--audio-file``: a recording that stands in for the user's voice, in local and server mode alike.

The file is decoded once at start-up (libsndfile through soundfile reads WAV, FLAC, OGG/Vorbis, Opus and,
since libsndfile 1.1, MP3), converted to the daemon's 16 kHz mono int16, and then streamed to the brain
exactly as a microphone would deliver it: 20 ms chunks in real time, followed by a second of silence so
an end-of-utterance detector (the local brain's, Gemini's server-side one) sees the speaker stop.
Replays (key ``1`` in the window, ``avatarctl replay``) stream it again.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import soundfile
import trio

from ..constants import RATE
from ..core.audio import downmix, resample
from ..errors import ConfigError

logger = logging.getLogger("avatard.audio_file")

CHUNK = RATE // 50  # 20 ms: the block size of a typical microphone and of the local brain's detector
# Longer than the local brain's 600 ms end-of-utterance pause and Gemini's default silence window.
TRAILING_SILENCE_SECONDS = 1.0
# The whole file is decoded into memory; 10 minutes is 19 MB at 16 kHz and far more than one turn.
MAX_SECONDS = 600.0
# One pending replay covers any number of key presses made while the file is still playing.
REPLAY_QUEUE = 1


def load(path: str) -> np.ndarray:
    """Decode ``path`` to 16 kHz mono int16. Any failure is a one-line ConfigError naming --audio-file."""
    try:
        info = soundfile.info(path)
        if info.frames / info.samplerate > MAX_SECONDS:
            raise ConfigError(f"--audio-file: {path} is {info.frames / info.samplerate:.0f} s long; "
                              f"the limit is {MAX_SECONDS:.0f} s")
        samples, rate = soundfile.read(path, dtype="int16", always_2d=True)
    except (soundfile.SoundFileError, OSError) as exc:
        raise ConfigError(f"--audio-file: cannot decode {path}: {_one_line(exc)}") from None
    mono = resample(downmix(samples), rate)
    if not len(mono):
        raise ConfigError(f"--audio-file: {path} contains no audio")
    return np.ascontiguousarray(mono, dtype=np.int16)


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()


class AudioFileSource:
    """Streams the decoded file to ``hub.user_audio(..., "audio_file")``; :meth:`replay` queues another pass."""

    name = "audio_file"

    def __init__(self, samples: np.ndarray, path: str) -> None:
        self._samples = samples
        self.path = path
        self._replay_send, self._replay_receive = trio.open_memory_channel(REPLAY_QUEUE)
        self.plays = 0
        self.playing = False

    def replay(self) -> bool:
        """Ask for another pass (from the trio thread). False if one is already waiting."""
        try:
            self._replay_send.send_nowait(None)
        except trio.WouldBlock:
            return False
        return True

    async def run(self, hub, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Play to ``hub.user_audio`` once now, then once per replay request, until cancelled."""
        task_status.started()
        await self._play(hub)
        async for _ in self._replay_receive:
            await self._play(hub)

    async def _play(self, hub) -> None:
        # Chunk k is due at start + k * 20 ms. Sleeping until an absolute deadline (not "20 ms more")
        # keeps the long-run rate exact even when a send waits on the brain's queue: a late chunk
        # is followed by the next ones without delay until the stream is back on schedule.
        self.plays += 1
        self.playing = True
        logger.info("playing %s (%.1f s, pass %d)", self.path, len(self._samples) / RATE, self.plays)
        stream = np.concatenate([self._samples, np.zeros(int(TRAILING_SILENCE_SECONDS * RATE), np.int16)])
        start = trio.current_time()
        try:
            for k, offset in enumerate(range(0, len(stream), CHUNK)):
                await trio.sleep_until(start + k * CHUNK / RATE)
                await hub.user_audio(stream[offset:offset + CHUNK], "audio_file")
            await trio.sleep_until(start + len(stream) / RATE)  # the last chunk's 20 ms, so a replay follows on time
        finally:
            self.playing = False

    def status(self) -> dict:
        return {"path": self.path, "seconds": round(len(self._samples) / RATE, 2), "plays": self.plays,
                "playing": self.playing}

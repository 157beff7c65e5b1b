"""``--record PATH.mp4``: the avatar as a video file, H.264 picture and AAC sound, in sync.

Each frame carries exactly ``16000/fps`` samples, so the recording is in sync by construction: frame
``i`` is shown at ``i/fps`` and its samples start at ``i * 16000/fps``. Timestamps come from the
renderer's frame index, not from arrival, so a frame this sink lost (the fan-out drops when the encoder
falls :data:`SINK_BUFFER` frames behind) or a tick the renderer skipped becomes a held picture and
silence of the right length, never a shift of sound against picture.

Encoding runs in a worker thread (``trio.to_thread``), one frame at a time; closing on shutdown flushes
the encoders and writes the index, so the file is playable after SIGTERM, ``q`` or a closed window.
"""

from __future__ import annotations

import logging

import av
import numpy as np
import trio

from ..constants import RATE
from ..errors import ConfigError

logger = logging.getLogger("avatard.recorder")

# 2 s of frames waiting for the encoder: x264 at "veryfast" takes ~4 ms a 512x512 frame, so only a
# starved machine falls this far behind; then frames are dropped (counted) and filled in as held ones.
SINK_BUFFER = 50
# veryfast keeps a 2-core edge box free for the renderer; CRF 23 is x264's default quality.
VIDEO_OPTIONS = {"preset": "veryfast", "crf": "23"}
# Closing the file on shutdown (flushing x264 and AAC, writing the index): inside the daemon's 2 s promise.
FINISH_TIMEOUT = 1.0
AUDIO_BITRATE = 64_000  # AAC at 16 kHz mono: speech is transparent well below this


class _Encoder:
    """The PyAV side: blocking calls, used from one worker thread at a time."""

    def __init__(self, path: str, width: int, height: int, fps: int) -> None:
        try:
            self._container = av.open(path, "w")
        except (av.FFmpegError, OSError) as exc:
            raise ConfigError(f"--record: cannot create {path}: {exc}") from None
        self._video = self._container.add_stream("libx264", rate=fps, options=VIDEO_OPTIONS)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._audio = self._container.add_stream("aac", rate=RATE, layout="mono")
        self._audio.bit_rate = AUDIO_BITRATE
        self._samples_per_frame = RATE // fps
        self._first: int | None = None
        self._next = 0  # the next frame number (relative to the first) we expect
        self.frames = 0
        self.filled = 0  # frames lost before the encoder, replaced by a held picture and silence

    def write(self, index: int, image: np.ndarray, audio: np.ndarray) -> None:
        if self._first is None:
            self._first = index
        n = index - self._first
        if n < self._next:
            return  # cannot happen with a monotonic clock; never write a timestamp twice
        if n > self._next:
            self.filled += n - self._next
            silence = np.zeros((n - self._next) * self._samples_per_frame, dtype=np.int16)
            self._encode_audio(silence, self._next)  # the picture just stays on screen longer
        video = av.VideoFrame.from_ndarray(image, format="bgr24")
        video.pts = n
        self._container.mux(self._video.encode(video))
        self._encode_audio(audio, n)
        self._next = n + 1
        self.frames += 1

    def _encode_audio(self, samples: np.ndarray, frame_number: int) -> None:
        audio = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        audio.sample_rate = RATE
        audio.pts = frame_number * self._samples_per_frame
        self._container.mux(self._audio.encode(audio))

    def close(self) -> None:
        """Flush both encoders and write the index; the file is complete afterwards."""
        self._container.mux(self._video.encode(None))
        self._container.mux(self._audio.encode(None))
        self._container.close()

    def abandon(self) -> None:
        """Close after a failed write without flushing: PyAV crashes (SIGSEGV) flushing into a failed muxer."""
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            pass  # already reported: the write that failed is what we tell the operator about


class Recorder:
    name = "recorder"

    def __init__(self, path: str, renderer) -> None:
        self.path = path
        self._renderer = renderer  # its geometry is known once it runs (bitHuman: the model's)
        self._encoder: _Encoder | None = None
        self.failure: str | None = None

    async def run(self, fanout, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Record until cancelled; the file is finalized on the way out.

        A write that fails once recording runs (a full disk) ends the recording, not the daemon: the
        avatar is what the daemon is for. The failure is logged and shown in ``avatarctl status``.
        """
        geometry = (self._renderer.width, self._renderer.height, self._renderer.fps)
        self._encoder = encoder = await trio.to_thread.run_sync(_Encoder, self.path, *geometry)
        try:
            with fanout.sink("recorder", SINK_BUFFER) as frames:
                logger.info("recording to %s", self.path)
                task_status.started()
                async for frame in frames:
                    await trio.to_thread.run_sync(encoder.write, frame.index, frame.image, frame.audio)
        except (av.FFmpegError, OSError) as exc:
            self._failed(exc)
        finally:
            # Shielded: the file is only playable once closed, and shutdown is what cancels us. x264 at
            # veryfast holds a few frames of lookahead, so this takes milliseconds; the time limit keeps
            # the daemon's 2 s stop promise if the disk hangs (the file is then left unfinished, and said so).
            with trio.CancelScope(shield=True), trio.move_on_after(FINISH_TIMEOUT) as finishing:
                await self._finish(encoder)
            if finishing.cancelled_caught:
                self.failure = f"finishing took longer than {FINISH_TIMEOUT:g} s; {self.path} may be incomplete"
                logger.error("recording: %s", self.failure)

    async def _finish(self, encoder: _Encoder) -> None:
        if self.failure is not None:
            await trio.to_thread.run_sync(encoder.abandon, abandon_on_cancel=True)
            return
        try:
            await trio.to_thread.run_sync(encoder.close, abandon_on_cancel=True)
        except (av.FFmpegError, OSError) as exc:
            self._failed(exc)
            return
        logger.info("recorded %d frames to %s (%d filled in)", encoder.frames, self.path, encoder.filled)

    def _failed(self, exc: Exception) -> None:
        if self.failure is None:
            self.failure = str(exc)
            logger.error("recording to %s failed; the daemon goes on without it", self.path, exc_info=True)

    def flush(self) -> None:
        """Interrupt hook: nothing to drop; the recording keeps what was heard (stale audio arrives silenced)."""

    def status(self) -> dict:
        encoder = self._encoder
        return {"path": self.path, "frames": encoder.frames if encoder else 0,
                "filled": encoder.filled if encoder else 0, "failure": self.failure}

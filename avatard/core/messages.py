"""The messages parts of the daemon exchange over memory channels: flat, frozen, no hierarchy."""

from __future__ import annotations

import attrs
import numpy as np


@attrs.frozen
class UserAudio:
    """User speech for the brain: 16 kHz mono int16 samples, from the microphone, a file or a browser."""

    samples: np.ndarray = attrs.field(eq=False)
    source: str = "unknown"


@attrs.frozen
class UserText:
    """A user turn typed or sent as text (``text_input``, ``avatarctl ask``)."""

    text: str
    source: str = "unknown"


@attrs.frozen
class SayText:
    """Text the avatar speaks verbatim, without a model turn (``avatarctl say``)."""

    text: str


@attrs.frozen
class CameraFrame:
    """One picture for the brain to see: a JPEG of at most MAX_IMAGE_SIDE px, from a camera or an operator's still.

    Never logged or written anywhere (``repr`` leaves the bytes out)."""

    jpeg: bytes = attrs.field(repr=False)
    source: str = "unknown"


@attrs.frozen
class Frame:
    """One tick of the renderer's clock: the picture and exactly the audio that plays during it.

    ``generation`` counts interrupts: a sink that sees a frame from an older generation than the
    current one drops its audio, so nothing queued before an interrupt is heard after it.
    """

    index: int
    timestamp: float  # presentation time, seconds since the epoch
    image: np.ndarray = attrs.field(eq=False, repr=False)  # BGR uint8, H x W x 3
    audio: np.ndarray = attrs.field(eq=False, repr=False)  # int16 mono, 16 kHz, 16000/fps samples
    speaking: bool
    generation: int
    mouth: float = 0.0
    gesture: str | None = None


@attrs.frozen
class FrameAudio:
    """A frame's audio, handed out at its tick, before its picture is drawn.

    Audio-only sinks (the speaker, the WebSocket audio stream) take these instead of frames, so the first
    word of an answer and the silence after an interrupt are not held behind the drawing (a few ms, more on
    a busy box). The :class:`Frame` with the same ``index`` follows with the same samples; a frame's audio
    always goes out before its picture, as it already did behind the JPEG encoder.
    """

    index: int
    timestamp: float  # the Frame's presentation time
    audio: np.ndarray = attrs.field(eq=False, repr=False)  # int16 mono, 16 kHz, 16000/fps samples
    speaking: bool
    generation: int

    @classmethod
    def of(cls, frame: Frame) -> FrameAudio:
        """The audio of a frame already drawn (renderers whose pictures come with their sound)."""
        return cls(index=frame.index, timestamp=frame.timestamp, audio=frame.audio, speaking=frame.speaking,
                   generation=frame.generation)


@attrs.frozen
class Event:
    """Something operators and clients hear about: status, transcription, gesture, client, latency, frame."""

    kind: str
    data: dict = attrs.field(eq=False)
    timestamp: float

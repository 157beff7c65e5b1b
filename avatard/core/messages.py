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
class Event:
    """Something operators and clients hear about: status, transcription, gesture, client, latency, frame."""

    kind: str
    data: dict = attrs.field(eq=False)
    timestamp: float

"""The written interfaces of the data path's parts: what the hub and the app may rely on, nothing more.

    Brain     user input (channel of UserAudio/UserText/SayText/CameraFrame) -> speech pushed into the Renderer
    Renderer  speech -> Frames at fps (the clock), each with exactly RATE/fps samples
    Sink      Frames (from a FanOut sink) -> a device, a file, or clients
    Part      anything with a name and its own counters for ``avatarctl status`` and ``/metrics``

Brains reach back into the daemon only through :class:`Controls` (the hub implements it), handed to
``Brain.run``: a brain never holds the hub, the renderer's internals or a sink.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import trio

from .messages import Frame


class Part(Protocol):
    """A part of the daemon that reports its own numbers (never a secret)."""

    name: str

    def status(self) -> dict: ...


class Controls(Protocol):
    """What a brain may ask of the daemon: the same operations operators and clients have."""

    def interrupt(self, source: str) -> None:
        """Barge-in: stop the avatar now, everywhere."""

    def gesture(self, name: str, source: str) -> None:
        """Play a gesture; raises ``errors.Refused`` (``UnknownGesture``) for a name the renderer lacks."""


class Brain(Part, Protocol):
    """Turns user input into speech. ``status()`` gives brain, brain_state, brain_failure, turns, reconnects.

    ``sees``: whether it takes CameraFrames; a brain that does not is never sent one."""

    sees: bool

    async def run(self, inputs: trio.MemoryReceiveChannel, controls: Controls, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None: ...

    def interrupt(self) -> None:
        """Drop queued speech and discard the rest of the turn in progress (synchronous)."""


class Renderer(Part, Protocol):
    """The clock. Geometry (width, height, fps) is known once ``run`` has called ``started()``.

    ``status()`` gives renderer, renderer_fallback, size, fps, speaking, frames_rendered, frames_dropped,
    ticks_skipped.
    """

    width: int
    height: int
    fps: int
    samples_per_frame: int

    @property
    def gestures(self) -> list[str]: ...

    @property
    def generation(self) -> int:
        """Counts interrupts; a frame of an older generation must not be heard."""

    @property
    def speaking(self) -> bool: ...

    @property
    def last_frame(self) -> Frame | None: ...

    async def push_audio(self, samples: np.ndarray) -> bool:
        """Queue 16 kHz int16 speech; waits when far ahead; False if an interrupt discarded it.
        A renderer that fails raises ``errors.RendererFailed`` (never returns False for it)."""

    def flush(self) -> None:
        """End of the turn."""

    def interrupt(self) -> int:
        """Stop speaking now (the next frame is silent); returns the samples discarded."""

    def gesture(self, name: str) -> None:
        """Start a gesture; raises ``errors.UnknownGesture``."""

    async def run(self, frames: trio.MemorySendChannel, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None: ...


class Sink(Part, Protocol):
    """Takes frames from a ``FanOut.sink``; ``flush`` is its interrupt hook, called synchronously by the hub:
    afterwards nothing queued before the interrupt may be heard from it."""

    def flush(self) -> None: ...

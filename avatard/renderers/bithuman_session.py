"""The bitHuman adapter's asyncio side: one SDK runtime and the interrupt generation it has seen.

:class:`SdkSession` lives in the bridge's asyncio thread. The trio side
(:class:`~avatard.renderers.bithuman.BithumanRenderer`) makes one once the runtime exists and from then on
only hands its methods to :mod:`avatard.core.aio_bridge` (``aio.run(session.push, ...)``,
``aio.call_soon(session.flush, ...)``, ``aio.open_stream(session.frames)``): it never reads or writes the
session's attributes, and the session never touches the renderer's. Each thread's state is in its own
object and the bridge is the only way across.

The generation: the trio side counts interrupts and passes the count along with every call. Calls reach
the session in the order they were made (the bridge is FIFO), so a push or flush made before an interrupt
that arrives after it is dropped here, and every frame the SDK produces is tagged with the generation
current when it came out (the trio side shows frames tagged older silent).

Errors are not handled here: an SDK call that raises reaches the trio side through the bridge, where it is
a renderer failure (``RendererFailed``), never a discarded call.

No trio and no SDK import: the runtime and the SDK's ``VideoControl`` class are handed in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..constants import RATE


class SdkSession:
    """One ``AsyncBithuman`` runtime, driven from the trio side through the bridge (asyncio thread only)."""

    def __init__(self, runtime: Any, video_control: type, *, generation: int) -> None:
        self._runtime = runtime
        self._video_control = video_control
        self._generation = generation  # the newest interrupt the SDK has seen

    async def push(self, generation: int, data: bytes) -> bool:
        """Hand 16 kHz int16 speech to the SDK; False if an interrupt got here first (then it was not pushed)."""
        if generation < self._generation:
            return False
        await self._runtime.push_audio(data, RATE, last_chunk=False)
        return True

    async def flush(self, generation: int) -> None:
        """End of the utterance, unless an interrupt got here first."""
        if generation >= self._generation:
            await self._runtime.flush()

    def interrupt(self, generation: int) -> None:
        """Drop the utterance in flight; later frames carry ``generation``."""
        self._generation = generation
        self._runtime.interrupt()

    async def gesture(self, name: str) -> None:
        """Play a bitHuman action."""
        await self._runtime.push(self._video_control(action=name))

    async def frames(self) -> AsyncIterator[tuple[int, Any]]:
        """The SDK's frames, each as ``(generation current when it came out, VideoFrame)``; endless."""
        frames = self._runtime.run()
        try:
            async for video_frame in frames:
                yield self._generation, video_frame
        finally:
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()

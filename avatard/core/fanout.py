"""Fan-out: every rendered frame to every sink (WebSocket server, speaker, window, recorder).

The renderer is the clock and never waits, so the fan-out never waits either: each sink has its own
bounded channel, and a sink that has not taken its previous frames loses the new one (counted per sink).

Stale speech is silenced here, once, where a frame leaves the fan-out for a sink: a frame rendered
before the latest interrupt (an older *generation*) that a sink takes after it gets silent audio, so
no speech from before an interrupt reaches any sink after it, however long the frame sat in a queue.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import attrs
import numpy as np
import trio

from .messages import Frame

logger = logging.getLogger("avatard.fanout")

# Frames the renderer may be ahead of the fan-out task. It only passes references along, so 2 is
# plenty; the renderer drops (and counts) when even that is full.
RENDER_QUEUE = 2
# Default per-sink room: 10 frames = 0.4 s at 25 fps, enough to absorb a scheduling hiccup.
SINK_BUFFER = 10


def silence_if_stale(frame: Frame, generation: int) -> Frame:
    """``frame`` as a sink may play it now that ``generation`` is current."""
    if frame.generation == generation:
        return frame
    return attrs.evolve(frame, audio=np.zeros_like(frame.audio), speaking=False, generation=generation)


class SinkFrames:
    """A sink's end of the fan-out: an async iterator of frames, stale ones already silenced."""

    def __init__(self, receive: trio.MemoryReceiveChannel, current_generation: Callable[[], int]) -> None:
        self._receive = receive
        self._current_generation = current_generation

    def __aiter__(self) -> SinkFrames:
        return self

    async def __anext__(self) -> Frame:
        try:
            frame = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        return silence_if_stale(frame, self._current_generation())


class _Sink:
    def __init__(self, name: str, send: trio.MemorySendChannel) -> None:
        self.name = name
        self.send = send
        self.dropped = 0


class FanOut:
    """``current_generation()`` is the renderer's generation (it moves on every interrupt)."""

    def __init__(self, current_generation: Callable[[], int]) -> None:
        self._current_generation = current_generation
        self._sinks: list[_Sink] = []
        self.frames_dropped = 0

    @property
    def generation(self) -> int:
        """The renderer's current interrupt generation."""
        return self._current_generation()

    @contextlib.contextmanager
    def sink(self, name: str, buffer: int = SINK_BUFFER):
        """Register a sink for the duration of the ``with``; yields its :class:`SinkFrames`.

        Full-policy: when the sink has ``buffer`` frames waiting, the new frame is dropped for it (counted).
        """
        send, receive = trio.open_memory_channel(buffer)
        entry = _Sink(name, send)
        self._sinks.append(entry)
        try:
            yield SinkFrames(receive, self._current_generation)
        finally:
            self._sinks.remove(entry)
            send.close()
            receive.close()
            if entry.dropped:
                logger.info("sink %s dropped %d frames", name, entry.dropped)

    async def run(self, frames: trio.MemoryReceiveChannel) -> None:
        async with frames:
            async for frame in frames:
                for sink in self._sinks:
                    try:
                        sink.send.send_nowait(frame)
                    except trio.WouldBlock:
                        sink.dropped += 1
                        self.frames_dropped += 1
                    except trio.BrokenResourceError:
                        pass

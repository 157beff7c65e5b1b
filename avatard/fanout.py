"""Fan-out: every rendered frame to every sink (WebSocket server, speaker, window, recorder).

The renderer is the clock and never waits, so the fan-out never waits either: each sink has its own
bounded channel, and a sink that has not taken its previous frames loses the new one (counted per sink).
Frames rendered before the latest interrupt but still in flight get their audio silenced here, so no
speech from before an interrupt reaches any sink after it.
"""

from __future__ import annotations

import contextlib
import logging

import attrs
import numpy as np
import trio

logger = logging.getLogger("avatard.fanout")

# Frames the renderer may be ahead of the fan-out task. It only passes references along, so 2 is
# plenty; the renderer drops (and counts) when even that is full.
RENDER_QUEUE = 2
# Default per-sink room: 10 frames = 0.4 s at 25 fps, enough to absorb a scheduling hiccup.
SINK_BUFFER = 10


class _Sink:
    def __init__(self, name: str, send: trio.MemorySendChannel) -> None:
        self.name = name
        self.send = send
        self.dropped = 0


class FanOut:
    def __init__(self, current_generation) -> None:
        self._current_generation = current_generation
        self._sinks: list[_Sink] = []
        self.frames_dropped = 0

    @contextlib.contextmanager
    def sink(self, name: str, buffer: int = SINK_BUFFER):
        """Register a sink for the duration of the ``with``; yields its receive channel of frames."""
        send, receive = trio.open_memory_channel(buffer)
        entry = _Sink(name, send)
        self._sinks.append(entry)
        try:
            yield receive
        finally:
            self._sinks.remove(entry)
            send.close()
            if entry.dropped:
                logger.info("sink %s dropped %d frames", name, entry.dropped)

    async def run(self, frames: trio.MemoryReceiveChannel) -> None:
        async with frames:
            async for frame in frames:
                if frame.generation != self._current_generation():
                    frame = attrs.evolve(frame, audio=np.zeros_like(frame.audio), speaking=False,
                                         generation=self._current_generation())
                for sink in self._sinks:
                    try:
                        sink.send.send_nowait(frame)
                    except trio.WouldBlock:
                        sink.dropped += 1
                        self.frames_dropped += 1
                    except trio.BrokenResourceError:
                        pass

"""The brain's input: two bounded lanes, the operator's before everyone else's.

The operator (``avatarctl say`` / ``ask`` on the control socket) has a lane of its own, read first, so
it never waits behind what browsers, the microphone or an audio file sent. The shared lane carries
everything else:

- typed turns from browsers are put without waiting (:meth:`put_nowait`): a full lane refuses them
  with :class:`Busy`, so a flood is answered with errors, not queued;
- camera frames and presence greetings are put without waiting too, and dropped when it is full (stale by
  the time there would be room);
- audio waits for room (:meth:`put`): speech must not be lost, and waiting stops that source's reader,
  which is TCP backpressure to that one client.

An interrupt empties both lanes at once (:meth:`drain`), so no turn queued before it is answered after it.
The brain reads the lanes like a receive channel (``async with inputs: async for message in inputs``),
which is what it was given before there were two; tests may still hand a brain a plain channel.

Rejected: a forwarder task merging two memory channels into the brain's one. The brain stops reading
while it is busy speaking, so the forwarder would block holding a browser turn and the operator's
message would wait behind it again; and an interrupt could not reach the turn in the forwarder's hands.
"""

from __future__ import annotations

import collections

import trio

from ..errors import Busy
from .messages import UserText

# Operator requests waiting for the brain. An operator sends a few by hand or from a script; past
# this they are refused (Busy), never waited for: `avatarctl say` answers within a second.
OPERATOR_LANE = 8
# Everything else waiting for the brain: audio chunks (40 ms each), typed turns, camera frames and
# greetings. Full: audio waits (backpressure), typed turns are refused, camera frames and greetings are
# dropped (avatard.core.vision, Hub._greet).
SHARED_LANE = 16


class InputLanes:
    def __init__(self, operator_size: int = OPERATOR_LANE, shared_size: int = SHARED_LANE) -> None:
        self._operator: collections.deque = collections.deque()
        self._shared: collections.deque = collections.deque()
        self._operator_size = operator_size
        self._shared_size = shared_size
        self._turns: collections.Counter[str] = collections.Counter()  # source -> its UserText in _shared
        self._data = trio.lowlevel.ParkingLot()  # the brain, waiting for input
        self._room = trio.lowlevel.ParkingLot()  # audio sources, waiting for room in the shared lane
        self._closed = False

    # -- sources (through the hub) -------------------------------------------------------------------

    @property
    def shared_full(self) -> bool:
        return len(self._shared) >= self._shared_size

    def turns_waiting(self, source: str) -> int:
        """Typed turns from ``source`` not yet taken by the brain."""
        return self._turns[source]

    def put_operator(self, message) -> None:
        if len(self._operator) >= self._operator_size:
            raise Busy(f"{len(self._operator)} operator requests are already waiting for the brain; try again shortly")
        self._append(self._operator, message)

    def put_nowait(self, message) -> None:
        if self.shared_full:
            raise Busy(f"the avatar has {len(self._shared)} inputs waiting; try again after it answers")
        self._append(self._shared, message)

    async def put(self, message) -> None:
        while self.shared_full and not self._closed:
            await self._room.park()
        if self._closed:
            raise trio.BrokenResourceError("the brain has stopped reading its input")
        self._append(self._shared, message)

    def drain(self) -> int:
        """Drop everything waiting in both lanes (an interrupt); returns how many inputs were dropped."""
        dropped = len(self._operator) + len(self._shared)
        self._operator.clear()
        self._shared.clear()
        self._turns.clear()
        self._room.unpark_all()
        return dropped

    def _append(self, lane: collections.deque, message) -> None:
        if self._closed:
            raise trio.BrokenResourceError("the brain has stopped reading its input")
        lane.append(message)
        if lane is self._shared and isinstance(message, UserText):
            self._turns[message.source] += 1
        self._data.unpark()

    # -- the brain -----------------------------------------------------------------------------------

    async def receive(self):
        await trio.lowlevel.checkpoint()
        while not (self._operator or self._shared):
            if self._closed:
                raise trio.EndOfChannel
            await self._data.park()
        if self._operator:
            return self._operator.popleft()
        message = self._shared.popleft()
        if isinstance(message, UserText):
            self._turns[message.source] -= 1
            if not self._turns[message.source]:
                del self._turns[message.source]
        self._room.unpark()
        return message

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """The brain stops reading: waiting sources get BrokenResourceError, later puts too."""
        self._closed = True
        self._room.unpark_all()
        self._data.unpark_all()

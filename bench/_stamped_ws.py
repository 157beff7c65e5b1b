"""A WebSocket client that knows when each message reached its socket: the kernel's receive time.

A bench that reads three clients on a 2-core box, beside the daemon and the Live test server, adds its own
scheduling to any time it takes after a read returns: trio-websocket's reader task wakes, parses, queues,
and only then does ``get_message`` hand the message over (p95 ~4 ms of bench scheduling, measured in
bench/latency.py). That time is the bench's, not the daemon's, and a browser on another machine does not
pay it. The kernel stamps every segment as it lands in the socket (``SO_TIMESTAMPNS``, socket(7)), so each
message here comes with two times, both ``time.perf_counter()``:

- ``arrived``: the kernel's receive stamp of the last segment the read that completed the message took.
  TCP reports the stamp of the last segment a ``recvmsg`` consumed (``tcp_recv_timestamp`` in
  net/ipv4/tcp.c), so when one read takes the message and more after it, the stamp is later than the
  message's own arrival: never earlier, so never flattering.
- ``read``: when this process's read of it returned (trio-websocket's ``get_message`` returns later still:
  after its reader task has parsed the message and handed it over).

The stamp is CLOCK_REALTIME; it is moved onto ``perf_counter`` (CLOCK_MONOTONIC) with the offset between the
two clocks taken at each read (so a step of the wall clock during a run moves nothing).
"""

from __future__ import annotations

import collections
import socket
import struct
import time

import _common as c
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

# <asm-generic/socket.h>: SO_TIMESTAMPNS (SO_TIMESTAMPNS_OLD, 35), whose control message type is the same
# number (SCM_TIMESTAMPNS); Python's socket module names neither.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: tv_sec, tv_nsec


class Closed(Exception):
    """The daemon closed the connection (or it broke); ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StampedWebSocket:
    """One client connection: ``get_message()`` returns ``(message, arrived, read)``; text is ``str``."""

    def __init__(self, stream: trio.SocketStream, protocol: WSConnection) -> None:
        self._stream = stream
        self._protocol = protocol
        self._send_lock = trio.Lock()  # the reader answers pings while the bench sends its own messages
        self._ready: collections.deque[tuple[str | bytes, float, float]] = collections.deque()
        self._partial: list[str | bytes] = []

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws") -> StampedWebSocket:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await sock.connect((host, port))
        client = cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))
        await client._send(Request(host=f"{host}:{port}", target=path))
        while True:
            events, _, _ = await client._receive_events()
            for event in events:
                if isinstance(event, AcceptConnection):
                    return client
                if isinstance(event, RejectConnection):
                    raise Closed(f"handshake refused: HTTP {event.status_code}")

    async def send_message(self, text: str) -> None:
        await self._send(TextMessage(text))

    async def get_message(self) -> tuple[str | bytes, float, float]:
        while not self._ready:
            events, arrived, read = await self._receive_events()
            for event in events:
                await self._handle(event, arrived, read)
        return self._ready.popleft()

    async def _send(self, event) -> None:
        async with self._send_lock:
            await self._stream.send_all(self._protocol.send(event))

    async def _receive_events(self) -> tuple[list, float | None, float]:
        """One read: the events it completed, the kernel's stamp of its last segment and when it returned (perf)."""
        data, ancillary, _flags, _address = await self._stream.socket.recvmsg(
            c.BROWSER_READ_BYTES, socket.CMSG_SPACE(TIMESPEC.size))
        read = time.perf_counter()
        wall_offset = time.time() - read
        arrived = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = TIMESPEC.unpack_from(payload)
                arrived = seconds + nanoseconds * 1e-9 - wall_offset
        if data and arrived is None:
            raise RuntimeError("the kernel gave no receive timestamp (SO_TIMESTAMPNS)")
        self._protocol.receive_data(data or None)
        events = list(self._protocol.events())
        if not data and not events:
            raise Closed("connection closed without a close frame")
        return events, arrived, read

    async def _handle(self, event, arrived: float | None, read: float) -> None:
        if isinstance(event, Ping):
            await self._send(event.response())
        elif isinstance(event, CloseConnection):
            raise Closed(f"{event.code} {event.reason or ''}".strip())
        elif isinstance(event, Message):
            self._partial.append(event.data)
            if event.message_finished:
                joiner = b"" if isinstance(event, BytesMessage) else ""
                self._ready.append((joiner.join(self._partial), arrived, read))
                self._partial = []

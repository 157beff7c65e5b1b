"""The control socket: a Unix stream socket speaking :mod:`avatard.protocol.control` for ``avatarctl``.

Each connection is served by its own task; a bad request gets an error reply and the connection goes
on (an oversized line closes that connection, since its framing is lost). ``subscribe`` turns the
connection into an event stream that ends when the client hangs up. A connection that sends no request
for :data:`IDLE_TIMEOUT` is closed, and at most :data:`MAX_CONNECTIONS` are served at once: past that
the *oldest* is closed, so an operator's fresh ``avatarctl`` is always served however many stuck
connections came before it (refusing the newest would lock the operator out instead).

The socket file is created with its final mode (a umask around ``bind``), never chmod-ed after: there
is no moment when another user could connect. A path in a shared directory (the ``/tmp`` fallback)
that exists and belongs to someone else is refused, since they could have planted it.
"""

from __future__ import annotations

import base64
import collections
import errno
import logging
import os
import socket as stdlib_socket

import cv2
import trio

from ..core import metrics
from ..core.hub import Hub
from ..errors import ConfigError, ProtocolError, Refused
from ..protocol import control as proto

logger = logging.getLogger("avatard.control")

SOCKET_MODE = 0o660  # owner and group (e.g. an "avatard" group for operators); nobody else
READ_CHUNK = 4096
# A client that does not read its replies for this long is gone or hostile; drop it so a stuck
# subscriber holds no resources.
SEND_TIMEOUT = 5.0
SNAPSHOT_QUALITY = 90
# avatarctl sends its request at once; a connection quiet this long (subscribers excepted) is a leak.
IDLE_TIMEOUT = 10.0
# Operators run a handful of avatarctl commands and subscribers; past this the oldest connection is closed.
MAX_CONNECTIONS = 32


def _check_owner(path: str) -> None:
    """Refuse a socket path (or a symlink there) that another user owns: they may have planted it."""
    try:
        owner = os.lstat(path).st_uid
    except FileNotFoundError:
        return
    if owner != os.getuid():
        raise ConfigError(f"--control-socket: {path} exists and belongs to uid {owner}, not us; remove it or choose "
                          "another path")


async def _bind(path: str) -> trio.socket.SocketType:
    """Bind the socket file, replacing a stale one left by a crash but never a live daemon's."""
    _check_owner(path)
    if os.path.exists(path):
        probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            await probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
        else:
            raise ConfigError(f"--control-socket: another avatard is already listening at {path}")
        finally:
            probe.close()
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    # The umask is process-wide; bind() is the only file creation in this instant of the one trio thread.
    old_umask = os.umask(0o777 & ~SOCKET_MODE)
    try:
        await sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--control-socket: cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    sock.listen(64)
    return sock


async def serve_control(path: str, hub: Hub, registry, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen at ``path`` until cancelled; the socket file is removed on the way out. ``registry`` is the
    daemon's metrics registry (``avatarctl metrics``)."""
    sock = await _bind(path)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            logger.info("control socket at %s", path)
            # Every connection's cancel scope, oldest first: what is closed when there are too many.
            connections: collections.deque[trio.CancelScope] = collections.deque()
            failing = False
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        if not failing:  # one line per burst, not one per retry
                            logger.warning("control accept failed (%s); retrying", exc.strerror)
                        failing = True
                        await trio.sleep(0.1)
                        continue
                    raise
                failing = False
                nursery.start_soon(_connection, stream, hub, registry, connections)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    with trio.fail_after(SEND_TIMEOUT):
        await stream.send_all(data)


async def _connection(stream: trio.SocketStream, hub: Hub, registry, connections: collections.deque) -> None:
    splitter = proto.LineSplitter()
    scope = trio.CancelScope()
    connections.append(scope)
    while len(connections) > MAX_CONNECTIONS:
        connections.popleft().cancel()
    try:
        with scope:
            await _serve(stream, hub, registry, splitter)
    finally:
        if scope in connections:
            connections.remove(scope)


async def _serve(stream: trio.SocketStream, hub: Hub, registry, splitter: proto.LineSplitter) -> None:
    try:
        async with stream:
            while True:
                data = b""
                with trio.move_on_after(IDLE_TIMEOUT):
                    data = await stream.receive_some(READ_CHUNK)
                if not data:
                    return
                try:
                    lines = splitter.feed(data)
                except ProtocolError as exc:
                    await _send(stream, proto.error(exc.message, exc.code))
                    return
                for line in lines:
                    try:
                        request = proto.parse_request(line)
                    except ProtocolError as exc:
                        await _send(stream, proto.error(exc.message, exc.code))
                        continue
                    if request.cmd == "subscribe":
                        await _subscribe(stream, hub, request.events)
                        return
                    await _send(stream, await _execute(request, hub, registry))
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass  # the client went away or stopped reading; nothing to tell anyone


async def _execute(request: proto.Request, hub: Hub, registry) -> bytes:
    try:
        if request.cmd == "ping":
            return proto.ok(pong=True)
        if request.cmd == "status":
            return proto.ok(**hub.status())
        if request.cmd == "metrics":
            return proto.ok(text=metrics.render(registry).decode(), content_type=metrics.CONTENT_TYPE)
        if request.cmd == "interrupt":
            hub.interrupt("avatarctl")
            return proto.ok()
        if request.cmd == "replay":
            hub.replay("avatarctl")
            return proto.ok()
        if request.cmd == "gestures":
            return proto.ok(gestures=hub.gestures)
        if request.cmd == "gesture":
            hub.gesture(request.name, "avatarctl")
            return proto.ok(gesture=request.name)
        if request.cmd == "say":
            hub.say(request.text)  # the operator's lane: queued at once, or Busy saying why
            return proto.ok()
        if request.cmd == "ask":
            hub.ask(request.text, "avatarctl")
            return proto.ok()
        if request.cmd == "look":
            await hub.look(request.image, "avatarctl")
            return proto.ok()
        if request.cmd == "camera":
            hub.camera(request.state == "on", "avatarctl")
            return proto.ok(camera=hub.vision.state)
        if request.cmd == "snapshot":
            frame = hub.last_frame
            if frame is None:
                raise Refused("no frame rendered yet")
            ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
            if not ok:
                raise Refused(f"frame {frame.index} could not be encoded as JPEG")
            return proto.ok(index=frame.index, width=frame.image.shape[1], height=frame.image.shape[0],
                            jpeg=base64.b64encode(jpeg.tobytes()).decode())
    except Refused as exc:
        return proto.error(str(exc), exc.code)
    raise AssertionError(f"unhandled command {request.cmd}")  # parse_request only admits known commands


async def _subscribe(stream: trio.SocketStream, hub: Hub, kinds: frozenset[str] | None) -> None:
    with hub.events.subscribe(kinds) as events:
        await _send(stream, proto.ok(subscribed=sorted(kinds) if kinds else "all"))
        if kinds is None or "status" in kinds:  # start with where things stand, then changes
            camera = (hub.events.last_camera_status,) if hub.vision is not None else ()
            for status in (hub.events.last_brain_status, hub.events.last_status, *camera):
                await _send(stream, proto.encode({"event": "status", "timestamp": None, **status}))
        async with trio.open_nursery() as nursery:
            # Reading detects the client hanging up even while no events flow.
            nursery.start_soon(_wait_for_hangup, stream, nursery.cancel_scope)
            try:
                async for event in events:
                    await _send(stream, proto.encode({"event": event.kind, "timestamp": event.timestamp,
                                                      **event.data}))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                # Gone, or not reading. Handled here: raised in a nursery's body these would reach _connection
                # inside an ExceptionGroup, which its except clause does not match, and end the control server.
                nursery.cancel_scope.cancel()


async def _wait_for_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(READ_CHUNK):
            pass  # a subscriber has nothing more to say; ignore anything it writes
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()

"""Server mode: the page, the WebSocket media stream and browser input, on one TCP port.

Every frame is JPEG-encoded once and the same bytes go to every client. Each client has its own
queues and sender task, so a slow client only hurts itself:

- video: the newest :data:`VIDEO_BACKLOG` frames; older ones are dropped (counted) when it falls behind;
- audio and JSON: never dropped while the client is kept, but a client more than
  :data:`MAX_AUDIO_BACKLOG` chunks behind, or whose socket has taken nothing for :data:`MAX_SEND_STALL`
  seconds, is disconnected with close code 4000 ("too slow"; a peer that stopped reading altogether
  cannot receive the close frame and just sees the connection end);
- the renderer and the encoder never wait for any client.

Strangers on the LAN are held to deadlines at every stage they control (request head, handshake,
pong) and to the caps of :mod:`avatard.server.guard`; what each client may do is its role
(:mod:`avatard.server.access`).

On an interrupt every client's queued audio is discarded before the ``interrupted`` status is queued,
so browsers flush their playback and no speech from before the interrupt plays after it.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import logging
import sys
import time

import cv2
import trio
import trio_websocket
from wsproto.utilities import LocalProtocolError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ..constants import BROWSER_EVENT_KINDS, RATE
from ..core import metrics
from ..core.audio import StreamResampler, downmix, pcm16_to_array
from ..core.hub import Hub
from ..errors import ConfigError, ProtocolError, Refused
from ..protocol import media as wire
from .access import TALK, Access
from .guard import Connection, Guard
from .http_front import ReplayStream, handshake_problem, read_head, respond, respond_json, static_file

logger = logging.getLogger("avatard.ws")

VIDEO_BACKLOG = 5  # frames (0.2 s at 25 fps): a client this far behind sees the newest picture, not old ones
MAX_AUDIO_BACKLOG = 125  # chunks (5 s at 25 fps): past this the client cannot catch up; disconnect it
# JSON messages (events, error replies) waiting for one client. A browser takes a handful a second; one
# that lets this many pile up (e.g. by sending bad input without reading the errors) is disconnected.
MAX_JSON_BACKLOG = 256
# While this many JSON messages wait, the client's reader reads no more of its input: a burst of requests
# (each answered) slows down to the pace at which the client takes the answers, instead of piling them
# up to MAX_JSON_BACKLOG and getting itself evicted.
REPLY_BACKLOG = 64
# A single send that has not completed for this long means the peer stopped reading (its TCP window is
# shut). Without this rule a stall would only be noticed once the kernel's buffers, up to tens of MiB on
# loopback, had filled behind it.
MAX_SEND_STALL = 5.0
# Frames waiting for JPEG encoding (0.32 s). Encoding takes ~3 ms; the room is for CPU contention on a
# busy box. Beyond it the fan-out drops (counted), for every client at once, so it is generous.
ENCODER_BUFFER = 8
# Frames waiting for the audio pump, which only packs and queues bytes: it falls this far behind (0.4 s)
# only when the process is starved; then the fan-out drops the frame's audio for every client (counted).
AUDIO_SINK_BUFFER = 10
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB = 32 s of 16 kHz audio in one message; larger closes with 1009
CLOSE_TOO_SLOW = 4000
CLOSE_POLICY = 1008  # bad token or origin
CLOSE_FULL = 1013  # try again later: --max-clients or --max-clients-per-ip reached
CLOSE_TIMEOUT = 1.0  # a stalled client cannot take a close frame; give up on politeness after this
# From the request head to an open WebSocket. A browser needs one round trip; a peer that is slower is
# holding a socket open on purpose (the head itself has http_front.HEAD_TIMEOUT).
HANDSHAKE_TIMEOUT = 5.0
# Every client is pinged this often and must answer within PONG_TIMEOUT, whether or not anything is sent
# to it: a client that asked for no media and never reads would otherwise hold its slot for ever.
# Browsers answer pings themselves, even from a background tab.
PING_INTERVAL = 5.0
PONG_TIMEOUT = 5.0
# Connections still before their WebSocket session (head, handshake, page). 64 concurrent page loads is
# far more than a kiosk needs; past it the oldest of the busiest address is closed (see guard.py).
MAX_PENDING = 64
# accept() failing for lack of file descriptors: wait this long (after closing the oldest pending
# connection) before trying again, and log once per burst rather than once per try.
ACCEPT_RETRY = 0.1
FD_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
WEBSOCKET_PATHS = ("/", "/ws")


class Client:
    """One browser: its queues, its preferences and its counters."""

    def __init__(self, client_id: str, ws: trio_websocket.WebSocketConnection, remote: str, role: str) -> None:
        self.id = client_id
        self.ws = ws
        self.remote = remote
        self.role = role  # access.TALK or access.WATCH
        self.want_video = True
        self.want_audio = True
        self._media: collections.deque = collections.deque()  # ("audio"|"json", payload), in order
        # The items of each kind in _media, kept so the per-frame checks are O(1).
        self._queued: collections.Counter[str] = collections.Counter()
        self._video: collections.deque = collections.deque()
        self._wake = trio.Event()
        self._replies_taken = trio.Event()  # set when the JSON backlog falls below REPLY_BACKLOG
        self._resampler: StreamResampler | None = None  # for the rate this client sends at
        self.too_slow: str | None = None  # why it was disconnected for being too slow
        self._sending_since: float | None = None  # when the send in progress started
        self.video_dropped = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.scope = trio.CancelScope()

    def push_json(self, text: str) -> None:
        if self._queued["json"] >= MAX_JSON_BACKLOG:
            self._disconnect_slow(f"left {MAX_JSON_BACKLOG} messages unread")
            return
        self._media.append(("json", text))
        self._queued["json"] += 1
        self._wake.set()

    def push_audio(self, audio: bytes) -> None:
        """Queue one tick's audio (sent ahead of its video, which waits for JPEG encoding)."""
        if self._sending_since is not None and trio.current_time() - self._sending_since > MAX_SEND_STALL:
            self._disconnect_slow(f"took nothing for {MAX_SEND_STALL:g} s")
            return
        if not self.want_audio:
            return
        if self._queued["audio"] > MAX_AUDIO_BACKLOG:
            self._disconnect_slow(f"fell more than {MAX_AUDIO_BACKLOG} chunks behind")
            return
        self._media.append(("audio", audio))
        self._queued["audio"] += 1
        self._wake.set()

    def push_video(self, video: bytes) -> None:
        if not self.want_video or self.too_slow:
            return
        if len(self._video) >= VIDEO_BACKLOG:
            self._video.popleft()
            self.video_dropped += 1
        self._video.append(video)
        self._wake.set()

    def _disconnect_slow(self, why: str) -> None:
        self.too_slow = why
        self.scope.cancel()

    def flush_audio(self) -> None:
        self._media = collections.deque(item for item in self._media if item[0] != "audio")
        self._queued["audio"] = 0

    def resampler(self, rate: int) -> StreamResampler:
        """One stateful resampler, for the client's current rate (a client that switches rates restarts it)."""
        if self._resampler is None or self._resampler.in_rate != rate:
            self._resampler = StreamResampler(rate, RATE)
        return self._resampler

    def _next(self):
        if self._media:
            kind, message = self._media.popleft()
            self._queued[kind] -= 1
            if self._queued["json"] < REPLY_BACKLOG:
                self._replies_taken.set()
            return message
        if self._video:
            self.frames_sent += 1
            return self._video.popleft()
        return None

    async def sender(self) -> None:
        while True:
            message = self._next()
            if message is None:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            self._sending_since = trio.current_time()
            await self.ws.send_message(message)
            self._sending_since = None
            self.bytes_sent += len(message)

    async def replies_taken(self) -> None:
        """Wait until fewer than REPLY_BACKLOG JSON messages wait for this client (input backpressure)."""
        while self._queued["json"] >= REPLY_BACKLOG:
            self._replies_taken = trio.Event()
            await self._replies_taken.wait()

    async def keepalive(self) -> None:
        """Ping every PING_INTERVAL; no pong within PONG_TIMEOUT disconnects the client."""
        while True:
            await trio.sleep(PING_INTERVAL)
            with trio.move_on_after(PONG_TIMEOUT) as waited:
                await self.ws.ping()
            if waited.cancelled_caught:
                self._disconnect_slow(f"did not answer a ping within {PONG_TIMEOUT:g} s")
                return

    def info(self) -> dict:
        return {"remote": self.remote, "role": self.role, "frames_sent": self.frames_sent, "video_dropped": self.video_dropped,
                "queued": len(self._media) + len(self._video), "bytes_sent": self.bytes_sent}


class WsServer:
    """The WebSocket/HTTP front end and the sink that feeds its clients. Built before the hub (which
    flushes it on interrupts and shows its counters); :meth:`serve` gets the hub its clients drive."""

    name = "websocket"

    def __init__(self, config, fanout, registry) -> None:
        self.config = config
        self.fanout = fanout
        self.registry = registry  # behind GET /metrics
        self.access = Access.from_config(config)
        self.guard = Guard(max_pending=MAX_PENDING, max_per_address=config.max_clients_per_ip)
        self.hub: Hub | None = None  # given to serve()
        self.clients: dict[str, Client] = {}
        self._ids = itertools.count(1)
        self.refused = 0
        self.accept_failures = 0  # accept() calls that failed for lack of file descriptors
        self._closed_bytes = 0  # bytes_sent of clients that have left, so the total only grows
        self._closed_video_dropped = 0
        self.port: int | None = None
        self.encode_failures = 0  # frames OpenCV could not JPEG-encode (sent as audio only)

    @property
    def bytes_sent(self) -> int:
        return self._closed_bytes + sum(c.bytes_sent for c in self.clients.values())

    @property
    def video_dropped(self) -> int:
        return self._closed_video_dropped + sum(c.video_dropped for c in self.clients.values())

    def status(self) -> dict:
        return {"clients": len(self.clients), "client_list": [dict(id=c.id, **c.info()) for c in self.clients.values()],
                "bytes_sent": self.bytes_sent, "video_dropped": self.video_dropped, "refused": self.refused,
                "pending_connections": self.guard.pending, "pending_evicted": self.guard.evicted,
                "accept_failures": self.accept_failures, "server": f"http://{self.config.host}:{self.port}/"}

    def flush(self) -> None:
        """Interrupt hook: every client's queued audio goes before the ``interrupted`` status is queued."""
        for client in self.clients.values():
            client.flush_audio()

    async def serve(self, hub: Hub, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.hub = hub
        try:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        except OSError as exc:
            raise ConfigError(f"--port: cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}") from None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._audio_pump)
            nursery.start_soon(self._video_encoder)
            nursery.start_soon(self._event_pump)
            for listener in listeners:
                nursery.start_soon(self._accept, listener, nursery)
            self.port = listeners[0].socket.getsockname()[1]
            self._announce()
            task_status.started(self.port)

    def _announce(self) -> None:
        """Tell the operator where the page is. The URL with the token is what the operator must open
        (jupyter prints it the same way), so it goes to the terminal, and only when stderr is one: a log
        (journald, a file) gets where the token is kept instead, never the token."""
        shown = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        url = f"http://{shown}:{self.port}/"
        if self.access.open:
            logger.info("open %s in a browser (WebSocket at / and /ws; listening on %s)", url, self.config.host)
            if not self.config.loopback_only:
                logger.warning("--no-auth: anyone who can reach %s:%d can make the avatar speak and read what users "
                               "say", self.config.host, self.port)
            return
        where = self.config.token_file or "--token / AVATARD_TOKEN"
        logger.info("open %s?token=<token> in a browser (token in %s; listening on %s)", url, where, self.config.host)
        if sys.stderr.isatty():
            print(f"\n    {url}?token={self.config.token}\n", file=sys.stderr, flush=True)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """Accept for ever. Out of file descriptors, close the oldest pending connection and retry: one
        log line per burst (trio's serve_listeners logs a traceback every 0.1 s), and the connections
        already held keep being served."""
        async with listener:
            failures = 0
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in FD_ERRNOS:
                        raise
                    if not failures:
                        logger.warning("cannot accept connections: %s (%d pending, %d clients); closing the oldest "
                                       "pending ones until it passes", exc.strerror, self.guard.pending, len(self.clients))
                    failures += 1
                    self.accept_failures += 1
                    self.guard.evict_oldest()
                    await trio.sleep(ACCEPT_RETRY)
                    continue
                if failures:
                    logger.warning("accepting connections again after %d failed attempts", failures)
                    failures = 0
                nursery.start_soon(self._handle_tcp, stream)

    # -- fan-out to clients -----------------------------------------------------------------------

    # Audio and video are two fan-out sinks: a frame's audio goes to every client the moment the frame
    # exists, never behind the JPEG encoding of the frame before it (a re-phased frame can follow its
    # predecessor by 5 ms, while encoding takes ~3); its video follows once encoded, with the same timestamp.

    async def _audio_pump(self) -> None:
        with self.fanout.sink("websocket-audio", AUDIO_SINK_BUFFER) as frames:
            async for frame in frames:
                if not self.clients:
                    continue
                audio = wire.encode_audio(RATE, 1, frame.audio.astype("<i2").tobytes(), frame.timestamp)
                for client in list(self.clients.values()):
                    client.push_audio(audio)

    async def _video_encoder(self) -> None:
        quality = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        with self.fanout.sink("websocket-video", ENCODER_BUFFER) as frames:
            async for frame in frames:
                if not any(client.want_video for client in self.clients.values()):
                    continue  # nobody watches: no JPEG
                # cv2 releases the GIL while encoding, so the event loop (and the audio) keeps going.
                ok, jpeg = await trio.to_thread.run_sync(cv2.imencode, ".jpg", frame.image, quality)
                if not ok:
                    self.encode_failures += 1
                    continue
                height, width = frame.image.shape[:2]
                video = wire.encode_video(width, height, float(self.hub.fps), jpeg.tobytes(), frame.timestamp)
                for client in list(self.clients.values()):
                    client.push_video(video)

    async def _event_pump(self) -> None:
        with self.hub.events.subscribe(BROWSER_EVENT_KINDS) as events:
            async for event in events:
                data, readers = self._readers(event)
                text = wire.json_message(event.kind, **data, timestamp=event.timestamp)
                for client in readers:
                    client.push_json(text)

    def _readers(self, event) -> tuple[dict, list[Client]]:
        """Who sees an event. What a user said is theirs: it goes back to the client that said it and,
        with ``--share-transcripts``, to every client that may talk; never to viewers or other users.
        The avatar's own words are heard by everyone anyway. The routing ``source`` stays off the wire."""
        if event.kind != "transcription" or event.data.get("role") != "user":
            return event.data, list(self.clients.values())
        data = {k: v for k, v in event.data.items() if k != "source"}
        source = event.data.get("source")
        return data, [c for c in self.clients.values()
                      if c.id == source or (self.config.share_transcripts and c.role == TALK)]

    # -- connections ----------------------------------------------------------------------------

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        try:
            address, port = stream.socket.getpeername()[:2]
        except OSError:
            await stream.aclose()
            return
        connection = self.guard.enter(address)
        try:
            with connection.scope:
                await self._serve_connection(stream, connection, f"{address}:{port}")
        except BaseException as exc:
            if not peer_went_away(exc):
                raise
            logger.debug("%s:%s went away: %r", address, port, exc)
        finally:
            self.guard.leave(connection)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream, connection: Connection, remote: str) -> None:
        head = await read_head(stream)
        if head is None:
            return
        if head.is_websocket and head.path in WEBSOCKET_PATHS:
            problem = handshake_problem(head)
            if problem is not None:
                status, text, headers = problem
                await respond(stream, head, status, text.encode() + b"\n", "text/plain", headers)
            else:
                await self._websocket(ReplayStream(stream, head.raw), head, connection, remote)
        elif head.method not in ("GET", "HEAD"):
            await respond(stream, head, 405, b"method not allowed\n", "text/plain", (("allow", "GET, HEAD"),))
        elif head.path == "/metrics":
            if self.access.may_operate(head):
                await respond(stream, head, 200, metrics.render(self.registry), metrics.CONTENT_TYPE)
            else:
                await respond(stream, head, 401, b"token required (Authorization: Bearer, or ?token=)\n", "text/plain",
                              (("www-authenticate", 'Bearer realm="avatard"'),))
        elif head.path == "/healthz":
            detail = {"clients": len(self.clients)} if self.access.may_operate(head) else {}
            await respond_json(stream, head, 200, {"ok": True, **detail})
        elif (found := static_file(head.path)) is not None:
            await respond(stream, head, 200, found[0], found[1])
        else:
            await respond(stream, head, 404, b"not found\n", "text/plain")

    def _refusal(self, head, role: str | None, connection: Connection) -> tuple[int, str] | None:
        if role is None:
            return CLOSE_POLICY, "invalid or missing token"
        if self.access.origin_refused(head):
            return CLOSE_POLICY, f"origin {wire.quote(head.headers['origin'])} is not allowed"
        if len(self.clients) >= self.config.max_clients:
            return CLOSE_FULL, f"server full ({self.config.max_clients} clients)"
        if not self.guard.promote(connection):
            return CLOSE_FULL, f"too many clients from your address ({self.config.max_clients_per_ip})"
        return None

    async def _websocket(self, stream: ReplayStream, head, connection: Connection, remote: str) -> None:
        async with trio.open_nursery() as nursery:
            ws = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                request = await trio_websocket.wrap_server_stream(nursery, stream, max_message_size=MAX_MESSAGE_BYTES)
                ws = await request.accept()
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            role = self.access.role(head)
            refusal = self._refusal(head, role, connection)
            if refusal is not None:
                self.refused += 1
                logger.info("refused %s: %s", remote, refusal[1])
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose(*refusal)
                nursery.cancel_scope.cancel()
                return
            client = Client(f"client_{next(self._ids)}", ws, remote, role)
            await self._run_client(client)
            nursery.cancel_scope.cancel()

    async def _run_client(self, client: Client) -> None:
        self.clients[client.id] = client
        self.hub.events.publish("client", action="joined", client_id=client.id, remote=client.remote, role=client.role)
        logger.info("%s connected from %s (%s)", client.id, client.remote, client.role)
        client.push_json(wire.json_message("status", status="connected", client_id=client.id, timestamp=time.time()))
        client.push_json(wire.json_message("status", **self.hub.events.last_brain_status, timestamp=time.time()))
        client.push_json(wire.json_message("status", **self.hub.events.last_status, timestamp=time.time()))
        client.push_json(wire.json_message("gestures", gestures=self.hub.gestures))
        try:
            with client.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_until_done, client.sender, nursery.cancel_scope)
                    nursery.start_soon(_until_done, functools.partial(self._reader, client), nursery.cancel_scope)
                    nursery.start_soon(_until_done, client.keepalive, nursery.cancel_scope)
        finally:
            del self.clients[client.id]
            self._closed_bytes += client.bytes_sent
            self._closed_video_dropped += client.video_dropped
            with trio.CancelScope(shield=True):
                if client.too_slow:
                    logger.warning("%s %s; disconnecting", client.id, client.too_slow)
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await client.ws.aclose(CLOSE_TOO_SLOW, "too slow: fell behind the live stream")
                else:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await client.ws.aclose()
            self.hub.events.publish("client", action="left", client_id=client.id, video_dropped=client.video_dropped,
                                    too_slow=client.too_slow is not None)
            logger.info("%s disconnected (%d frames sent, %d dropped)", client.id, client.frames_sent, client.video_dropped)

    async def _reader(self, client: Client) -> None:
        while True:
            await client.replies_taken()
            message = await client.ws.get_message()
            try:
                await self._dispatch(client, message)
            except ProtocolError as exc:
                client.push_json(wire.json_message("error", code=exc.code, message=exc.message))
            except Refused as exc:
                client.push_json(wire.json_message("error", code=exc.code, message=str(exc)))

    async def _dispatch(self, client: Client, message: str | bytes) -> None:
        msg = wire.parse_client_binary(message) if isinstance(message, bytes) else wire.parse_client_text(message)
        if client.role != TALK and not isinstance(msg, wire.Subscribe):
            raise ProtocolError("forbidden", "this client may only watch; talking needs the token")
        if isinstance(msg, wire.AudioInput):
            samples = downmix(pcm16_to_array(msg.pcm, msg.channels))
            samples = client.resampler(msg.sample_rate).process(samples)
            if len(samples):
                await self.hub.user_audio(samples, client.id)
        elif isinstance(msg, wire.TextInput):
            self.hub.user_text(msg.text, client.id)
        elif isinstance(msg, wire.CameraInput):
            await self.hub.see_jpeg(msg.jpeg, client.id)
        elif isinstance(msg, wire.Interrupt):
            self.hub.interrupt(client.id)
        elif isinstance(msg, wire.Gesture):
            self.hub.gesture(msg.name, client.id)
        elif isinstance(msg, wire.Subscribe):
            if msg.video is not None:
                client.want_video = msg.video
            if msg.audio is not None:
                client.want_audio = msg.audio
            client.push_json(wire.json_message("status", status="subscribed", video=client.want_video,
                                               audio=client.want_audio, timestamp=time.time()))


def peer_went_away(exc: BaseException) -> bool:
    """Whether ``exc`` (or every leaf of an exception group: trio-websocket's reader runs in our nursery)
    only says that the peer went away, which ends that one connection and nothing else.

    wsproto's LocalProtocolError is among them: trio-websocket answers a peer's Ping with a Pong even
    after our Close has put the connection in LOCAL_CLOSING, and wsproto refuses to send it
    (python-trio/trio-websocket#184, fix proposed in #198). A client pinging while we close it (a refusal,
    "too slow") must not take the server down.
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(peer_went_away(inner) for inner in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError))


async def _until_done(fn, scope: trio.CancelScope) -> None:
    """Run one part of a client; when it ends (peer closed, send failed) the others stop too."""
    try:
        await fn()
    except trio_websocket.ConnectionClosed:
        pass
    finally:
        scope.cancel()

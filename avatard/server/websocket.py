"""Server mode: the page, the WebSocket media stream and browser input, on one TCP port.

Every frame is JPEG-encoded once and the same bytes go to every client. Each client has its own
queues and sender task, so a slow client only hurts itself:

- video: the newest :data:`VIDEO_BACKLOG` frames; older ones are dropped (counted) when it falls behind;
- audio and JSON: never dropped while the client is kept, but a client more than
  :data:`MAX_AUDIO_BACKLOG` chunks behind, or whose socket has taken nothing for :data:`MAX_SEND_STALL`
  seconds, is disconnected with close code 4000 ("too slow"; a peer that stopped reading altogether
  cannot receive the close frame and just sees the connection end);
- the renderer and the encoder never wait for any client.

On an interrupt every client's queued audio is discarded before the ``interrupted`` status is queued,
so browsers flush their playback and no speech from before the interrupt plays after it.
"""

from __future__ import annotations

import collections
import functools
import hmac
import itertools
import logging
import time

import cv2
import trio
import trio_websocket

from ..constants import BROWSER_EVENT_KINDS, RATE
from ..core import metrics
from ..core.audio import StreamResampler, downmix, pcm16_to_array
from ..core.hub import Hub
from ..errors import ConfigError, ProtocolError, Refused
from ..protocol import media as wire
from .http_front import ReplayStream, read_head, respond, respond_json, static_file

logger = logging.getLogger("avatard.ws")

VIDEO_BACKLOG = 5  # frames (0.2 s at 25 fps): a client this far behind sees the newest picture, not old ones
MAX_AUDIO_BACKLOG = 125  # chunks (5 s at 25 fps): past this the client cannot catch up; disconnect it
# A single send that has not completed for this long means the peer stopped reading (its TCP window is
# shut). Without this rule a stall would only be noticed once the kernel's buffers, up to tens of MiB on
# loopback, had filled behind it.
MAX_SEND_STALL = 5.0
# Frames waiting for JPEG encoding (0.32 s). Encoding takes ~3 ms; the room is for CPU contention on a
# busy box. Beyond it the fan-out drops (counted), for every client at once, so it is generous.
ENCODER_BUFFER = 8
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB = 32 s of 16 kHz audio in one message; larger closes with 1009
CLOSE_TOO_SLOW = 4000
CLOSE_POLICY = 1008  # bad token or origin
CLOSE_FULL = 1013  # try again later: --max-clients reached
CLOSE_TIMEOUT = 1.0  # a stalled client cannot take a close frame; give up on politeness after this
WEBSOCKET_PATHS = ("/", "/ws")


class Client:
    """One browser: its queues, its preferences and its counters."""

    def __init__(self, client_id: str, ws: trio_websocket.WebSocketConnection, remote: str) -> None:
        self.id = client_id
        self.ws = ws
        self.remote = remote
        self.want_video = True
        self.want_audio = True
        self._media: collections.deque = collections.deque()  # ("audio"|"json", payload), in order
        self._audio_queued = 0  # the "audio" items in _media, kept so the per-frame check is O(1)
        self._video: collections.deque = collections.deque()
        self._wake = trio.Event()
        self._resampler: StreamResampler | None = None  # for the rate this client sends at
        self.too_slow = False
        self._sending_since: float | None = None  # when the send in progress started
        self.video_dropped = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.scope = trio.CancelScope()

    def push_json(self, text: str) -> None:
        self._media.append(("json", text))
        self._wake.set()

    def push_audio(self, audio: bytes) -> None:
        """Queue one tick's audio (sent ahead of its video, which waits for JPEG encoding)."""
        if self._sending_since is not None and trio.current_time() - self._sending_since > MAX_SEND_STALL:
            self._disconnect_slow()
            return
        if not self.want_audio:
            return
        if self._audio_queued > MAX_AUDIO_BACKLOG:
            self._disconnect_slow()
            return
        self._media.append(("audio", audio))
        self._audio_queued += 1
        self._wake.set()

    def push_video(self, video: bytes) -> None:
        if not self.want_video or self.too_slow:
            return
        if len(self._video) >= VIDEO_BACKLOG:
            self._video.popleft()
            self.video_dropped += 1
        self._video.append(video)
        self._wake.set()

    def _disconnect_slow(self) -> None:
        self.too_slow = True
        self.scope.cancel()

    def flush_audio(self) -> None:
        self._media = collections.deque(item for item in self._media if item[0] != "audio")
        self._audio_queued = 0

    def resampler(self, rate: int) -> StreamResampler:
        """One stateful resampler, for the client's current rate (a client that switches rates restarts it)."""
        if self._resampler is None or self._resampler.in_rate != rate:
            self._resampler = StreamResampler(rate, RATE)
        return self._resampler

    def _next(self):
        if self._media:
            kind, message = self._media.popleft()
            self._audio_queued -= kind == "audio"
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

    def info(self) -> dict:
        return {"remote": self.remote, "frames_sent": self.frames_sent, "video_dropped": self.video_dropped,
                "queued": len(self._media) + len(self._video), "bytes_sent": self.bytes_sent}


class WsServer:
    """The WebSocket/HTTP front end and the sink that feeds its clients. Built before the hub (which
    flushes it on interrupts and shows its counters); :meth:`serve` gets the hub its clients drive."""

    name = "websocket"

    def __init__(self, config, fanout, registry) -> None:
        self.config = config
        self.fanout = fanout
        self.registry = registry  # behind GET /metrics
        self.hub: Hub | None = None  # given to serve()
        self.clients: dict[str, Client] = {}
        self._ids = itertools.count(1)
        self.refused = 0
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
                "bytes_sent": self.bytes_sent, "video_dropped": self.video_dropped,
                "server": f"http://{self.config.host}:{self.port}/"}

    def flush(self) -> None:
        """Interrupt hook: every client's queued audio goes before the ``interrupted`` status is queued."""
        for client in self.clients.values():
            client.flush_audio()

    async def serve(self, hub: Hub, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.hub = hub
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._encoder)
            nursery.start_soon(self._event_pump)
            try:
                listeners = await nursery.start(functools.partial(trio.serve_tcp, self._handle_tcp, self.config.port,
                                                                  host=self.config.host))
            except OSError as exc:
                raise ConfigError(f"--port: cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}") from None
            self.port = listeners[0].socket.getsockname()[1]
            shown = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
            logger.info("open http://%s:%d/ in a browser (WebSocket at / and /ws; listening on %s)", shown, self.port,
                        self.config.host)
            task_status.started(self.port)

    # -- fan-out to clients -----------------------------------------------------------------------

    async def _encoder(self) -> None:
        quality = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        with self.fanout.sink("websocket", ENCODER_BUFFER) as frames:
            async for frame in frames:
                if not self.clients:
                    continue
                audio = wire.encode_audio(RATE, 1, frame.audio.astype("<i2").tobytes(), frame.timestamp)
                for client in list(self.clients.values()):
                    client.push_audio(audio)
                # cv2 releases the GIL while encoding, so the event loop (and the audio above) keeps going.
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
                text = wire.json_message(event.kind, **event.data, timestamp=event.timestamp)
                for client in list(self.clients.values()):
                    client.push_json(text)

    # -- connections ----------------------------------------------------------------------------

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        try:
            remote = "%s:%s" % stream.socket.getpeername()[:2]
        except OSError:
            return
        try:
            head = await read_head(stream)
            if head is None:
                return
            if head.is_websocket and head.path in WEBSOCKET_PATHS:
                await self._websocket(ReplayStream(stream, head.raw), head, remote)
            elif head.method not in ("GET", "HEAD"):
                await respond(stream, head, 405, b"method not allowed\n", "text/plain", (("allow", "GET, HEAD"),))
            elif head.path == "/metrics":
                await respond(stream, head, 200, metrics.render(self.registry), metrics.CONTENT_TYPE)
            elif head.path == "/healthz":
                await respond_json(stream, head, 200, {"ok": True, "clients": len(self.clients)})
            elif (found := static_file(head.path)) is not None:
                await respond(stream, head, 200, found[0], found[1])
            else:
                await respond(stream, head, 404, b"not found\n", "text/plain")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await stream.aclose()

    def _refusal(self, head) -> tuple[int, str] | None:
        token = self.config.token
        if token is not None:
            offered = head.query.get("token") or head.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(offered.encode(), token.encode()):
                return CLOSE_POLICY, "invalid or missing token"
        origin = head.headers.get("origin")
        if self.config.allow_origin and origin is not None and origin not in self.config.allow_origin:
            return CLOSE_POLICY, f"origin {origin} is not allowed"
        if len(self.clients) >= self.config.max_clients:
            return CLOSE_FULL, f"server full ({self.config.max_clients} clients)"
        return None

    async def _websocket(self, stream: ReplayStream, head, remote: str) -> None:
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(nursery, stream, max_message_size=MAX_MESSAGE_BYTES)
            ws = await request.accept()
            refusal = self._refusal(head)
            if refusal is not None:
                self.refused += 1
                logger.info("refused %s: %s", remote, refusal[1])
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose(*refusal)
                nursery.cancel_scope.cancel()
                return
            client = Client(f"client_{next(self._ids)}", ws, remote)
            await self._run_client(client)
            nursery.cancel_scope.cancel()

    async def _run_client(self, client: Client) -> None:
        self.clients[client.id] = client
        self.hub.events.publish("client", action="joined", client_id=client.id, remote=client.remote)
        logger.info("%s connected from %s", client.id, client.remote)
        client.push_json(wire.json_message("status", status="connected", client_id=client.id, timestamp=time.time()))
        client.push_json(wire.json_message("status", **self.hub.events.last_brain_status, timestamp=time.time()))
        client.push_json(wire.json_message("status", **self.hub.events.last_status, timestamp=time.time()))
        client.push_json(wire.json_message("gestures", gestures=self.hub.gestures))
        try:
            with client.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_until_done, client.sender, nursery.cancel_scope)
                    nursery.start_soon(_until_done, functools.partial(self._reader, client), nursery.cancel_scope)
        finally:
            del self.clients[client.id]
            self._closed_bytes += client.bytes_sent
            self._closed_video_dropped += client.video_dropped
            with trio.CancelScope(shield=True):
                if client.too_slow:
                    logger.warning("%s fell more than %d chunks behind; disconnecting", client.id, MAX_AUDIO_BACKLOG)
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await client.ws.aclose(CLOSE_TOO_SLOW, "too slow: fell behind the live stream")
                else:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await client.ws.aclose()
            self.hub.events.publish("client", action="left", client_id=client.id, video_dropped=client.video_dropped,
                                    too_slow=client.too_slow)
            logger.info("%s disconnected (%d frames sent, %d dropped)", client.id, client.frames_sent, client.video_dropped)

    async def _reader(self, client: Client) -> None:
        while True:
            message = await client.ws.get_message()
            try:
                await self._dispatch(client, message)
            except ProtocolError as exc:
                client.push_json(wire.json_message("error", code=exc.code, message=exc.message))
            except Refused as exc:
                client.push_json(wire.json_message("error", code="refused", message=str(exc)))

    async def _dispatch(self, client: Client, message: str | bytes) -> None:
        msg = wire.parse_client_binary(message) if isinstance(message, bytes) else wire.parse_client_text(message)
        if isinstance(msg, wire.AudioInput):
            samples = downmix(pcm16_to_array(msg.pcm, msg.channels))
            samples = client.resampler(msg.sample_rate).process(samples)
            if len(samples):
                await self.hub.user_audio(samples, client.id)
        elif isinstance(msg, wire.TextInput):
            await self.hub.ask(msg.text, client.id)
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


async def _until_done(fn, scope: trio.CancelScope) -> None:
    """Run one half of a client; when it ends (peer closed, send failed) the other half stops too."""
    try:
        await fn()
    except trio_websocket.ConnectionClosed:
        pass
    finally:
        scope.cancel()



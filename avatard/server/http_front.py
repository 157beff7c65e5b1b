"""The HTTP side of the server port: read a request head with h11, serve the page, or hand off.

``trio_websocket.serve_websocket`` answers a plain ``GET /`` with a bare 400 and has no hook for
pages, so we accept TCP ourselves, parse the request head with h11 while keeping the raw bytes, answer
page requests here, and give upgrade requests to trio-websocket through :class:`ReplayStream`, which
hands it the bytes we already read before reading on from the socket.
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import json
import mimetypes

import attrs
import h11
import trio

MAX_HEAD_BYTES = 16 * 1024  # browsers send well under 8 KiB of headers; h11's own default is 16 KiB too
HEAD_TIMEOUT = 10.0  # a peer that has not sent a request head by then is a slowloris, not a browser
READ_CHUNK = 4096
STATIC_DIR = importlib.resources.files("avatard.server") / "static"


@attrs.frozen
class RequestHead:
    method: str
    target: str
    headers: dict  # lower-case name -> value (last wins)
    raw: bytes = attrs.field(repr=False)  # every byte read so far, head and anything after it
    conn: h11.Connection = attrs.field(repr=False, eq=False)  # to answer the request with

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl
        return dict(parse_qsl(self.target.split("?", 1)[1])) if "?" in self.target else {}

    @property
    def is_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


async def read_head(stream: trio.abc.ReceiveStream) -> RequestHead | None:
    """Read one request head; None if the peer sent garbage, too much or nothing in time."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    raw = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if isinstance(event, h11.Request):
                headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
                return RequestHead(event.method.decode(), event.target.decode("latin-1"), headers, bytes(raw), conn)
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_CHUNK)
                if not data:
                    return None
                raw += data
                conn.receive_data(data)
            else:
                return None
    return None


class ReplayStream(trio.abc.Stream):
    """A stream that first returns bytes already read from ``stream``, then reads on from it."""

    def __init__(self, stream: trio.abc.Stream, already_read: bytes) -> None:
        self.stream = stream
        self._replay = already_read

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            size = len(self._replay) if max_bytes is None else max_bytes
            data, self._replay = self._replay[:size], self._replay[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def handshake_problem(head: RequestHead) -> tuple[int, str, tuple] | None:
    """Why an upgrade request is not a WebSocket handshake we accept (status, text, headers), or None.

    Answered here, not by trio-websocket: its ``wrap_server_stream`` answers a refused handshake but
    never returns, so every refusal would leak its task and socket (issue 17).
    """
    if head.headers.get("sec-websocket-version") != "13":
        return 426, "WebSocket version 13 required", (("sec-websocket-version", "13"),)
    if "upgrade" not in (token.strip().lower() for token in head.headers.get("connection", "").split(",")):
        return 400, "Connection: Upgrade required", ()
    key = head.headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64", ()
    return None


def static_file(path: str) -> tuple[bytes, str] | None:
    """The page's files, from the package (``/`` is ``index.html``); None for anything else."""
    name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
    if not name or "/" in name or name.startswith("."):
        return None
    resource = STATIC_DIR / name
    if not resource.is_file():
        return None
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or name.endswith(".js"):
        content_type = ("text/javascript" if name.endswith(".js") else content_type) + "; charset=utf-8"
    return resource.read_bytes(), content_type


async def respond(stream: trio.abc.SendStream, head: RequestHead, status: int, body: bytes, content_type: str,
                  extra_headers: tuple = ()) -> None:
    conn = head.conn
    headers = [("content-type", content_type), ("content-length", str(len(body))), ("cache-control", "no-store"),
               ("x-content-type-options", "nosniff"), ("connection", "close"), *extra_headers]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    if head.method != "HEAD":  # h11 knows a HEAD response has no body and refuses one
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def respond_json(stream: trio.abc.SendStream, head: RequestHead, status: int, obj) -> None:
    await respond(stream, head, status, json.dumps(obj).encode(), "application/json")

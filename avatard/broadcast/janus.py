"""One Janus server: keep our mountpoint on it, and send it the broadcast's RTP.

Two tasks per server, so a Janus that is down or slow never holds anyone else up:

- the *keeper* talks HTTP (httpx: its "Async Support" docs list trio beside asyncio; httpcore picks its trio
  backend by itself, checked by tests/test_broadcast.py): session, handle on
  the streaming plugin, then our mountpoint (``info`` if it is already there, else ``create``). It then asks
  ``info`` every POLL_INTERVAL seconds, which also keeps the session alive (any request on a session does;
  the default ``session_timeout`` is 60 s). A restarted Janus answers 458 (no such session) or 455 (no such
  mountpoint, since ``permanent: false`` mountpoints die with the process): the keeper starts over and
  re-creates it (counted in ``recreations``). A Janus that does not answer is retried with a bounded
  exponential backoff (BACKOFF_MIN .. BACKOFF_MAX); while it is away nothing is sent to it.
- the *sender* takes datagrams from a bounded channel (SEND_QUEUE) and sends them over UDP to the ports the
  mountpoint listens on. The broadcaster hands every server the same datagrams with ``send_nowait``: a full
  channel drops the datagram for this server only (counted in ``packets_dropped``), as does a server with
  no mountpoint yet.

The RTP input binds to the address the ``--janus`` URL names (``iface``), never to every interface: that
is the address avatard sends to, so nothing else on Janus's other networks can inject media into the
broadcast. The admin key goes only into ``create`` bodies: it is not logged, not in ``status()``, not in
error messages (JanusError carries Janus's reason, which never echoes it).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
from urllib.parse import urlsplit

import httpx
import trio

from ..errors import JanusError, JanusUnreachable
from ..protocol import janus as api

logger = logging.getLogger("avatard.broadcast.janus")

POLL_INTERVAL = 2.0  # how soon a restarted Janus is noticed; one small HTTP request per server per interval
HTTP_TIMEOUT = 5.0  # one request; Janus answers synchronous requests in milliseconds
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0  # a Janus back after a restart is found within this long
# Datagrams waiting for one server's UDP socket: ~1.5 s of video + audio at 1 Mbit/s. sendto() on UDP
# does not wait for the network, so this only fills when the event loop itself is starved.
SEND_QUEUE = 256
# Errors a UDP send may report for a destination that is away (an ICMP error from an earlier datagram,
# no route); the datagram is dropped and counted.
SEND_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EAGAIN,
               errno.ENOBUFS}


class JanusSink:
    """Our mountpoint on one Janus server. ``offer()`` is called by the broadcaster for every datagram."""

    def __init__(self, index: int, url: str, *, admin_key: str | None, mountpoint: int, video_codec: str,
                 pin: str | None, on_mountpoint=lambda: None) -> None:
        self.name = f"janus_{index}"
        self.url = url.rstrip("/")
        self._admin_key = admin_key
        self._mountpoint_id = mountpoint
        self._video_codec = video_codec
        self._pin = pin
        self._secret = api.mountpoint_secret(admin_key, mountpoint, secrets.token_hex(16))
        self._on_mountpoint = on_mountpoint  # a (re)made mountpoint wants a keyframe soon
        self._send, self._receive = trio.open_memory_channel(SEND_QUEUE)
        self._target: tuple[str, api.Ports] | None = None
        self._had_mountpoint = False  # once true, a create is a re-creation (Janus lost it: it restarted)
        self.recreations = 0
        self.packets_sent = 0
        self.packets_dropped = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._target is not None

    def status(self) -> dict:
        return {"name": self.name, "url": self.url, "connected": self.connected,
                "mountpoint": self._mountpoint_id if self.connected else None,
                "packets_sent": self.packets_sent, "packets_dropped": self.packets_dropped,
                "recreations": self.recreations, "last_error": self.last_error}

    def offer(self, kind: str, datagram: bytes) -> None:
        """Queue one datagram (``kind`` audio or video) for this server; never waits."""
        if self._target is None:
            self.packets_dropped += 1
            return
        try:
            self._send.send_nowait((kind, datagram))
        except trio.WouldBlock:
            self.packets_dropped += 1

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            await self._keeper()

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _post(self, http: httpx.AsyncClient, path: str, body: dict) -> dict:
        try:
            response = await http.post(self.url + path, json=body)
            reply = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JanusUnreachable(f"{self.url}: {type(exc).__name__} {str(exc)[:120]}".rstrip()) from None
        if not isinstance(reply, dict):
            raise JanusUnreachable(f"{self.url}: not a Janus reply")
        return reply

    async def _keeper(self) -> None:
        backoff = BACKOFF_MIN
        host = urlsplit(self.url).hostname or ""
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, trust_env=False) as http:
            while True:
                try:
                    iface = await self._resolve(host)
                    session = api.parse_id(await self._post(http, "", api.create_session()))
                    handle = api.parse_id(await self._post(http, f"/{session}", api.attach()))
                    mountpoint = api.Mountpoint(id=self._mountpoint_id, video_codec=self._video_codec, iface=iface,
                                                secret=self._secret, pin=self._pin)
                    path = f"/{session}/{handle}"
                    ports = await self._ensure(http, path, mountpoint)
                    self._target = (iface, ports)
                    self._had_mountpoint = True  # also when it was already there (avatard restarted, Janus did not)
                    self.last_error = None
                    backoff = BACKOFF_MIN
                    self._on_mountpoint()
                    while True:
                        await trio.sleep(POLL_INTERVAL)
                        ports = await self._ensure(http, path, mountpoint)
                        self._target = (iface, ports)
                except (JanusUnreachable, JanusError) as exc:
                    if self._target is not None or self.last_error != str(exc):
                        logger.warning("%s: %s; retrying", self.name, exc)
                    self._target = None
                    self.last_error = str(exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)

    async def _ensure(self, http: httpx.AsyncClient, path: str, mountpoint: api.Mountpoint) -> api.Ports:
        """The mountpoint's ports: from ``info`` when it exists, else from a fresh ``create``."""
        try:
            data = api.plugin_data(await self._post(http, path, api.message(mountpoint.info())))
        except JanusError as exc:
            if exc.code != api.NO_SUCH_MOUNTPOINT:
                raise
        else:
            try:
                return api.parse_info(data)
            except JanusError:  # Janus shows the ports only to whoever knows the mountpoint's secret
                raise JanusError(0, f"mountpoint {mountpoint.id} exists with a secret that is not ours (made by "
                                    "something else, or by avatard with another admin key); choose another "
                                    "--janus-mountpoint or destroy it") from None
        ports = api.parse_created(api.plugin_data(
            await self._post(http, path, api.message(mountpoint.create(self._admin_key)))))
        if self._had_mountpoint:
            self.recreations += 1
        logger.info("%s: mountpoint %d %s on %s (audio port %d, video port %d)", self.name, mountpoint.id,
                    "re-created" if self._had_mountpoint else "created", mountpoint.iface, ports.audio, ports.video)
        self._had_mountpoint = True
        return ports

    @staticmethod
    async def _resolve(host: str) -> str:
        """The IP address the URL's host names: the mountpoint's RTP input binds to it, and we send to it."""
        try:
            infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_DGRAM)
        except OSError as exc:
            raise JanusUnreachable(f"cannot resolve {host}: {exc.strerror or exc}") from None
        address = infos[0][4][0]
        if ipaddress.ip_address(address).is_unspecified:  # would bind the RTP input to every interface
            raise JanusError(0, f"{host} resolves to {address}; name the Janus machine's own address")
        return address

    # -- UDP -----------------------------------------------------------------------------------------

    async def _sender(self) -> None:
        sockets: dict[int, trio.socket.SocketType] = {}
        try:
            async for kind, datagram in self._receive:
                target = self._target
                if target is None:
                    self.packets_dropped += 1
                    continue
                address, ports = target
                family = trio.socket.AF_INET6 if ":" in address else trio.socket.AF_INET
                sock = sockets.get(family)
                if sock is None:
                    sock = sockets[family] = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
                try:
                    await sock.sendto(datagram, (address, ports.audio if kind == "audio" else ports.video))
                except OSError as exc:
                    if exc.errno not in SEND_ERRNOS:
                        raise
                    self.packets_dropped += 1
                else:
                    self.packets_sent += 1
        finally:
            for sock in sockets.values():
                sock.close()


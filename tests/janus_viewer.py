"""A WebRTC viewer of a Janus streaming mountpoint, with aiortc: for tests and bench/broadcast.py.

It speaks Janus's HTTP API like the /watch page does (create a session, attach janus.plugin.streaming,
``watch``, answer the plugin's offer, ``start``, long-poll for events, which also keeps the session
alive), then counts what arrives *without decoding*: each receiver's ``_handle_rtp_packet`` (the one
entry point aiortc's DTLS transport calls per RTP packet) is replaced by a counter, so 50 viewers cost
the test machine SRTP and bookkeeping, not 50 VP8 decoders. A video frame is counted at its last packet
(the RTP marker bit, RFC 7741 §4.1).

Each viewer runs in one asyncio loop shared by all viewers of a :class:`ViewerPool`, in its own thread.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import attrs
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

_tx = itertools.count(1)


@attrs.define
class Counts:
    started: float = 0.0  # monotonic time the viewer asked to watch
    first_frame: float | None = None
    video_packets: int = 0
    video_frames: int = 0
    video_bytes: int = 0
    audio_packets: int = 0
    audio_bytes: int = 0
    frame_times: list = attrs.Factory(list)  # monotonic time of each video frame's last packet
    connection_state: str = "new"
    error: str | None = None

    def fps(self, since: float, until: float) -> float:
        frames = [t for t in self.frame_times if since <= t < until]
        return len(frames) / (until - since)


class JanusViewer:
    def __init__(self, url: str, mountpoint: int, pin: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.mountpoint = mountpoint
        self.pin = pin
        self.counts = Counts()
        self.pc: RTCPeerConnection | None = None
        self._http: httpx.AsyncClient | None = None
        self._session: int | None = None

    async def _post(self, path: str, body: dict) -> dict:
        assert self._http is not None
        response = await self._http.post(self.url + path, json={**body, "transaction": f"v{next(_tx)}"})
        return response.json()

    async def _event(self, handle: int, want) -> dict:
        """Long-poll the session until an event for ``handle`` satisfies ``want``."""
        while True:
            response = await self._http.get(f"{self.url}/{self._session}", params={"maxev": 1}, timeout=35.0)
            event = response.json()
            if event.get("janus") == "event" and event.get("sender") == handle and want(event):
                return event

    async def watch(self) -> None:
        self._http = httpx.AsyncClient(timeout=10.0, trust_env=False)
        self.counts.started = time.monotonic()
        self._session = (await self._post("", {"janus": "create"}))["data"]["id"]
        handle = (await self._post(f"/{self._session}", {"janus": "attach", "plugin": "janus.plugin.streaming"}))["data"]["id"]
        body = {"request": "watch", "id": self.mountpoint}
        if self.pin is not None:
            body["pin"] = self.pin
        await self._post(f"/{self._session}/{handle}", {"janus": "message", "body": body})
        offer = (await self._event(handle, lambda e: "jsep" in e or "error_code" in e["plugindata"]["data"]))
        if "jsep" not in offer:
            raise RuntimeError(f"watch refused: {offer['plugindata']['data']}")
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: the test network is offline

        @pc.on("connectionstatechange")
        def _state() -> None:
            self.counts.connection_state = pc.connectionState

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["jsep"]["sdp"], type="offer"))
        for transceiver in pc.getTransceivers():
            self._count(transceiver.receiver, transceiver.kind)
        await pc.setLocalDescription(await pc.createAnswer())
        await self._post(f"/{self._session}/{handle}", {
            "janus": "message", "body": {"request": "start"},
            "jsep": {"type": "answer", "sdp": pc.localDescription.sdp}})
        asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        """Drain the session's events; each long poll also keeps the session alive."""
        try:
            while self._http is not None:
                await self._http.get(f"{self.url}/{self._session}", params={"maxev": 5}, timeout=35.0)
        except (httpx.HTTPError, ValueError):
            pass  # Janus went away; the counts show it

    def _count(self, receiver, kind: str) -> None:
        counts = self.counts

        async def handle_rtp_packet(packet, arrival_time_ms: int) -> None:
            if kind == "video":
                counts.video_packets += 1
                counts.video_bytes += len(packet.payload)
                if packet.marker:
                    now = time.monotonic()
                    counts.video_frames += 1
                    counts.frame_times.append(now)
                    if counts.first_frame is None:
                        counts.first_frame = now
            else:
                counts.audio_packets += 1
                counts.audio_bytes += len(packet.payload)

        receiver._handle_rtp_packet = handle_rtp_packet

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()


class ViewerPool:
    """Viewers in one asyncio loop in a background thread (the caller may be sync or trio code).

    The thread is started by the caller's thread, so it lives in the caller's network namespace.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.viewers: list[JanusViewer] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, url: str, mountpoint: int, count: int = 1, pin: str | None = None) -> list[JanusViewer]:
        new = [JanusViewer(url, mountpoint, pin) for _ in range(count)]

        async def start_all():
            await asyncio.gather(*(viewer.watch() for viewer in new))

        self.call(start_all())
        self.viewers += new
        return new

    def remove(self, viewers) -> None:
        async def close_all():
            await asyncio.gather(*(viewer.close() for viewer in viewers), return_exceptions=True)

        self.call(close_all())
        self.viewers = [v for v in self.viewers if v not in viewers]

    def close(self) -> None:
        self.remove(list(self.viewers))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

"""A WebRTC viewer without a browser: aiortc receives the daemon's media the way the page does.

It connects to the daemon's WebSocket, sends ``webrtc_offer`` (receive-only audio and video), sets the
``webrtc_answer`` and then decodes what arrives, counting frames, audio samples and the frame age (the render
time of a frame, recovered from its RTP timestamp and the first frame's, against the wall clock: daemon and
viewer share one clock on this machine). The WebRTC tests and ``bench/webrtc.py`` use it as the "many viewers"
side; it must run inside a client namespace of ``tests/netns.py`` (aioice offers no loopback candidates).

Run as a script it prints one JSON line of results::

    ip netns exec NS python tests/webrtc_viewer.py ws://198.18.1.1:8765/ws --seconds 10 --viewers 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import threading
import time

import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError


class Viewer:
    def __init__(self, url: str, pli_at: float | None = None) -> None:
        self.url = url
        self.pli_at = pli_at  # seconds after the answer: ask for a keyframe (RTCP PLI) as a browser would
        self.plis_sent = 0
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.ssl: ssl.SSLContext | None = None  # for wss://: trusts --cafile
        self.video_frames = 0
        self.audio_samples = 0
        self.audio_peak = 0
        self.first_frame_s: float | None = None  # from the offer to the first decoded frame
        self.frame_ages: list[float] = []
        self.messages: list[dict] = []
        self.client_id: str | None = None
        self._started = 0.0
        self._tasks: list[asyncio.Task] = []

    async def run(self, seconds: float, stop: asyncio.Event) -> dict:
        """Receive for ``seconds``, or until ``stop`` is set if that comes first; then the results."""
        async with websockets.connect(self.url, max_size=None, ssl=self.ssl) as ws:
            reader = asyncio.ensure_future(self._read(ws))
            self.pc.addTransceiver("video", direction="recvonly")
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.on("track", self._on_track)
            self._started = time.monotonic()
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await ws.send(json.dumps({"type": "webrtc_offer", "data": {"sdp": self.pc.localDescription.sdp}}))
            answer = await self._wait_for("webrtc_answer", 15)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            if self.pli_at is not None:
                self._tasks.append(asyncio.ensure_future(self._send_pli(self.pli_at)))
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass
            stats = await self._stats()
            for task in self._tasks + [reader]:
                task.cancel()
            await self.pc.close()
            return stats

    async def _read(self, ws) -> None:
        async for message in ws:
            if isinstance(message, str):
                m = json.loads(message)
                self.messages.append(m)
                if m["type"] == "status" and m["data"].get("status") == "connected":
                    self.client_id = m["data"]["client_id"]

    async def _wait_for(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if m["type"] == kind:
                    return m["data"]
                if m["type"] == "error":
                    raise RuntimeError(f"daemon refused the offer: {m['data']}")
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no {kind} within {timeout} s")

    async def _send_pli(self, delay: float) -> None:
        """aiortc's receiver sends PLIs only after losses it detects itself; this asks outright (its private
        ``_send_rtcp_pli``, as its jitter buffer does) for the video stream's SSRC."""
        await asyncio.sleep(delay)
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")
        ssrc = next(s.ssrc for s in (await receiver.getStats()).values() if s.type == "inbound-rtp")
        await receiver._send_rtcp_pli(ssrc)
        self.plis_sent += 1

    def _on_track(self, track) -> None:
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track) -> None:
        first_pts = first_wall = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                now = time.time()
                self.video_frames += 1
                if self.first_frame_s is None:
                    self.first_frame_s = time.monotonic() - self._started
                if first_pts is None:
                    first_pts, first_wall = frame.pts, now
                else:  # how much later than the first frame this one arrived, beyond its own spacing
                    self.frame_ages.append(now - first_wall - float((frame.pts - first_pts) * frame.time_base))
            else:
                samples = frame.to_ndarray()
                self.audio_samples += frame.samples
                self.audio_peak = max(self.audio_peak, int(abs(samples).max()) if samples.size else 0)

    async def _stats(self) -> dict:
        received = {}
        for stat in (await self.pc.getStats()).values():
            if stat.type == "inbound-rtp":
                received[stat.kind] = {"packets": stat.packetsReceived, "bytes": getattr(stat, "bytesReceived", 0),
                                       "lost": stat.packetsLost}
        return {"client_id": self.client_id, "video_frames": self.video_frames, "audio_samples": self.audio_samples,
                "audio_peak": self.audio_peak, "first_frame_s": self.first_frame_s, "frame_ages": self.frame_ages,
                "received": received, "plis_sent": self.plis_sent}


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--viewers", type=int, default=1)
    parser.add_argument("--pli-at", type=float, help="send one RTCP PLI this many seconds after the answer")
    parser.add_argument("--until-stdin-eof", action="store_true",
                        help="stop (and print the results) once stdin is closed, if before --seconds")
    parser.add_argument("--cafile", help="for wss:// URLs: the certificate to trust (the daemon's self-signed one)")
    args = parser.parse_args(argv)
    viewers = [Viewer(args.url, args.pli_at) for _ in range(args.viewers)]
    if args.url.startswith("wss:"):
        for viewer in viewers:
            viewer.ssl = ssl.create_default_context(cafile=args.cafile)
    stop = asyncio.Event()
    if args.until_stdin_eof:
        loop = asyncio.get_running_loop()
        threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    results = await asyncio.gather(*(v.run(args.seconds, stop) for v in viewers))
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

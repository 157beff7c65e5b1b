"""The asyncio side of one WebRTC viewer: aiortc's RTCPeerConnection, its two outgoing tracks, the microphone.

Only :mod:`avatard.server.webrtc` uses this, and only through the asyncio bridge (``AsyncioLoop.run`` /
``open_stream``): every method here runs on the bridge's loop. Nothing in it knows about trio.

How pre-encoded media gets out: a track's ``recv()`` returns ``av.Packet`` objects that are already VP8/H.264/
Opus (made once, for every viewer, by :mod:`avatard.media.encoder`); aiortc's RTCRtpSender then calls its
codec's ``pack()`` instead of ``encode()`` (``RTCRtpSender._next_encoded_frame``, aiortc >= 1.4, from
aiortc PR #559 "MediaStreamTrack.recv returning av.Packet"), so a peer costs packetization, SRTP and UDP only.
Two consequences handled here:

* the browser's keyframe requests (RTCP PLI/FIR) reach ``RTCRtpSender._send_keyframe()``, which only sets a
  flag its own encoder reads; with packets that flag is never read. So each video sender's ``_send_keyframe``
  is replaced by the shared encoder's ``request_keyframe`` (thread-safe, rate-limited there). A private
  attribute of aiortc: checked against 1.16, covered by the WebRTC browser tests (a viewer that lost packets
  recovers).
* the codec must be the one we encode: ``setCodecPreferences`` on the video transceiver narrows the answer
  to it (as aiortc's own examples/webcam/webcam.py ``force_codec`` does).

ICE: aiortc's ``RTCConfiguration()`` without ``iceServers`` means Google's public STUN server
(``aiortc.rtcicetransport``: ``if iceServers is None: ... stun:stun.l.google.com:19302``), which an offline box
waits seconds for while gathering; we always pass an explicit list, empty unless ``--ice-server`` was given.
aiortc does not trickle: the answer carries every local candidate, and the offer must carry the browser's.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable

import av
import numpy as np
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc.mediastreams import MediaStreamError

from ..errors import ProtocolError

logger = logging.getLogger("avatard.webrtc")

# Microphone frames (20 ms each) read from aiortc but not yet taken by the trio side: 1 s. aiortc's receiver
# queues decoded frames without limit, so we always read them; when trio falls this far behind (the brain's
# input lane is full) the oldest frame is dropped and counted.
MIC_BACKLOG = 50
ENDED_STATES = ("failed", "closed")


class PacketTrack(MediaStreamTrack):
    """An outgoing track that hands aiortc already-encoded ``av.Packet`` objects, one at a time.

    ``put`` waits until the sender has taken the previous packet (a queue of one), so the backlog, and its
    drop policy, stays in the encoder's subscription on the trio side, the one place it is written down."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[av.Packet] = asyncio.Queue(maxsize=1)

    async def put(self, packet: av.Packet) -> None:
        await self._queue.put(packet)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._queue.get()


class PeerSession:
    """One RTCPeerConnection, answering the browser's offer."""

    def __init__(self, ice_servers: list[RTCIceServer], video_codec: str,
                 request_keyframe: Callable[[], None]) -> None:
        self._ice_servers = ice_servers
        self._video_mime = f"video/{video_codec.upper()}"
        self._request_keyframe = request_keyframe
        self.pc: RTCPeerConnection | None = None
        self.video = PacketTrack("video")
        self.audio = PacketTrack("audio")
        self._microphone: MediaStreamTrack | None = None
        self._ended: asyncio.Event | None = None
        self.state = "new"
        self.mic_dropped = 0

    async def answer(self, offer_sdp: str, hear_microphone: bool) -> str:
        """Set the browser's offer, attach our tracks, return the answer's SDP (with all our candidates).

        ``hear_microphone``: take the browser's audio (a client that may talk); otherwise the audio m-line
        is answered send-only and the browser sends nothing."""
        self._ended = asyncio.Event()
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))

        @pc.on("connectionstatechange")
        def _changed() -> None:
            self.state = pc.connectionState
            if pc.connectionState in ENDED_STATES:
                self._ended.set()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, AssertionError, KeyError, IndexError) as exc:  # aiortc's SDP parser raises these
            raise ProtocolError("bad_offer", f"the SDP offer was refused: {str(exc)[:80] or type(exc).__name__}") from None
        kinds = {t.kind for t in pc.getTransceivers()}
        if kinds != {"audio", "video"} or len(pc.getTransceivers()) != 2:
            raise ProtocolError("bad_offer", "the offer must have exactly one audio and one video m-line")
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                sender = pc.addTrack(self.video)
                sender._send_keyframe = self._request_keyframe  # see the module docstring
                codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == self._video_mime]
                transceiver.setCodecPreferences(codecs)
                transceiver.direction = "sendonly"
            else:
                pc.addTrack(self.audio)
                if hear_microphone:
                    self._microphone = transceiver.receiver.track
                else:
                    transceiver.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def put_video(self, packet: av.Packet) -> None:
        await self.video.put(packet)

    async def put_audio(self, packet: av.Packet) -> None:
        await self.audio.put(packet)

    async def ended(self) -> str:
        """Wait until the connection has failed or closed; return that state."""
        await self._ended.wait()
        return self.state

    async def microphone(self) -> AsyncIterator[tuple[np.ndarray, int, int]]:
        """The browser's microphone as (interleaved int16 samples, rate, channels), 20 ms a frame.

        aiortc's receiver queues decoded frames without limit, so a task reads them all the time into a
        bounded backlog (MIC_BACKLOG, oldest dropped and counted); this generator yields from it."""
        if self._microphone is None:
            return
        backlog: collections.deque = collections.deque()
        arrived = asyncio.Event()

        async def read() -> None:
            while True:
                try:
                    frame = await self._microphone.recv()
                except MediaStreamError:
                    backlog.append(None)
                    arrived.set()
                    return
                if len(backlog) >= MIC_BACKLOG:
                    backlog.popleft()
                    self.mic_dropped += 1
                backlog.append(frame)
                arrived.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                while not backlog:
                    arrived.clear()
                    await arrived.wait()
                frame = backlog.popleft()
                if frame is None:
                    return
                channels = len(frame.layout.channels)
                yield frame.to_ndarray().reshape(-1).astype(np.int16, copy=False), frame.sample_rate, channels
        finally:
            reader.cancel()

    async def stats(self) -> dict:
        """What the daemon shows of this viewer: bytes sent, and what the browser's receiver reports
        (RTCP receiver reports: round-trip time, packets lost), per kind."""
        out: dict = {"state": self.state, "mic_dropped": self.mic_dropped}
        if self.pc is None:
            return out
        for stat in (await self.pc.getStats()).values():
            kind = getattr(stat, "kind", None)
            if stat.type == "outbound-rtp":
                out[f"{kind}_bytes_sent"] = stat.bytesSent
                out[f"{kind}_packets_sent"] = stat.packetsSent
            elif stat.type == "remote-inbound-rtp":
                out[f"{kind}_rtt"] = stat.roundTripTime
                out[f"{kind}_packets_lost"] = stat.packetsLost
                out[f"{kind}_fraction_lost"] = stat.fractionLost
            elif stat.type == "inbound-rtp":
                out["mic_packets_received"] = stat.packetsReceived
        return out

    async def close(self) -> None:
        self.video.stop()
        self.audio.stop()
        if self.pc is not None:
            await self.pc.close()


def ice_servers(urls: tuple[str, ...], username: str | None, password: str | None) -> list[RTCIceServer]:
    """``--ice-server`` URLs as aiortc wants them: an explicit list, empty by default (see the module docstring).
    aiortc uses the first STUN and the first TURN server it is given."""
    return [RTCIceServer(urls=url, username=username, credential=password) if url.startswith("turn")
            else RTCIceServer(urls=url) for url in urls]

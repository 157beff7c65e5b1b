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
  is replaced by one that counts the request and passes it to the shared encoder's ``request_keyframe``
  (thread-safe, rate-limited there). A private attribute of aiortc, checked against 1.16; the count shows in
  ``avatarctl status`` (``keyframe_requests``), and tests/test_webrtc.py checks a PLI gets through.
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
from ..media.encoder import AUDIO, AUDIO_BUFFER, VIDEO, VIDEO_BUFFER, DropPolicy, EncodedPacket

logger = logging.getLogger("avatard.webrtc")

# Microphone frames (20 ms each) read from aiortc but not yet taken by the trio side: 1 s. aiortc's receiver
# queues decoded frames without limit, so we always read them; when trio falls this far behind (the brain's
# input lane is full) the oldest frame is dropped and counted.
MIC_BACKLOG = 50
ENDED_STATES = ("failed", "closed")


class PacketTrack(MediaStreamTrack):
    """An outgoing track that hands aiortc already-encoded packets, one at a time, from a bounded queue.

    :meth:`offer` (called for every packet of the shared encoder, see :func:`deliver`) never waits: the queue
    holds ``capacity`` packets and its full-policy is the encoder's own :class:`DropPolicy` (drop + count; video
    resumes at a keyframe, which it asks for), the same rules as every other subscriber's. aiortc's sender
    normally takes each packet at once, so the queue is empty but for a viewer whose sender stalls."""

    def __init__(self, kind: str, capacity: int, request_keyframe: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self.policy = DropPolicy(kind, request_keyframe)
        self._capacity = capacity
        self._queue: collections.deque[EncodedPacket] = collections.deque()
        self._arrived = asyncio.Event()

    def offer(self, packet: EncodedPacket) -> None:
        if not self.policy.admit(packet):
            return
        if len(self._queue) >= self._capacity:
            self.policy.lost()
            return
        self._queue.append(packet)
        self.policy.passed()
        self._arrived.set()

    async def recv(self) -> av.Packet:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            await self._arrived.wait()
        return self._queue.popleft().to_av_packet()

    def stop(self) -> None:
        super().stop()
        self._arrived.set()  # a recv() waiting for a packet sees the end


def deliver(packet: EncodedPacket, tracks: tuple[PacketTrack, ...]) -> None:
    """One encoded packet to every peer's track of its kind: one hop into the asyncio loop per packet, whatever
    the number of viewers."""
    for track in tracks:
        track.offer(packet)


class PeerSession:
    """One RTCPeerConnection, answering the browser's offer."""

    def __init__(self, ice_servers: list[RTCIceServer], video_codec: str,
                 request_keyframe: Callable[[], None]) -> None:
        self._ice_servers = ice_servers
        self._video_mime = f"video/{video_codec.upper()}"
        self._request_keyframe = request_keyframe
        self.pc: RTCPeerConnection | None = None
        self.video = PacketTrack(VIDEO, VIDEO_BUFFER, request_keyframe)
        self.audio = PacketTrack(AUDIO, AUDIO_BUFFER, request_keyframe)
        self._microphone: MediaStreamTrack | None = None
        self._ended: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self.state = "new"
        self.mic_dropped = 0
        self.keyframe_requests = 0  # the browser's PLI/FIR

    def _keyframe_asked(self) -> None:
        self.keyframe_requests += 1
        self._request_keyframe()

    async def answer(self, offer_sdp: str, hear_microphone: bool) -> str:
        """Set the browser's offer, attach our tracks, return the answer's SDP (with all our candidates).

        ``hear_microphone``: take the browser's audio (a client that may talk); otherwise the audio m-line
        is answered send-only and the browser sends nothing."""
        self._ended = asyncio.Event()
        self._connected = asyncio.Event()
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))

        @pc.on("connectionstatechange")
        def _changed() -> None:
            self.state = pc.connectionState
            if pc.connectionState == "connected":
                self._connected.set()
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
                sender._send_keyframe = self._keyframe_asked  # see the module docstring
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

    async def connected(self) -> bool:
        """Wait until ICE and DTLS are up (True) or the connection ended before that (False)."""
        waits = [asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self._connected.is_set() and not self._ended.is_set()

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
        out: dict = {"state": self.state, "mic_dropped": self.mic_dropped, "video_dropped": self.video.policy.dropped,
                     "audio_dropped": self.audio.policy.dropped, "keyframe_requests": self.keyframe_requests}
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
                out[f"{kind}_fraction_lost"] = stat.fractionLost / 256  # RTCP: 8-bit fixed point (RFC 3550 6.4.1)
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

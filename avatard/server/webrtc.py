"""WebRTC viewers: the avatar as Opus + VP8 (or H.264) over RTP, the browser's microphone back as Opus.

A browser that can (the page decides, see static/webrtc.js) sends ``webrtc_offer`` on its WebSocket; the
WebSocket server hands it here and replies ``webrtc_answer``. The peer then belongs to that WebSocket client:
it lives in the client's nursery, ends with it (or with a new offer, ``webrtc_close``, or ICE failing), and
counts as that client for ``--max-clients``. Transcripts, status, gestures and text stay on the WebSocket.

Media out is encoded once for every viewer by :class:`avatard.media.encoder.MediaEncoder`. While any peer is
connected, WebRTC holds ONE subscription per kind and hands each packet to the asyncio loop once
(``AsyncioLoop.call_soon``), where it is offered to every peer's track (``webrtc_session.deliver``). Each
track has its own bounded queue with the encoder's full-policy (drop + count; video resumes at a keyframe it
asks for). Rejected: a subscription and a forwarding task per peer, waiting for each hand-off: two thread
hops per packet per viewer, and at 20 viewers on a busy 2-core box the round trips fell behind and ~30 % of
the packets were dropped (bench/webrtc.py). A viewer whose network is gone only fills its own queue:
aiortc sends UDP, which never blocks, and ICE consent checks (RFC 7675, aioice: 6 failures 5 s apart) end
the peer; the others never notice.

The microphone comes back through the same path as the WebSocket's binary audio (the client's resampler,
then ``Hub.user_audio`` into the shared input lane), with the browser's echo cancellation, noise
suppression and gain control applied (the page asks getUserMedia for them).

aiortc is asyncio-only: it runs on a private loop behind :mod:`avatard.core.aio_bridge`; its objects live in
:mod:`avatard.server.webrtc_session`. aiortc needs Python >= 3.11; without it :attr:`WebRtc.available` is
False and an offer is answered with error ``webrtc_unavailable`` (the page stays on the WebSocket stream).
"""

from __future__ import annotations

import itertools
import logging

import trio

from ..core.aio_bridge import AsyncioLoop, open_asyncio_loop
from ..errors import ProtocolError
from ..media.encoder import AUDIO, VIDEO, MediaEncoder

try:
    from . import webrtc_session
    UNAVAILABLE = None
except ImportError as exc:  # aiortc is declared for Python >= 3.11 only
    webrtc_session = None
    UNAVAILABLE = f"WebRTC is not available on this server ({exc.name} cannot be imported); use the WebSocket stream"

logger = logging.getLogger("avatard.webrtc")

# Offer in, answer out. aiortc gathers host candidates in milliseconds; with --ice-server a STUN or TURN
# exchange adds a round trip or two. A server that does not answer within this is treated as absent.
NEGOTIATION_TIMEOUT = 10.0
# A peer's close (DTLS close_notify, RTCP BYE, stopping its transports) on the way out.
CLOSE_TIMEOUT = 2.0
# How often each viewer's numbers (bytes sent, RTT, loss) are read from aiortc for status and /metrics.
STATS_INTERVAL = 2.0
# Microphone frames (20 ms) between the asyncio side and the trio side: 0.4 s; the asyncio side keeps its own
# bounded backlog beyond this (webrtc_session.MIC_BACKLOG), so aiortc is always read.
MIC_STREAM_BUFFER = 20


class Peer:
    """One viewer's numbers, for ``avatarctl status`` and ``/metrics``. Trio thread only."""

    def __init__(self, peer_id: str) -> None:
        self.id = peer_id
        self.scope = trio.CancelScope()
        self.state = "new"
        self.tracks = None  # its (video, audio) PacketTracks while connected
        self.stats: dict = {}
        self.bitrate = 0.0  # bits per second sent, audio + video, over the last STATS_INTERVAL
        self._last: tuple[float, int] | None = None

    def update(self, stats: dict, now: float) -> None:
        self.stats = stats
        self.state = stats.get("state", self.state)
        sent = stats.get("video_bytes_sent", 0) + stats.get("audio_bytes_sent", 0)
        if self._last is not None and now > self._last[0]:
            self.bitrate = 8 * (sent - self._last[1]) / (now - self._last[0])
        self._last = (now, sent)

    def info(self) -> dict:
        stats = self.stats
        rtt = stats.get("video_rtt") or stats.get("audio_rtt")
        return {"peer": self.id, "state": self.state, "bitrate_kbps": round(self.bitrate / 1000, 1),
                "rtt_ms": None if rtt is None else round(rtt * 1000, 1),
                "packets_lost": stats.get("video_packets_lost", 0) + stats.get("audio_packets_lost", 0),
                "fraction_lost": max(stats.get("video_fraction_lost", 0), stats.get("audio_fraction_lost", 0)),
                "video_dropped": stats.get("video_dropped", 0), "audio_dropped": stats.get("audio_dropped", 0),
                "mic_dropped": stats.get("mic_dropped", 0), "keyframe_requests": stats.get("keyframe_requests", 0)}


class WebRtc:
    """The WebRTC side of the server: the asyncio loop aiortc runs on, and the peers."""

    name = "webrtc"

    def __init__(self, config, encoder: MediaEncoder) -> None:
        self.config = config
        self.encoder = encoder
        self._aio: AsyncioLoop | None = None
        self._ids = itertools.count(1)
        self.peers: dict[str, Peer] = {}
        self.negotiations = 0
        self.failures = 0  # offers that did not end in a connected peer (bad SDP, timeout, ICE failure)
        # The connected peers' tracks by kind, as immutable snapshots (they cross to the asyncio thread with
        # each packet); _connected is set while there is at least one (the forwarders subscribe only then).
        self._tracks: dict[str, tuple] = {VIDEO: (), AUDIO: ()}
        self._connected = trio.Event()
        self.handoffs_refused = 0  # packets the asyncio loop could not take (MAX_PENDING_CALLS pending): all lost

    @property
    def available(self) -> bool:
        return webrtc_session is not None

    def status(self) -> dict:
        return {"available": self.available, "peers": len(self.peers), "negotiations": self.negotiations,
                "failures": self.failures, "handoffs_refused": self.handoffs_refused, "encoder": self.encoder.status()}

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the asyncio loop for aiortc open until cancelled (nothing to run without aiortc)."""
        if not self.available:
            task_status.started()
            return
        async with open_asyncio_loop() as aio:
            self._aio = aio
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._forward, aio, VIDEO)
                    nursery.start_soon(self._forward, aio, AUDIO)
                    task_status.started()
            finally:
                self._aio = None

    async def _forward(self, aio: AsyncioLoop, kind: str) -> None:
        """While any peer is connected: the encoder's packets of ``kind``, one hand-off each, to every peer's
        track. Nobody connected: no subscription, so nothing is encoded for WebRTC."""
        while True:
            await self._connected.wait()
            with self.encoder.subscribe(f"webrtc-{kind}", kind) as packets:
                async for packet in packets:
                    tracks = self._tracks[kind]
                    if not tracks:
                        break
                    try:
                        aio.call_soon(webrtc_session.deliver, packet, tracks)
                    except trio.WouldBlock:  # the loop is this far behind: the packet is lost for every peer
                        self.handoffs_refused += 1
                        if kind == VIDEO:
                            self.encoder.request_keyframe()

    def _attach(self, peer: Peer, session) -> None:
        peer.tracks = (session.video, session.audio)
        self._tracks = {VIDEO: (*self._tracks[VIDEO], session.video), AUDIO: (*self._tracks[AUDIO], session.audio)}
        self._connected.set()

    def _detach(self, peer: Peer) -> None:
        if peer.tracks is None:
            return
        video, audio = peer.tracks
        self._tracks = {VIDEO: tuple(t for t in self._tracks[VIDEO] if t is not video),
                        AUDIO: tuple(t for t in self._tracks[AUDIO] if t is not audio)}
        peer.tracks = None
        if not self._tracks[VIDEO]:
            self._connected = trio.Event()

    async def run_peer(self, client_id: str, offer_sdp: str, hear_microphone: bool, on_audio, on_end, *,
                       task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """One viewer, in the nursery of the WebSocket client it belongs to.

        ``started()`` gets ``(peer, answer_sdp)``; a bad offer or a negotiation that fails raises
        :class:`ProtocolError` before that (the client gets an ``error``). ``on_audio(samples, rate, channels)``
        takes the microphone (awaited: the input lane's backpressure), ``on_end(peer_id, state)`` hears that
        the connection failed or closed by itself."""
        if self._aio is None:
            raise ProtocolError("webrtc_unavailable", UNAVAILABLE or "WebRTC is not running")
        aio = self._aio
        self.negotiations += 1
        peer = Peer(f"{client_id}-rtc{next(self._ids)}")
        session = webrtc_session.PeerSession(
            webrtc_session.ice_servers(self.config.ice_server, self.config.turn_username, self.config.turn_password),
            self.config.webrtc_codec, self.encoder.request_keyframe)
        try:
            with trio.move_on_after(NEGOTIATION_TIMEOUT) as negotiation:
                answer = await aio.run(session.answer, offer_sdp, hear_microphone)
            if negotiation.cancelled_caught:
                raise ProtocolError("webrtc_failed", f"no answer within {NEGOTIATION_TIMEOUT:g} s")
        except BaseException:
            self.failures += 1
            await _close(aio, session)
            raise
        self.peers[peer.id] = peer
        logger.info("%s: WebRTC answer sent (%s video)", peer.id, self.config.webrtc_codec)
        try:
            task_status.started((peer, answer))
            with peer.scope:
                try:
                    state = await self._serve_peer(aio, session, peer, hear_microphone, on_audio)
                except Exception:  # aiortc failing for one viewer ends that viewer, not its WebSocket
                    logger.warning("%s failed", peer.id, exc_info=True)
                    state = "failed"
                peer.state = state
                if state == "failed":
                    self.failures += 1
                logger.info("%s: connection %s", peer.id, state)
                on_end(peer.id, state)
        finally:
            self._detach(peer)
            del self.peers[peer.id]
            await _close(aio, session)
            info = peer.info()
            logger.info("%s closed (%d video, %d audio packets dropped)", peer.id, info["video_dropped"],
                        info["audio_dropped"])

    async def _serve_peer(self, aio: AsyncioLoop, session, peer: Peer, hear_microphone: bool, on_audio) -> str:
        """Media both ways until the connection fails or closes; returns that state.

        The packets start once the connection is up: before that aiortc's senders take nothing, and the
        tracks would only fill and count drops; the first video packet is then a fresh keyframe."""
        if not await aio.run(session.connected):
            return await aio.run(session.ended)
        self._attach(peer, session)
        async with trio.open_nursery() as nursery:
            if hear_microphone:
                nursery.start_soon(self._microphone, aio, session, on_audio)
            nursery.start_soon(self._poll_stats, aio, session, peer)
            state = await aio.run(session.ended)
            nursery.cancel_scope.cancel()
        return state

    async def _microphone(self, aio: AsyncioLoop, session, on_audio) -> None:
        async with aio.open_stream(session.microphone, max_buffer=MIC_STREAM_BUFFER) as frames:
            async for samples, rate, channels in frames:
                await on_audio(samples, rate, channels)

    async def _poll_stats(self, aio: AsyncioLoop, session, peer: Peer) -> None:
        while True:
            peer.update(await aio.run(session.stats), trio.current_time())
            await trio.sleep(STATS_INTERVAL)


async def _close(aio: AsyncioLoop, session) -> None:
    """Close a peer's aiortc side, shielded and bounded (it runs while its task is being cancelled)."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await aio.run(session.close)
        except Exception:  # the loop is shutting down, or aiortc failed on the way out: the peer is gone either way
            logger.debug("closing a WebRTC session failed", exc_info=True)


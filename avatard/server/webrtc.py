"""WebRTC viewers: the avatar as Opus + VP8 (or H.264) over RTP, the browser's microphone back as Opus.

A browser that can (the page decides, see static/webrtc.js) sends ``webrtc_offer`` on its WebSocket; the
WebSocket server hands it here and replies ``webrtc_answer``. The peer then belongs to that WebSocket client:
it lives in the client's nursery, ends with it (or with a new offer, ``webrtc_close``, or ICE failing), and
counts as that client for ``--max-clients``. Transcripts, status, gestures and text stay on the WebSocket.

Media out is encoded once for every viewer by :class:`avatard.media.encoder.MediaEncoder`; each peer holds
one video and one audio subscription (bounded, drop + count, video resumes at a keyframe; see that module)
and forwards each packet into its aiortc track, waiting until aiortc has taken the previous one. A viewer
whose network is gone only fills its own subscription: aiortc sends UDP, which never blocks, and ICE
consent checks (RFC 7675, aioice: 6 failures 5 s apart) end the peer; the others never notice.

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
        self.subscriptions: dict = {}
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
                "video_dropped": self.subscriptions[VIDEO].dropped if VIDEO in self.subscriptions else 0,
                "audio_dropped": self.subscriptions[AUDIO].dropped if AUDIO in self.subscriptions else 0,
                "mic_dropped": stats.get("mic_dropped", 0)}


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

    @property
    def available(self) -> bool:
        return webrtc_session is not None

    def status(self) -> dict:
        return {"available": self.available, "peers": len(self.peers), "negotiations": self.negotiations,
                "failures": self.failures, "encoder": self.encoder.status()}

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the asyncio loop for aiortc open until cancelled (nothing to run without aiortc)."""
        if not self.available:
            task_status.started()
            return
        async with open_asyncio_loop() as aio:
            self._aio = aio
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._aio = None

    async def run_peer(self, client_id: str, offer_sdp: str, hear_microphone: bool, on_audio, on_end, *,
                       task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """One viewer, in the nursery of the WebSocket client it belongs to.

        ``started()`` gets ``(peer, answer_sdp)``; a bad offer or a negotiation that fails raises
        :class:`ProtocolError` before that (the client gets an ``error``). ``on_audio(samples, rate, channels)``
        takes the microphone (awaited: the input lane's backpressure), ``on_end(state)`` hears that the
        connection failed or closed by itself."""
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
                on_end(state)
        finally:
            del self.peers[peer.id]
            await _close(aio, session)
            info = peer.info()
            logger.info("%s closed (%d video, %d audio packets dropped)", peer.id, info["video_dropped"],
                        info["audio_dropped"])

    async def _serve_peer(self, aio: AsyncioLoop, session, peer: Peer, hear_microphone: bool, on_audio) -> str:
        """Media both ways until the connection fails or closes; returns that state."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, aio, peer, VIDEO, session.put_video)
            nursery.start_soon(self._forward, aio, peer, AUDIO, session.put_audio)
            if hear_microphone:
                nursery.start_soon(self._microphone, aio, session, on_audio)
            nursery.start_soon(self._poll_stats, aio, session, peer)
            state = await aio.run(session.ended)
            nursery.cancel_scope.cancel()
        return state

    async def _forward(self, aio: AsyncioLoop, peer: Peer, kind: str, put) -> None:
        """The encoder's packets of one kind into this peer's track, one at a time (the backlog and its drop
        policy are the subscription's)."""
        with self.encoder.subscribe(f"{peer.id}-{kind}", kind) as packets:
            peer.subscriptions[kind] = packets
            async for packet in packets:
                await aio.run(put, packet.to_av_packet())

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


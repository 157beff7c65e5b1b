"""The broadcast: the encoder's packets, packetized into RTP once, to every configured Janus server.

    MediaEncoder (encode once) --EncodedPacket--> [subscription: video 25, audio 50 (1 s); drop+count, see
    avatard.media.encoder] --> Broadcaster --RTP datagrams--> JanusSink x N [SEND_QUEUE each, drop+count]
    --UDP--> Janus

The broadcast is one subscriber of the encoder, however many Janus servers there are: the same
datagrams go to each of them through ``offer()`` (non-blocking), so one Janus that is away or slow never
delays another, the encoder or the renderer. A mountpoint that was just made (at start, or after a Janus
restart) asks the encoder for a keyframe, so its first viewers need not wait for the periodic one.
"""

from __future__ import annotations

import logging

import trio

from ..media.encoder import AUDIO, VIDEO, MediaEncoder
from .janus import JanusSink
from .rtp import Packetizer

logger = logging.getLogger("avatard.broadcast")

# The broadcast's subscriptions hold 1 s (the encoder's default is 0.2 s, for a viewer that must stay live).
# A lost video packet costs *every* viewer the pictures up to the next keyframe, and on a starved machine
# the pump can fall behind for a moment; a broadcast that lags a second then catches up is the better
# trade. Full-policy as for every subscription: dropped and counted (avatard.media.encoder).
VIDEO_BUFFER = 25
AUDIO_BUFFER = 50


class Broadcaster:
    """``status()`` gives ``janus`` (one entry per server, see :meth:`JanusSink.status`), ``broadcast_subscriptions``
    (packets the broadcast took from the encoder, and lost there) and ``broadcast_encoder``."""

    name = "broadcast"

    def __init__(self, encoder: MediaEncoder, urls: tuple[str, ...], *, admin_key: str | None, mountpoint: int,
                 pin: str | None) -> None:
        self.encoder = encoder
        self.servers = [JanusSink(index, url, admin_key=admin_key, mountpoint=mountpoint, video_codec=encoder.codec,
                                  pin=pin, on_mountpoint=encoder.request_keyframe)
                        for index, url in enumerate(urls, start=1)]
        self._subscriptions: list = []

    def status(self) -> dict:
        return {"janus": [server.status() for server in self.servers],
                "broadcast_subscriptions": [sub.info() for sub in self._subscriptions],
                "broadcast_encoder": self.encoder.status()}

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        packetizer = Packetizer(self.encoder.codec)
        with self.encoder.subscribe("janus-video", VIDEO, VIDEO_BUFFER) as video, \
                self.encoder.subscribe("janus-audio", AUDIO, AUDIO_BUFFER) as audio:
            self._subscriptions = [video, audio]
            async with trio.open_nursery() as nursery:
                for server in self.servers:
                    nursery.start_soon(server.run)
                nursery.start_soon(self._pump, video, VIDEO, packetizer.video)
                nursery.start_soon(self._pump, audio, AUDIO, packetizer.audio)
                task_status.started()

    async def _pump(self, packets, kind: str, packetize) -> None:
        async for packet in packets:
            for datagram in packetize(packet.to_av_packet()):
                for server in self.servers:
                    server.offer(kind, datagram)

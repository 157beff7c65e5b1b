"""The broadcast: the encoder's packets, packetized into RTP once, to every configured Janus server.

    encoder (encode once) --(kind, av.Packet)--> Broadcaster --RTP datagrams--> JanusSink x N --UDP--> Janus

The encoder's subscription is the only input; each datagram is handed to every server with ``offer()``
(non-blocking; a server that cannot take it drops and counts it), so one Janus that is away or slow
never delays another, the encoder or the renderer.
"""

from __future__ import annotations

import logging

import trio

from .janus import JanusSink
from .rtp import Packetizer

logger = logging.getLogger("avatard.broadcast")


class Broadcaster:
    name = "broadcast"

    def __init__(self, urls: tuple[str, ...], *, admin_key: str | None, mountpoint: int, video_codec: str,
                 pin: str | None, request_keyframe=lambda: None) -> None:
        self.video_codec = video_codec
        self.servers = [JanusSink(index, url, admin_key=admin_key, mountpoint=mountpoint, video_codec=video_codec,
                                  pin=pin, on_mountpoint=request_keyframe)
                        for index, url in enumerate(urls, start=1)]
        self.packets = 0  # encoded packets taken from the encoder

    def status(self) -> dict:
        return {"janus": [server.status() for server in self.servers]}

    async def run(self, packets, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """``packets``: an async iterable of (``"audio"`` | ``"video"``, av.Packet), e.g. the encoder's."""
        packetizer = Packetizer(self.video_codec)
        async with trio.open_nursery() as nursery:
            for server in self.servers:
                nursery.start_soon(server.run)
            task_status.started()
            async for kind, packet in packets:
                self.packets += 1
                datagrams = packetizer.audio(packet) if kind == "audio" else packetizer.video(packet)
                for datagram in datagrams:
                    for server in self.servers:
                        server.offer(kind, datagram)
            nursery.cancel_scope.cancel()

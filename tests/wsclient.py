"""A small test client for the daemon's WebSocket, written from docs/protocol.md."""

from __future__ import annotations

import json

import numpy as np
import trio
import trio_websocket

from avatard.protocol import media as wire


class Client:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.video: list[wire.VideoFrame] = []
        self.audio: list[wire.AudioChunk] = []
        self.json: list[dict] = []

    async def receive(self):
        message = await self.ws.get_message()
        if isinstance(message, bytes):
            item = wire.decode_server_binary(message)
            (self.video if isinstance(item, wire.VideoFrame) else self.audio).append(item)
            return item
        obj = json.loads(message)
        self.json.append(obj)
        return obj

    async def until(self, predicate, timeout: float = 10.0):
        """Receive until ``predicate(message)``; returns that message."""
        with trio.fail_after(timeout):
            while True:
                message = await self.receive()
                if predicate(message):
                    return message

    async def json_of(self, kind: str, timeout: float = 10.0, **match) -> dict:
        return await self.until(lambda m: isinstance(m, dict) and m["type"] == kind
                                and all(m["data"].get(k) == v for k, v in match.items()), timeout)

    async def send_json(self, obj) -> None:
        await self.ws.send_message(json.dumps(obj))


def samples(chunk: wire.AudioChunk) -> np.ndarray:
    return np.frombuffer(chunk.pcm, dtype="<i2")


def open_client(port: int, path: str = "/ws", ssl_context=None, host: str = "127.0.0.1", **kwargs):
    """A WebSocket to the daemon: ``ws://``, or ``wss://`` when an ``ssl_context`` is given."""
    scheme = "ws" if ssl_context is None else "wss"
    return trio_websocket.open_websocket_url(f"{scheme}://{host}:{port}{path}", ssl_context=ssl_context, **kwargs)

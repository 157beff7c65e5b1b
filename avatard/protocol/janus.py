"""The Janus HTTP API as far as avatard speaks it: request bodies in, replies parsed, no I/O.

Janus's REST transport (janus.transport.http) takes one JSON object per POST: ``{"janus": "create"}`` on the
base path makes a session, ``{"janus": "attach", "plugin": ...}`` on ``/<session>`` a plugin handle, and
``{"janus": "message", "body": ...}`` on ``/<session>/<handle>`` talks to the plugin. The streaming
plugin's ``create``/``info``/``destroy`` are synchronous: the answer comes in the POST's own response as
``{"janus": "success", "plugindata": {"data": ...}}``, with a plugin-level error as ``data.error_code``.
A session lives ``session_timeout`` seconds (60 by default, janus.jcfg) after its last request; any request
on it counts, as does ``{"janus": "keepalive"}``. A restarted Janus answers ``458 No such session``.
(Source: the "Streaming API" section of janus_streaming.c's documentation and the 1.1.2 samples in
/etc/janus, checked against Debian's janus 1.1.2 by tests/test_broadcast.py.)

The mountpoint is created with the 1.x multistream syntax (a ``media`` list, one entry per m-line, each
with ``type``, ``mid``, ``codec``, ``pt``, ``port``), not the deprecated ``audioport``/``videoport`` fields.
Per stream, ``iface`` ("network interface or IP address to bind to, if any (binds to all otherwise)") keeps
the RTP input off every other interface, ``port: 0`` lets Janus pick from its ``rtp_port_range`` (the
ports come back in ``created.stream.ports``), and ``bufferkf`` (``videobufferkf`` in the single-stream
syntax: "store the latest keyframe and send it immediately for new viewers") gives a new viewer a picture
at once. ``mcast`` is only for multicast groups and is left out. ``permanent: false``: the mountpoint
is not written into Janus's configuration file, so a restarted Janus has lost it and avatard makes it
again (:mod:`avatard.broadcast.janus`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools

import attrs

from ..errors import JanusError

STREAMING_PLUGIN = "janus.plugin.streaming"
AUDIO_MID, VIDEO_MID = "a", "v"
# Payload types: 111 for Opus and 96 for VP8 are what Janus's own samples and Chromium use; 126 for H.264
# (packetization-mode=1) is Janus's streaming sample's choice. Janus rewrites them per viewer anyway.
AUDIO_PT = 111
VIDEO_PT = {"vp8": 96, "h264": 126}
# H.264 baseline-compatible constrained profile 42e01f, packetization-mode 1 (FU-A), as browsers expect.
H264_FMTP = "profile-level-id=42e01f;packetization-mode=1"

# Janus error codes (janus/apierror.h and janus_streaming.c).
NO_SUCH_SESSION = 458
NO_SUCH_HANDLE = 459
NO_SUCH_MOUNTPOINT = 455
UNAUTHORIZED = 457

_transactions = itertools.count(1)


def transaction() -> str:
    return f"avatard-{next(_transactions)}"


def create_session() -> dict:
    return {"janus": "create", "transaction": transaction()}


def attach(plugin: str = STREAMING_PLUGIN) -> dict:
    return {"janus": "attach", "plugin": plugin, "transaction": transaction()}


def keepalive() -> dict:
    return {"janus": "keepalive", "transaction": transaction()}


def message(body: dict) -> dict:
    return {"janus": "message", "body": body, "transaction": transaction()}


def mountpoint_secret(admin_key: str | None, mountpoint: int, fallback: str) -> str:
    """The secret that guards our mountpoint (info with ports, destroy): derived from the admin key, so a
    restarted avatard can still manage the mountpoint it made before; ``fallback`` (random) without a key."""
    if admin_key is None:
        return fallback
    return hmac.new(admin_key.encode(), f"avatard-mountpoint-{mountpoint}".encode(), hashlib.sha256).hexdigest()


@attrs.frozen
class Ports:
    audio: int
    video: int


@attrs.frozen(kw_only=True)
class Mountpoint:
    """What avatard asks Janus to create. ``iface`` is the address the RTP input binds to."""

    id: int
    video_codec: str
    iface: str
    secret: str = attrs.field(repr=False)
    pin: str | None = attrs.field(default=None, repr=False)
    description: str = "avatard"

    def create(self, admin_key: str | None) -> dict:
        video = {"type": "video", "mid": VIDEO_MID, "label": "avatar", "codec": self.video_codec,
                 "pt": VIDEO_PT[self.video_codec], "port": 0, "iface": self.iface, "bufferkf": True}
        if self.video_codec == "h264":
            video["fmtp"] = H264_FMTP
        body = {
            "request": "create", "type": "rtp", "id": self.id, "description": self.description,
            "secret": self.secret, "is_private": False, "permanent": False,
            "media": [
                {"type": "audio", "mid": AUDIO_MID, "label": "voice", "codec": "opus", "pt": AUDIO_PT,
                 "port": 0, "iface": self.iface},
                video,
            ],
        }
        if admin_key is not None:
            body["admin_key"] = admin_key
        if self.pin is not None:
            body["pin"] = self.pin
        return body

    def info(self) -> dict:
        return {"request": "info", "id": self.id, "secret": self.secret}

    def destroy(self) -> dict:
        return {"request": "destroy", "id": self.id, "secret": self.secret, "permanent": False}


def _error(reply: dict) -> JanusError:
    error = reply.get("error") or {}
    return JanusError(int(error.get("code") or 0), str(error.get("reason") or "unknown error")[:200])


def parse_id(reply: dict) -> int:
    """The id in a ``create`` (session) or ``attach`` (handle) reply."""
    if reply.get("janus") != "success":
        raise _error(reply)
    try:
        return int(reply["data"]["id"])
    except (KeyError, TypeError, ValueError):
        raise JanusError(0, "reply without an id") from None


def parse_ack(reply: dict) -> None:
    if reply.get("janus") not in ("ack", "success"):
        raise _error(reply)


def plugin_data(reply: dict) -> dict:
    """The streaming plugin's answer to a synchronous request; its errors raised as JanusError."""
    if reply.get("janus") != "success":
        raise _error(reply)
    data = (reply.get("plugindata") or {}).get("data")
    if not isinstance(data, dict):
        raise JanusError(0, "reply without plugin data")
    if "error_code" in data:
        raise JanusError(int(data["error_code"]), str(data.get("error") or "")[:200])
    return data


def _ports(entries) -> Ports:
    found = {}
    for entry in entries or ():
        if isinstance(entry, dict) and entry.get("mid") in (AUDIO_MID, VIDEO_MID) and isinstance(entry.get("port"), int):
            found[entry["mid"]] = entry["port"]
    if set(found) != {AUDIO_MID, VIDEO_MID}:
        raise JanusError(0, "mountpoint without an audio and a video port")
    return Ports(audio=found[AUDIO_MID], video=found[VIDEO_MID])


def parse_created(data: dict) -> Ports:
    return _ports((data.get("stream") or {}).get("ports"))


def parse_info(data: dict) -> Ports:
    """Ports of an existing mountpoint (``info`` shows them only with the right secret)."""
    return _ports((data.get("info") or {}).get("media"))

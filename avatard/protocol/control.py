"""The control socket's wire format (pure: bytes in, requests out; replies in, bytes out).

One JSON object per line. A request is ``{"cmd": NAME, ...fields}``; a reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. After a successful ``subscribe`` the server sends one event object
per line until the client hangs up.
"""

from __future__ import annotations

import base64
import binascii
import json

import attrs

from ..constants import EVENT_KINDS, MAX_IMAGE_BYTES
from ..errors import ProtocolError, quote
from .untrusted_json import json_object

# A request is a command and maybe a sentence, or one still for ``look``: an image of MAX_IMAGE_BYTES in base64
# (4/3 as long) plus room for the JSON around it. Far above any legitimate request and small enough that a
# garbage writer cannot make the daemon buffer much.
MAX_LINE_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024
CAMERA_STATES = ("on", "off")

# command -> the string fields it requires
COMMANDS: dict[str, tuple[str, ...]] = {
    "ping": (),
    "status": (),
    "interrupt": (),
    "replay": (),
    "gestures": (),
    "gesture": ("name",),
    "say": ("text",),
    "ask": ("text",),
    "subscribe": (),
    "snapshot": (),
    "metrics": (),  # the /metrics exposition, in every mode (local mode serves no HTTP)
    "look": ("image",),  # base64 of an image file (JPEG, PNG), at most MAX_IMAGE_BYTES
    "camera": ("state",),  # on or off
}


@attrs.frozen
class Request:
    cmd: str
    name: str | None = None
    text: str | None = None
    events: frozenset[str] | None = None
    image: bytes | None = attrs.field(default=None, repr=False)  # look: the decoded file
    state: str | None = None  # camera: on or off


def parse_request(line: bytes) -> Request:
    """Parse one line (without its newline). Raises ProtocolError naming what is wrong."""
    obj = json_object(line, "request", "bad_request")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError("bad_request", 'request needs a string "cmd"')
    if cmd not in COMMANDS:
        raise ProtocolError("unknown_command", f"unknown command {quote(cmd)}; known: {', '.join(sorted(COMMANDS))}")
    fields = {}
    for field in COMMANDS[cmd]:
        value = obj.get(field)
        if not isinstance(value, str):
            raise ProtocolError("bad_request", f"{cmd} needs a string {field!r}")
        fields[field] = value
    events = None
    if cmd == "subscribe" and obj.get("events") is not None:
        kinds = obj["events"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise ProtocolError("bad_request", "subscribe 'events' must be a list of strings")
        unknown = sorted(set(kinds) - set(EVENT_KINDS))
        if unknown:
            raise ProtocolError("bad_request", f"unknown event kinds {quote(unknown)}; known: {', '.join(EVENT_KINDS)}")
        events = frozenset(kinds)
    if cmd == "look":
        fields["image"] = _image(fields["image"])
    if cmd == "camera" and fields["state"] not in CAMERA_STATES:
        raise ProtocolError("bad_request", f"camera 'state' must be on or off; got {quote(fields['state'])}")
    return Request(cmd=cmd, events=events, **fields)


def _image(text: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_request", "look 'image' is not valid base64") from None
    if not data:
        raise ProtocolError("bad_request", "look 'image' is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ProtocolError("too_large", f"the image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES} "
                                         f"(scale it to at most 768 px)")
    return data


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def request(cmd: str, **fields) -> bytes:
    """A request line as avatarctl sends it."""
    return encode({"cmd": cmd, **fields})


def ok(**fields) -> bytes:
    return encode({"ok": True, **fields})


def error(message: str, code: str = "refused") -> bytes:
    return encode({"ok": False, "error": message, "code": code})


class LineSplitter:
    """Accumulates bytes and yields complete lines; a line over the limit raises ProtocolError once."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            if len(line) > self._limit:
                self._buffer.clear()
                raise ProtocolError("too_long", f"request line exceeds {self._limit} bytes")
            if line.strip():
                lines.append(line)
        if len(self._buffer) > self._limit:
            self._buffer.clear()
            raise ProtocolError("too_long", f"request line exceeds {self._limit} bytes")
        return lines

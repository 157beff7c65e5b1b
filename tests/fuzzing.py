"""What ``tests/test_fuzz.py`` and ``bench/fuzz.py`` share: the input generators and the drivers that judge them.

Three targets, all fed to a real daemon:

- ``ws_text``: one WebSocket text message: JSON of every shape, near-valid messages with wrong field types, huge
  or odd numbers, long strings, non-JSON text, and inputs that are known to break naive parsers (5000-digit
  integers, 100 000 nested arrays, lone UTF-16 surrogates);
- ``ws_binary``: one WebSocket binary message (raw PCM), any length from 0 to 5000 bytes;
- ``control``: bytes written to the control socket: random bytes with newlines and invalid UTF-8, JSON requests
  with every known ``cmd`` and random fields, and over-long lines.

Each example is judged by its driver (:class:`WsFuzzer`, :class:`ControlFuzzer`) against the documented protocol:

- it gets an ``error`` reply, or it is *accepted*, and accepted means the effect is seen: a ``text_input``
  brings the user transcription of its text, a known gesture brings a ``gesture`` event from this client, an
  interrupt an ``interrupted`` status from this client, a subscribe the ``subscribed`` status with the flags it
  asked for; audio has no visible effect, so for audio accepted means "no error before the next reply";
- generated examples whose validity is certain by construction carry ``expect`` ("error" or "accept", sometimes
  the error ``code`` too), and the verdict must match;
- the connection that sent it stays usable: a valid request sent after it on the same connection is answered.

On the WebSocket, replies to one connection's messages are queued in order, so the driver sends a *marker*
after the example (a gesture request for a unique, unknown name: its ``refused`` error quotes the name) and
counts the errors that arrive before the marker's. Effects published through the event bus (transcripts,
gestures) may arrive later and are waited for.

The drivers block (websockets' sync client, plain sockets) instead of using trio: Hypothesis calls the test body
once per example, and under pytest-trio every call would get its own ``trio.run``, so no connection could outlive
an example -- and keeping one connection across hundreds of bad inputs is the point.

:class:`FrameWatcher` is another client, on a thread, that only watches video timestamps: the renderer stamps
frame ``n`` with ``start + n / fps``, so any frame lost on the way shows as a gap.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import threading
import time

import attrs
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from avatard.core.frame_clock import MIN_GAP_FRACTION

# -- the protocol facts the judges rely on (docs/protocol.md, avatard.protocol.control) -------------------------

FPS = 25
PERIOD = 1.0 / FPS
KNOWN_GESTURES = ("heart_gesture", "laugh_react", "mini_wave_hello", "nod_agree", "thumbs_up")
WS_TYPES = ("audio_input", "text_input", "control")
WS_COMMANDS = ("interrupt", "gesture", "subscribe")
MAX_TEXT_CHARS = 2000
MIN_RATE, MAX_RATE = 8000, 192000
CONTROL_COMMANDS = ("ping", "status", "interrupt", "replay", "gestures", "gesture", "say", "ask", "subscribe",
                    "snapshot", "metrics")
EVENT_KINDS = ("status", "transcription", "gesture", "client", "latency", "error", "frame")
# Control socket: a longer line gets a "too_long" error and the connection closes. Room for one `look` still:
# 512 KiB of image in base64 (4/3 as long) plus 64 KiB for the JSON around it.
MAX_LINE_BYTES = 512 * 1024 * 4 // 3 + 64 * 1024

REPLY_TIMEOUT = 10.0  # a reply the daemon owes; a loaded 2-core box answers in milliseconds
EFFECT_TIMEOUT = 10.0  # transcripts and gestures go through the brain and the event bus


class Violation(AssertionError):
    """The daemon broke a rule of the protocol for one example."""


@attrs.frozen(repr=False)
class Example:
    target: str  # "ws_text", "ws_binary" or "control"
    payload: str | bytes
    expect: str | None = None  # "error" or "accept" when certain by construction; None: either, judged by effect
    code: str | None = None  # the error code that must come with expect="error", when docs/protocol.md names it
    origin: str = ""  # which generator made it

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 300 else self.payload[:300]
        more = f" (+{len(self.payload) - 300} more)" if len(self.payload) > 300 else ""
        return f"Example({self.target}, {self.origin}, expect={self.expect}, code={self.code}, {shown!r}{more})"


# -- JSON values ---------------------------------------------------------------------------------------------------

HUGE_NUMBERS = [0, -1, 1, 3, 7999, 8000, 16000, 192000, 192001, 2**31, 2**53 + 1, 2**63, 2**64, -(2**64), 10**300,
                1e308, -1e308, 1.7976931348623157e308, 5e-324, 0.5, -0.0, 16000.0, math.inf, -math.inf, math.nan]
ODD_STRINGS = ["", " ", "\t\n", "NaN", "Infinity", "-Infinity", "-1", "16000", "1e308", "null", "true", "0x10",
               "\x00", "\ud800", "\udfff", "a\ud83d", "\u202e", "\ufeff", "\U0001f642", "' OR 1=1 --", "<script>",
               "%s%n", "mini_wave_hello ", "MINI_WAVE_HELLO"]
FIELD_NAMES = ["type", "data", "text", "command", "params", "gesture", "video", "audio", "sample_rate", "channels",
               "cmd", "name", "events", "__proto__", ""]

# Any code point, lone surrogates included: JSON's \ud800 escapes decode to them.
any_char = st.characters(exclude_categories=())
texts = st.text(any_char, max_size=40)
long_texts = st.integers(1000, 5000).flatmap(lambda n: st.text(any_char, min_size=n, max_size=n))
json_leaves = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(HUGE_NUMBERS)
               | texts | st.sampled_from(ODD_STRINGS))
field_names = st.sampled_from(FIELD_NAMES) | st.text(max_size=12)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(field_names, children, max_size=6),
    max_leaves=25,
)
# Values for a field of the wrong type: anything but what the field wants is filtered per use.
odd_values = json_values | long_texts


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def dumps(obj, ascii_only: bool = True) -> str:
    """JSON text; ``allow_nan`` writes NaN/Infinity, which Python's json (the daemon's) reads back."""
    if not ascii_only:
        try:
            text = json.dumps(obj, ensure_ascii=False)
            text.encode()  # lone surrogates cannot go raw into a UTF-8 frame
            return text
        except UnicodeEncodeError:
            pass
    return json.dumps(obj)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _extras(reserved: tuple[str, ...]) -> st.SearchStrategy[dict]:
    """Unknown fields a message may carry besides its own (they are ignored)."""
    return st.dictionaries(st.text(max_size=10).filter(lambda k: k not in reserved), json_values, max_size=3)


# -- WebSocket text messages -------------------------------------------------------------------------------------

good_texts = st.text(any_char, min_size=1, max_size=300).filter(lambda t: t.strip() and len(t) <= MAX_TEXT_CHARS)


@st.composite
def _text_input_valid(draw):
    text = draw(good_texts | st.sampled_from(["x" * MAX_TEXT_CHARS, " hello ", "wave 👋", "\u00e9t\u00e9"]))
    data = {**draw(_extras(("text",))), "text": text}
    message = {**draw(_extras(("type", "data"))), "type": "text_input", "data": data}
    # Whether a lone surrogate is spoken (as U+FFFD) or refused is the daemon's choice; crashing is not.
    return message, None if has_surrogate(text) else "accept"


@st.composite
def _text_input_invalid(draw):
    variant = draw(st.sampled_from(["no data", "data not object", "no text", "text not string", "blank", "too long"]))
    message = {"type": "text_input"}
    if variant == "data not object":
        message["data"] = draw(odd_values.filter(lambda v: not isinstance(v, dict)))
    elif variant == "no text":
        message["data"] = draw(st.dictionaries(field_names.filter(lambda k: k != "text"), json_values, max_size=3))
    elif variant == "text not string":
        message["data"] = {"text": draw(odd_values.filter(lambda v: not isinstance(v, str)))}
    elif variant == "blank":
        message["data"] = {"text": draw(st.text(" \t\n\r\u00a0\u2003\u3000", max_size=20))}
    elif variant == "too long":
        message["data"] = {"text": "y" * draw(st.integers(MAX_TEXT_CHARS + 1, MAX_TEXT_CHARS + 3000))}
    return message, "error"


@st.composite
def _audio_input_valid(draw):
    channels = draw(st.sampled_from([1, 2]))
    frames = draw(st.integers(0, 2500 // channels))
    pcm = draw(st.binary(min_size=frames * 2 * channels, max_size=frames * 2 * channels))
    encode = draw(st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))
    message = {**draw(_extras(("type", "sample_rate", "channels", "data"))), "type": "audio_input",
               "data": encode(pcm).decode()}
    rate = draw(st.none() | st.integers(MIN_RATE, MAX_RATE) | st.sampled_from([8000, 11025, 22050, 44100, 48000,
                                                                                 96000, 192000]))
    if rate is not None:
        message["sample_rate"] = rate
    if channels == 2 or draw(st.booleans()):
        message["channels"] = channels
    return message, "accept"


@st.composite
def _audio_input_invalid(draw):
    variant = draw(st.sampled_from(["rate type", "rate range", "channels type", "channels range", "data type",
                                    "bad base64", "partial sample", "partial frame"]))
    message = {"type": "audio_input", "data": base64.b64encode(b"\x00\x01" * draw(st.integers(0, 200))).decode()}
    if variant == "rate type":
        message["sample_rate"] = draw(odd_values.filter(lambda v: not _is_int(v)))
    elif variant == "rate range":
        message["sample_rate"] = draw(st.integers(max_value=MIN_RATE - 1) | st.integers(min_value=MAX_RATE + 1)
                                      | st.sampled_from([0, -1, 2**64, -(2**63), 10**300]))
    elif variant == "channels type":
        message["channels"] = draw(odd_values.filter(lambda v: not _is_int(v)))
    elif variant == "channels range":
        message["channels"] = draw(st.integers(max_value=0) | st.integers(min_value=3) | st.just(2**64))
    elif variant == "data type":
        message["data"] = draw(odd_values.filter(lambda v: not isinstance(v, str)))
    elif variant == "bad base64":
        good = base64.b64encode(draw(st.binary(max_size=300))).decode()
        at = draw(st.integers(0, len(good)))
        junk = draw(st.sampled_from(list("%!*.~ \n\t\u00e9\u00a0") + ["\ud800"]))
        message["data"] = good[:at] + junk + good[at:]
    elif variant == "partial sample":
        odd = draw(st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 2))
        message["data"] = base64.b64encode(odd).decode()
    elif variant == "partial frame":
        message["channels"] = 2
        message["data"] = base64.b64encode(b"\x00\x00" * (2 * draw(st.integers(0, 100)) + 1)).decode()
    return message, "error", "bad_audio"


def _control(command, params=None, extra_data=None):
    data = {**(extra_data or {}), "command": command}
    if params is not None:
        data["params"] = params
    return {"type": "control", "data": data}


@st.composite
def _control_valid(draw):
    command = draw(st.sampled_from(WS_COMMANDS))
    extra = draw(_extras(("command", "params")))
    if command == "interrupt":
        params = draw(st.none() | st.dictionaries(field_names, json_values, max_size=3))
    elif command == "gesture":
        params = {**draw(_extras(("gesture",))), "gesture": draw(st.sampled_from(KNOWN_GESTURES))}
    else:
        params = {}
        for flag in ("video", "audio"):
            value = draw(st.sampled_from(["absent", None, True, False]))
            if value != "absent":
                params[flag] = value
    return _control(command, params, extra), "accept"


@st.composite
def _control_invalid(draw):
    variant = draw(st.sampled_from(["data not object", "no command", "command not string", "unknown command",
                                    "params not object", "gesture unknown", "gesture not string", "subscribe flag"]))
    code = None
    if variant == "data not object":
        return {"type": "control", "data": draw(odd_values.filter(lambda v: not isinstance(v, dict)))}, "error", None
    if variant == "no command":
        message = {"type": "control", "data": draw(st.dictionaries(field_names.filter(lambda k: k != "command"),
                                                                   json_values, max_size=3))}
    elif variant == "command not string":
        message = _control(draw(odd_values.filter(lambda v: not isinstance(v, str))))
    elif variant == "unknown command":
        message, code = _control(draw(texts.filter(lambda c: c not in WS_COMMANDS))), "unknown_command"
    elif variant == "params not object":
        params = draw(odd_values.filter(lambda v: not isinstance(v, dict) and v is not None))
        message = _control(draw(st.sampled_from(WS_COMMANDS)), params)
    elif variant == "gesture unknown":
        name = draw((texts | long_texts | st.sampled_from(ODD_STRINGS)).filter(lambda n: n and n not in KNOWN_GESTURES))
        message, code = _control("gesture", {"gesture": name}), "refused"
    elif variant == "gesture not string":
        message = _control("gesture", {"gesture": draw(odd_values.filter(lambda v: not isinstance(v, str) or not v))})
    else:
        flag = draw(st.sampled_from(["video", "audio"]))
        value = draw(odd_values.filter(lambda v: v is not None and not isinstance(v, bool)))
        message = _control("subscribe", {flag: value})
    return message, "error", code


@st.composite
def _typed_random(draw):
    """A known type with random fields: valid or not, the judge decides by the effect."""
    message = {**draw(st.dictionaries(field_names, json_values, max_size=5)), "type": draw(st.sampled_from(WS_TYPES))}
    return message, None


@st.composite
def _unknown_type(draw):
    kind = draw(texts.filter(lambda t: t not in WS_TYPES) | st.sampled_from(["Text_Input", "text_input ", "audio"]))
    return {**draw(st.dictionaries(field_names, json_values, max_size=3)), "type": kind}, "error", "unknown_type"


@st.composite
def _no_string_type(draw):
    message = draw(st.dictionaries(field_names.filter(lambda k: k != "type"), json_values, max_size=5))
    if draw(st.booleans()):
        message["type"] = draw(odd_values.filter(lambda v: not isinstance(v, str)))
    return message, "error", "bad_message"


def _json_any(value):
    if isinstance(value, dict):
        kind = value.get("type")
        if not isinstance(kind, str):
            return value, "error", "bad_message"
        if kind not in WS_TYPES:
            return value, "error", "unknown_type"
        return value, None, None
    return value, "error", "bad_message"


def _shaped(strategy, origin):
    def build(parts):
        (message, expect, *code), ascii_only = parts
        return Example("ws_text", dumps(message, ascii_only), expect, code[0] if code else None, origin)
    return st.tuples(strategy, st.booleans()).map(build)


@st.composite
def _not_json(draw):
    text = draw(st.text(max_size=200) | st.sampled_from(["not json at all", "{", '{"type": "text_input"', "[1, 2,",
                                                         "{'type': 'control'}", "undefined", "\u0000", "}{"]))
    try:
        json.loads(text)
    except ValueError:
        return Example("ws_text", text, "error", "bad_json", "not json")
    value, expect, code = _json_any(json.loads(text))
    return Example("ws_text", text, expect, code, "not json (but it was)")


@st.composite
def _mangled(draw):
    """A valid message cut short or with a stray character: usually not JSON any more."""
    message, _ = draw(_text_input_valid() | _control_valid())
    text = json.dumps(message)
    at = draw(st.integers(0, len(text)))
    text = draw(st.sampled_from([text[:at], text[:at] + draw(st.characters(codec="utf-8")) + text[at:]]))
    try:
        json.loads(text)
    except ValueError:
        return Example("ws_text", text, "error", "bad_json", "mangled")
    return Example("ws_text", text, None, None, "mangled (still JSON)")


@st.composite
def _parser_breakers(draw):
    """Inputs Python's json module rejects with something other than JSONDecodeError, or that decode to text the
    rest of the daemon may choke on."""
    variant = draw(st.sampled_from(["huge int", "huge int in field", "deep array", "deep object", "surrogate text",
                                    "huge float", "nan fields"]))
    digits = "9" * draw(st.integers(4301, 20000))
    if variant == "huge int":
        return Example("ws_text", digits, "error", None, variant)
    if variant == "huge int in field":
        return Example("ws_text", '{"type": "audio_input", "sample_rate": %s, "data": ""}' % digits, "error", None,
                       variant)
    depth = draw(st.integers(1000, 100_000))  # at most 600 kB: under the 1 MiB message limit
    if variant == "deep array":
        closed = draw(st.booleans())
        return Example("ws_text", "[" * depth + ("]" * depth if closed else ""), "error", None, variant)
    if variant == "deep object":
        return Example("ws_text", '{"a":' * depth + "1" + "}" * depth, "error", None, variant)
    if variant == "surrogate text":
        text = draw(st.sampled_from(["\ud800", "hi \udfff there", "\ud83d", "a\udc00b"]))
        return Example("ws_text", json.dumps({"type": "text_input", "data": {"text": text}}), None, None, variant)
    if variant == "huge float":
        return Example("ws_text", '{"type": "audio_input", "sample_rate": 1e999, "data": ""}', "error", "bad_audio",
                       variant)
    return Example("ws_text", '{"type": "audio_input", "sample_rate": NaN, "channels": Infinity, "data": ""}', "error",
                   "bad_audio", variant)


@st.composite
def _boundary_texts(draw):
    n = draw(st.sampled_from([MAX_TEXT_CHARS - 1, MAX_TEXT_CHARS, MAX_TEXT_CHARS + 1]))
    expect = "accept" if n <= MAX_TEXT_CHARS else "error"
    return Example("ws_text", json.dumps({"type": "text_input", "data": {"text": "z" * n}}), expect, None,
                   f"text of {n} chars")


ws_text_examples = st.one_of(
    _shaped(json_values.map(_json_any), "any JSON"),
    _shaped(_typed_random(), "known type, random fields"),
    _shaped(_text_input_valid(), "text_input"),
    _shaped(_text_input_invalid(), "text_input, bad"),
    _shaped(_audio_input_valid(), "audio_input"),
    _shaped(_audio_input_invalid(), "audio_input, bad"),
    _shaped(_control_valid(), "control"),
    _shaped(_control_invalid(), "control, bad"),
    _shaped(_unknown_type(), "unknown type"),
    _shaped(_no_string_type(), "no string type"),
    _not_json(),
    _mangled(),
    _parser_breakers(),
    _boundary_texts(),
)


# -- WebSocket binary messages -----------------------------------------------------------------------------------

def _binary(data: bytes) -> Example:
    return Example("ws_binary", data, "error" if len(data) % 2 else "accept", "bad_audio" if len(data) % 2 else None,
                   f"{len(data)} bytes")


ws_binary_examples = st.one_of(
    st.binary(max_size=5000),
    st.integers(0, 5000).map(lambda n: bytes(n)),  # silence
    st.integers(0, 2500).map(lambda n: b"\xff\x7f\x01\x80" * (n // 2) + b"\xff\x7f" * (n % 2)),  # full-scale square
    st.integers(0, 2499).map(lambda n: bytes(2 * n + 1)),  # always odd
).map(_binary)


# -- control socket ----------------------------------------------------------------------------------------------

@st.composite
def _control_request(draw):
    """A JSON request: mostly a known command with plausible fields (so many are valid), sometimes anything."""
    if draw(st.integers(0, 9)) < 8:
        cmd = draw(st.sampled_from(CONTROL_COMMANDS))
    else:
        cmd = draw(st.sampled_from(["", "PING", "teleport", "status "]) | texts | odd_values)
    request = draw(st.dictionaries(field_names.filter(lambda k: k not in ("name", "text", "events")), json_values,
                                   max_size=3))
    request["cmd"] = cmd
    if cmd == "gesture" or draw(st.booleans()):
        gestures = st.sampled_from(KNOWN_GESTURES)
        request["name"] = draw(st.one_of(gestures, gestures, texts, odd_values))
    if cmd in ("say", "ask") or draw(st.booleans()):
        request["text"] = draw(st.one_of(good_texts, good_texts, st.sampled_from(["", "   "]), long_texts, odd_values))
    if cmd == "subscribe" and draw(st.booleans()):
        request["events"] = draw(st.none() | st.lists(st.sampled_from(EVENT_KINDS), max_size=7)
                                 | st.lists(st.sampled_from(EVENT_KINDS) | texts, max_size=4) | odd_values)
    return json.dumps(request, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


_line_breaks = st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r", b" \n"])
_garbage = (st.binary(max_size=300)
            | st.sampled_from([b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00" * 8, b"\xef\xbb\xbf{}",
                               b'{"cmd": "ping"', b'"cmd"', b"null", b"[]", b"1" * 5000, b"[" * 20000,
                               b'{"cmd":"say","text":"\\ud800"}', b'{"cmd": 1e999}']))


@st.composite
def _control_payload(draw):
    pieces = draw(st.lists(st.one_of(_control_request(), _control_request(), _garbage), min_size=1, max_size=4))
    out = b""
    for piece in pieces:
        out += piece + draw(_line_breaks)
    return Example("control", out, None, None, f"{len(pieces)} line(s)")


control_examples = st.one_of(
    _control_payload(),
    _control_payload(),  # twice the weight of the rest
    st.binary(max_size=3000).map(lambda b: Example("control", b, None, None, "random bytes")),
    st.integers(MAX_LINE_BYTES + 1, 2 * MAX_LINE_BYTES).map(
        lambda n: Example("control", b"x" * n + b"\n", None, None, f"one {n}-byte line")),
)


def control_line_verdict(line: bytes, gestures=KNOWN_GESTURES) -> str | None:
    """What the daemon must answer to one control line: "ok", "error", "subscribe", "too_long", or None (either).

    Written from the command table, independently of the daemon's parser.
    """
    if len(line) > MAX_LINE_BYTES:
        return "too_long"
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return "error"
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return "error"
    cmd = request["cmd"]
    if cmd in ("ping", "status", "interrupt", "gestures", "snapshot", "metrics"):
        return "ok"
    if cmd == "replay":
        return "error"  # no --audio-file
    if cmd == "gesture":
        return "ok" if request.get("name") in gestures else "error"
    if cmd in ("say", "ask"):
        text = request.get("text")
        if not isinstance(text, str) or not text.strip() or len(text.strip()) > MAX_TEXT_CHARS:
            return "error"
        return None if has_surrogate(text) else "ok"
    if cmd == "subscribe":
        events = request.get("events")
        if events is None:
            return "subscribe"
        if isinstance(events, list) and all(isinstance(e, str) and e in EVENT_KINDS for e in events):
            return "subscribe"
        return "error"
    return "error"


def control_lines(data: bytes) -> list[bytes]:
    """The requests in ``data`` as the protocol frames them: split at LF, a CR before it dropped, blank lines
    skipped (a blank over-long line still counts: its length is checked first)."""
    lines = []
    for raw in data.split(b"\n")[:-1]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > MAX_LINE_BYTES or line.strip():
            lines.append(line)
    return lines


# -- the drivers ---------------------------------------------------------------------------------------------------

@attrs.define
class Tally:
    examples: int = 0
    errors: int = 0  # replies that were errors
    accepted: int = 0  # requests accepted
    busy: int = 0  # valid requests refused by the client's input budget (error "busy", nothing queued)
    violations: int = 0


class WsFuzzer:
    """One WebSocket client that sends examples and judges them; media are switched off between examples."""

    def __init__(self, port: int) -> None:
        self.ws = connect(f"ws://127.0.0.1:{port}/ws", compression=None, proxy=None, max_size=None, max_queue=None,
                          open_timeout=REPLY_TIMEOUT, close_timeout=1, legacy=True,
                          ping_interval=None)  # its keepalive pings draw from the global random: Hypothesis warns
        self.tally = Tally()
        self._markers = 0
        first = self._next_json(REPLY_TIMEOUT)
        if first.get("data", {}).get("status") != "connected":
            raise Violation(f"first message was not status connected: {first}")
        self.client_id = first["data"]["client_id"]
        self.gestures = self._wait(lambda m: m.get("type") == "gestures", [], REPLY_TIMEOUT)["data"]["gestures"]
        self._reset([])

    def close(self) -> None:
        self.ws.close()

    def _next_json(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                message = self.ws.recv(timeout=remaining)
            except ConnectionClosed as exc:
                raise Violation(f"the daemon closed this connection: {exc}") from None
            if isinstance(message, str):
                return json.loads(message)

    def _wait(self, predicate, seen: list, timeout: float, what: str = "") -> dict:
        """Receive (appending to ``seen``) until a JSON message matches; Violation on timeout."""
        try:
            while True:
                message = self._next_json(timeout)
                seen.append(message)
                if predicate(message):
                    return message
        except TimeoutError:
            recent = [m for m in seen if m.get("type") != "status" or m["data"].get("status") != "speaking"][-5:]
            raise Violation(f"no {what or 'reply'} within {timeout} s; last messages: {recent}") from None

    def _reset(self, seen: list) -> None:
        """Media off (the follow-up valid request): its reply must come."""
        self.ws.send(json.dumps(_control("subscribe", {"video": False, "audio": False})))
        self._wait(lambda m: _is_status(m, "subscribed") and m["data"].get("video") is False
                   and m["data"].get("audio") is False, seen, REPLY_TIMEOUT, "reply to a valid subscribe")

    def run(self, example: Example) -> str:
        """Send one example; return "error", "busy" or "accepted", or raise Violation."""
        self.tally.examples += 1
        try:
            verdict = self._run(example)
        except ConnectionClosed as exc:
            self.tally.violations += 1
            raise Violation(f"the daemon closed this connection: {exc}") from None
        except Violation:
            self.tally.violations += 1
            raise
        if verdict == "error":
            self.tally.errors += 1
        elif verdict == "busy":
            self.tally.busy += 1
        else:
            self.tally.accepted += 1
        return verdict

    def _run(self, example: Example) -> str:
        self._markers += 1
        marker = f"fuzz-marker-{self._markers}"
        self.ws.send(example.payload)
        self.ws.send(json.dumps(_control("gesture", {"gesture": marker})))
        seen: list[dict] = []
        self._wait(lambda m: m.get("type") == "error" and f"'{marker}'" in m["data"].get("message", ""), seen,
                   REPLY_TIMEOUT, "error for the marker sent after the example")
        errors = [m["data"] for m in seen[:-1] if m.get("type") == "error"]
        self._reset(seen)
        if len(errors) > 1:
            raise Violation(f"{len(errors)} errors for one message: {errors}")
        if errors:
            error = errors[0]
            if not (isinstance(error.get("code"), str) and error["code"] and isinstance(error.get("message"), str)):
                raise Violation(f"malformed error reply {error}")
            if example.expect == "accept":
                if error["code"] == "busy":
                    return "busy"  # valid, but over this client's input budget (docs/protocol.md): nothing queued
                raise Violation(f"a valid message was refused: {error}")
            if example.code is not None and error["code"] != example.code:
                raise Violation(f"error code {error['code']!r}, expected {example.code!r}: {error}")
            return "error"
        if example.expect == "error":
            raise Violation("an invalid message was accepted without an error")
        self._check_effect(example, seen)
        return "accepted"

    def _check_effect(self, example: Example, seen: list) -> None:
        """An accepted message must have its documented effect (audio has none to see)."""
        if isinstance(example.payload, bytes):
            self._interrupt(seen)
            return
        message = json.loads(example.payload)
        kind, data = message.get("type"), message.get("data")
        earlier = iter(list(seen))

        def find(predicate, what):
            for m in earlier:  # already received while waiting for the marker
                if predicate(m):
                    return m
            return self._wait(predicate, [], EFFECT_TIMEOUT, what)

        if kind == "text_input":
            text = data["text"].strip()
            find(lambda m: m.get("type") == "transcription" and m["data"].get("role") == "user"
                 and m["data"].get("text") == text, f"user transcription of {text[:40]!r}")
            self._interrupt(seen)
        elif kind == "audio_input":
            self._interrupt(seen)
        elif kind == "control":
            command, params = data["command"], data.get("params") or {}
            if command == "interrupt":
                find(lambda m: _is_status(m, "interrupted") and m["data"].get("source") == self.client_id,
                     "interrupted status")
            elif command == "gesture":
                name = params["gesture"]
                find(lambda m: m.get("type") == "gesture" and m["data"].get("gesture") == name
                     and m["data"].get("source") == self.client_id, f"gesture event {name}")
            elif command == "subscribe":
                # Media were off; a flag left out stays off.
                want = {flag: bool(params.get(flag)) for flag in ("video", "audio")}
                find(lambda m: _is_status(m, "subscribed") and all(m["data"].get(f) is v for f, v in want.items()),
                     f"subscribed {want}")
            else:
                raise Violation(f"accepted an unknown control command {command!r}")
        else:
            raise Violation(f"accepted a message of type {kind!r}")

    def _interrupt(self, seen: list) -> None:
        """Stop whatever the example made the avatar say, so speech does not pile up across examples."""
        self.ws.send(json.dumps(_control("interrupt")))
        self._wait(lambda m: _is_status(m, "interrupted") and m["data"].get("source") == self.client_id, [],
                   REPLY_TIMEOUT, "interrupted status")


def _is_status(message: dict, status: str) -> bool:
    return message.get("type") == "status" and message.get("data", {}).get("status") == status


class ControlFuzzer:
    """One control-socket connection that sends examples and judges the replies line by line."""

    def __init__(self, path: str, gestures=KNOWN_GESTURES) -> None:
        self.path = path
        self.gestures = tuple(gestures)
        self.tally = Tally()
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(self.path)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def _reply(self) -> dict | None:
        try:
            line = self.reader.readline()
        except socket.timeout:
            raise Violation(f"no reply within {REPLY_TIMEOUT} s") from None
        except ConnectionResetError:
            return None
        if not line:
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            raise Violation(f"reply is not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise Violation(f"reply has no boolean 'ok': {line[:200]!r}")
        if not reply["ok"] and not (isinstance(reply.get("error"), str) and isinstance(reply.get("code"), str)):
            raise Violation(f"error reply without error and code: {reply}")
        return reply

    def run(self, example: Example) -> list[str]:
        """Send one example; return the verdict per request line ("error"/"accepted"), or raise Violation."""
        self.tally.examples += 1
        try:
            verdicts = self._run(example)
        except OSError as exc:
            self.tally.violations += 1
            raise Violation(f"control connection failed: {exc!r}") from None
        except Violation:
            self.tally.violations += 1
            raise
        self.tally.errors += verdicts.count("error")
        self.tally.accepted += verdicts.count("accepted")
        return verdicts

    def _run(self, example: Example) -> list[str]:
        data = example.payload if example.payload.endswith(b"\n") else example.payload + b"\n"
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # an over-long line: the daemon answered and hung up before taking it all
        verdicts, ended = [], False
        for line in control_lines(data):
            expected = control_line_verdict(line, self.gestures)
            reply = self._reply()
            if reply is None:
                raise Violation(f"connection closed instead of a reply to {line[:100]!r}")
            verdicts.append("accepted" if reply["ok"] else "error")
            if expected == "too_long":
                if reply["ok"] or reply["code"] != "too_long":
                    raise Violation(f"over-long line ({len(line)} bytes) answered {str(reply)[:200]}")
                if self._reply() is not None:
                    raise Violation("connection still open after an over-long line")
                ended = True
                break
            if expected == "ok" and not reply["ok"]:
                raise Violation(f"valid request {line[:200]!r} refused: {reply}")
            if expected == "error" and reply["ok"]:
                raise Violation(f"invalid request {line[:200]!r} accepted: {str(reply)[:200]}")
            if expected == "subscribe" and not (reply["ok"] and "subscribed" in reply):
                raise Violation(f"subscribe {line[:200]!r} answered {str(reply)[:200]}")
            if reply["ok"] and "subscribed" in reply:
                if expected not in ("subscribe", None):
                    raise Violation(f"{line[:200]!r} turned the connection into an event stream")
                ended = True  # an event stream from here on: the rest of the lines are not requests
                break
        if ended:
            self.close()
            self._connect()
            self.reconnects += 1
        self._follow_up()
        return verdicts

    def _follow_up(self) -> None:
        """The connection still works: interrupt (so speech does not pile up) and ping are answered."""
        self.sock.sendall(b'{"cmd": "interrupt"}\n{"cmd": "ping"}\n')
        for expected in ({"ok": True}, {"ok": True, "pong": True}):
            reply = self._reply()
            if reply != expected:
                raise Violation(f"follow-up got {reply}, expected {expected}")


# -- the frame watcher ---------------------------------------------------------------------------------------------

@attrs.frozen
class FrameReport:
    frames: int
    seconds: float  # between the first and the last frame seen
    missing: int  # frames never seen, counted from the timestamp gaps
    longest_gap: int  # most consecutive frames missing
    irregular: int  # timestamp steps that are neither whole frame periods nor a re-phase (see report())
    closed: str | None  # why the watcher's connection ended, if it did

    def problems(self, max_gap: int = 2) -> list[str]:
        found = []
        if self.frames < 2:
            found.append(f"only {self.frames} frames seen")
        if self.longest_gap > max_gap:
            found.append(f"{self.longest_gap} consecutive frames missing (limit {max_gap}); {self.missing} in all")
        if self.irregular:
            found.append(f"{self.irregular} timestamp steps are neither whole frame periods nor a re-phase")
        if self.closed:
            found.append(f"connection ended: {self.closed}")
        return found


class FrameWatcher:
    """A WebSocket client on its own thread that records every video frame's timestamp."""

    def __init__(self, port: int) -> None:
        self.stamps: list[float] = []
        self.closed: str | None = None
        self._stop = threading.Event()
        self.ws = connect(f"ws://127.0.0.1:{port}/ws", compression=None, proxy=None, max_size=None, max_queue=None,
                          open_timeout=REPLY_TIMEOUT, close_timeout=1, legacy=True,
                          ping_interval=None)  # its keepalive pings draw from the global random: Hypothesis warns
        self._thread = threading.Thread(target=self._run, name="frame-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                if not self._stop.is_set():
                    self.closed = str(exc)
                return
            if isinstance(message, bytes) and message[:1] == b"\x01":
                self.stamps.append(struct.unpack_from(">d", message, 13)[0])

    def mark(self) -> int:
        return len(self.stamps)

    def report(self, since: int = 0) -> FrameReport:
        stamps = self.stamps[since:]
        missing = longest = irregular = 0
        short_before = False
        for a, b in zip(stamps, stamps[1:]):
            steps = (b - a) / PERIOD
            # A step is whole periods (k - 1 frames missed), or a re-phase: the clock moved its grid on an
            # interrupt or a speech start, so the step ends early by a fraction. A re-phase may follow a
            # regular tick at once, but two re-phased ticks are never closer than the clock's minimum gap,
            # so no two steps in a row are that short (avatard/core/frame_clock.py).
            whole = math.floor(steps + 0.05)
            short = steps < MIN_GAP_FRACTION - 0.01
            if steps <= 0 or (short and short_before):
                irregular += 1
            short_before = short
            if short:
                continue
            missing += max(whole, 1) - 1
            longest = max(longest, max(whole, 1) - 1)
        return FrameReport(len(stamps), stamps[-1] - stamps[0] if stamps else 0.0, missing, longest, irregular,
                           self.closed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.ws.close()

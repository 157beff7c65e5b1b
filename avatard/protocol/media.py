"""The WebSocket media protocol of the seed document, byte for byte (pure: no sockets).

Binary server messages, all numbers big-endian (network order, what JavaScript's DataView reads):

    video: type u8 = 0x01, width u16, height u16, fps f32, data_length u32, timestamp f64  (21 bytes) + JPEG
    audio: type u8 = 0x02, sample_rate u32, channels u8, data_length u32, timestamp f64   (18 bytes) + PCM s16le

The seed says the video header is "17 bytes"; its own fields add up to 21, and that is what we send.
The video frame and the audio chunk of one renderer tick carry the same timestamp.

Client messages are JSON text (``audio_input``, ``text_input``, ``control``, and avatard's ``camera_frame``:
``{"type": "camera_frame", "data": {"jpeg": BASE64}}``, one JPEG of at most MAX_IMAGE_SIDE px and MAX_IMAGE_BYTES,
at most MAX_CAMERA_FPS a second) or binary (raw PCM16 16 kHz mono). Anything else raises :class:`ProtocolError` with a code for the ``error`` reply.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

import attrs

from ..constants import MAX_IMAGE_BYTES, MAX_TEXT_CHARS, RATE  # limits checked here too, so the error names the field
from ..errors import ProtocolError, quote
from .untrusted_json import json_object

VIDEO = 0x01
AUDIO = 0x02
VIDEO_HEADER = struct.Struct(">BHHfId")
AUDIO_HEADER = struct.Struct(">BIBId")
assert VIDEO_HEADER.size == 21 and AUDIO_HEADER.size == 18

# Rates a real capture device or file can have; outside this range a client is confused or hostile
# (and a huge rate would make the resampler allocate huge buffers).
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 2


# -- server -> client ---------------------------------------------------------------------------

def encode_video(width: int, height: int, fps: float, jpeg: bytes, timestamp: float) -> bytes:
    return VIDEO_HEADER.pack(VIDEO, width, height, fps, len(jpeg), timestamp) + jpeg


def encode_audio(sample_rate: int, channels: int, pcm: bytes, timestamp: float) -> bytes:
    return AUDIO_HEADER.pack(AUDIO, sample_rate, channels, len(pcm), timestamp) + pcm


@attrs.frozen
class VideoFrame:
    width: int
    height: int
    fps: float
    timestamp: float
    jpeg: bytes = attrs.field(repr=False)


@attrs.frozen
class AudioChunk:
    sample_rate: int
    channels: int
    timestamp: float
    pcm: bytes = attrs.field(repr=False)


def decode_server_binary(data: bytes) -> VideoFrame | AudioChunk:
    """What a client does with a binary message; used by tests and benchmarks."""
    if not data:
        raise ProtocolError("bad_binary", "empty message")
    if data[0] == VIDEO:
        _, width, height, fps, length, ts = VIDEO_HEADER.unpack_from(data)
        body = data[VIDEO_HEADER.size:]
        if len(body) != length:
            raise ProtocolError("bad_binary", f"video data_length {length} but {len(body)} bytes follow")
        return VideoFrame(width, height, fps, ts, body)
    if data[0] == AUDIO:
        _, rate, channels, length, ts = AUDIO_HEADER.unpack_from(data)
        body = data[AUDIO_HEADER.size:]
        if len(body) != length:
            raise ProtocolError("bad_binary", f"audio data_length {length} but {len(body)} bytes follow")
        return AudioChunk(rate, channels, ts, body)
    raise ProtocolError("bad_binary", f"unknown message type 0x{data[0]:02x}")


def json_message(kind: str, **data) -> str:
    return json.dumps({"type": kind, "data": data}, separators=(",", ":"))


# -- client -> server ---------------------------------------------------------------------------

@attrs.frozen
class AudioInput:
    pcm: bytes = attrs.field(repr=False)  # s16le, interleaved
    sample_rate: int
    channels: int


@attrs.frozen
class TextInput:
    text: str


@attrs.frozen
class CameraInput:
    jpeg: bytes = attrs.field(repr=False)  # starts with the JPEG SOI marker; decoded (and scaled) by the hub


JPEG_MAGIC = b"\xff\xd8\xff"  # SOI and the first marker: every JPEG file starts so


@attrs.frozen
class Interrupt:
    pass


@attrs.frozen
class Gesture:
    name: str


@attrs.frozen
class Subscribe:
    video: bool | None
    audio: bool | None


def parse_client_binary(data: bytes) -> AudioInput:
    if len(data) % 2:
        raise ProtocolError("bad_audio", f"binary audio must be whole 16-bit samples; got {len(data)} bytes")
    return AudioInput(bytes(data), RATE, 1)


def parse_client_text(text: str) -> AudioInput | TextInput | Interrupt | Gesture | Subscribe:
    msg = json_object(text, "message", "bad_message")
    kind = msg.get("type")
    if kind == "audio_input":
        return _audio_input(msg)
    if kind == "text_input":
        data = _object(msg, "data")
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad_message", "text_input needs a non-empty string data.text")
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError("bad_message", f"data.text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        return TextInput(text)
    if kind == "control":
        return _control(_object(msg, "data"))
    if kind == "camera_frame":
        return _camera_frame(_object(msg, "data"))
    if isinstance(kind, str):
        raise ProtocolError("unknown_type", f"unknown message type {quote(kind)}; known: audio_input, text_input, control, "
                                            f"camera_frame")
    raise ProtocolError("bad_message", 'message needs a string "type"')


def _object(msg: dict, field: str) -> dict:
    value = msg.get(field)
    if not isinstance(value, dict):
        raise ProtocolError("bad_message", f"{quote(msg.get('type', 'message'))} needs an object {field!r}")
    return value


def _int_field(msg: dict, field: str, default: int, low: int, high: int) -> int:
    value = msg.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("bad_audio", f"{field} must be an integer; got {quote(value)}")
    if not low <= value <= high:
        raise ProtocolError("bad_audio", f"{field} {value} is outside {low}..{high}")
    return value


def _audio_input(msg: dict) -> AudioInput:
    rate = _int_field(msg, "sample_rate", RATE, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    channels = _int_field(msg, "channels", 1, 1, MAX_CHANNELS)
    data = msg.get("data")
    if not isinstance(data, str):
        raise ProtocolError("bad_audio", "audio_input needs base64 PCM16 in a string 'data'")
    try:
        # Standard alphabet as the seed's clients produce; URL-safe accepted too.
        pcm = base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_audio", "audio_input data is not valid base64") from None
    if len(pcm) % (2 * channels):
        raise ProtocolError("bad_audio", f"{len(pcm)} bytes is not a whole number of {channels}-channel 16-bit frames")
    return AudioInput(pcm, rate, channels)


def _camera_frame(data: dict) -> CameraInput:
    text = data.get("jpeg")
    if not isinstance(text, str) or not text:
        raise ProtocolError("bad_image", "camera_frame needs base64 JPEG in a string data.jpeg")
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:  # checked before decoding: base64 is 4/3 of the bytes
        raise ProtocolError("too_large", f"camera_frame is over {MAX_IMAGE_BYTES} bytes; send at most 768 px")
    try:
        jpeg = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_image", "camera_frame data.jpeg is not valid base64") from None
    if not jpeg.startswith(JPEG_MAGIC):
        raise ProtocolError("bad_image", "camera_frame data.jpeg is not a JPEG")
    return CameraInput(jpeg)


def _control(data: dict) -> Interrupt | Gesture | Subscribe:
    command = data.get("command")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("bad_message", "control params must be an object")
    if command == "interrupt":
        return Interrupt()
    if command == "gesture":
        name = params.get("gesture")
        if not isinstance(name, str) or not name:
            raise ProtocolError("bad_message", "gesture needs a string params.gesture")
        return Gesture(name)
    if command == "subscribe":
        flags = {}
        for field in ("video", "audio"):
            value = params.get(field)
            if value is not None and not isinstance(value, bool):
                raise ProtocolError("bad_message", f"subscribe params.{field} must be true or false")
            flags[field] = value
        return Subscribe(**flags)
    if isinstance(command, str):
        raise ProtocolError("unknown_command", f"unknown control command {quote(command)}; known: interrupt, gesture, subscribe")
    raise ProtocolError("bad_message", 'control needs a string data.command')

"""The WebSocket wire format: golden bytes, a decoder written from the document, every bad input."""

import base64
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avatard.errors import ProtocolError
from avatard.protocol import media as wire


def test_video_header_golden_bytes():
    data = wire.encode_video(512, 384, 25.0, b"\xff\xd8JPEG", 1700000000.5)
    assert data[:21] == bytes.fromhex("01" "0200" "0180" "41c80000" "00000006" "41d954fc40200000")
    assert data[21:] == b"\xff\xd8JPEG"


def test_audio_header_golden_bytes():
    pcm = struct.pack("<3h", 1, -2, 300)
    data = wire.encode_audio(16000, 1, pcm, 1700000000.5)
    assert data[:18] == bytes.fromhex("02" "00003e80" "01" "00000006" "41d954fc40200000")
    assert data[18:] == pcm


def read_like_the_document(data: bytes) -> dict:
    """A client written from docs/protocol.md alone: big-endian fields at the documented offsets."""
    kind = data[0]
    if kind == 1:
        width, height = struct.unpack(">HH", data[1:5])
        (fps,) = struct.unpack(">f", data[5:9])
        (length,) = struct.unpack(">I", data[9:13])
        (ts,) = struct.unpack(">d", data[13:21])
        return dict(kind="video", width=width, height=height, fps=fps, length=length, ts=ts, body=data[21:])
    rate, = struct.unpack(">I", data[1:5])
    channels = data[5]
    (length,) = struct.unpack(">I", data[6:10])
    (ts,) = struct.unpack(">d", data[10:18])
    return dict(kind="audio", rate=rate, channels=channels, length=length, ts=ts, body=data[18:])


@given(width=st.integers(1, 65535), height=st.integers(1, 65535), fps=st.sampled_from([20.0, 25.0, 30.0]),
       body=st.binary(max_size=64), ts=st.floats(0, 4e9))
def test_video_round_trip(width, height, fps, body, ts):
    data = wire.encode_video(width, height, fps, body, ts)
    doc = read_like_the_document(data)
    assert (doc["width"], doc["height"], doc["fps"], doc["length"], doc["ts"], doc["body"]) == (width, height, fps, len(body), ts, body)
    assert wire.decode_server_binary(data) == wire.VideoFrame(width, height, fps, ts, body)


@given(rate=st.integers(8000, 192000), channels=st.integers(1, 2), body=st.binary(max_size=64).filter(lambda b: len(b) % 2 == 0),
       ts=st.floats(0, 4e9))
def test_audio_round_trip(rate, channels, body, ts):
    data = wire.encode_audio(rate, channels, body, ts)
    doc = read_like_the_document(data)
    assert (doc["rate"], doc["channels"], doc["length"], doc["ts"], doc["body"]) == (rate, channels, len(body), ts, body)
    assert wire.decode_server_binary(data) == wire.AudioChunk(rate, channels, ts, body)


def test_valid_client_messages():
    pcm = struct.pack("<4h", 1, 2, 3, 4)
    msg = wire.parse_client_text(json.dumps({"type": "audio_input", "sample_rate": 48000, "channels": 2,
                                             "data": base64.b64encode(pcm).decode()}))
    assert msg == wire.AudioInput(pcm, 48000, 2)
    assert wire.parse_client_text('{"type":"text_input","data":{"text":"Hello"}}') == wire.TextInput("Hello")
    assert wire.parse_client_text('{"type":"control","data":{"command":"interrupt"}}') == wire.Interrupt()
    assert wire.parse_client_text('{"type":"control","data":{"command":"gesture","params":{"gesture":"nod_agree"}}}') == wire.Gesture("nod_agree")
    assert wire.parse_client_text('{"type":"control","data":{"command":"subscribe","params":{"video":false}}}') == wire.Subscribe(False, None)
    assert wire.parse_client_binary(pcm) == wire.AudioInput(pcm, 16000, 1)
    sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"
    assert wire.parse_client_text(json.dumps({"type": "webrtc_offer", "data": {"sdp": sdp}})) == wire.WebrtcOffer(sdp)
    assert wire.parse_client_text('{"type":"webrtc_close"}') == wire.WebrtcClose()


@pytest.mark.parametrize("text, code", [
    ("not json", "bad_json"),
    ("[1,2]", "bad_message"),
    ('{"type": 5}', "bad_message"),
    ('{"type":"dance"}', "unknown_type"),
    ('{"type":"text_input"}', "bad_message"),
    ('{"type":"text_input","data":{"text":42}}', "bad_message"),
    ('{"type":"text_input","data":{"text":"   "}}', "bad_message"),
    ('{"type":"control","data":{"command":"fly"}}', "unknown_command"),
    ('{"type":"control","data":{}}', "bad_message"),
    ('{"type":"control","data":{"command":"gesture"}}', "bad_message"),
    ('{"type":"control","data":{"command":"gesture","params":[]}}', "bad_message"),
    ('{"type":"control","data":{"command":"subscribe","params":{"video":"yes"}}}', "bad_message"),
    ('{"type":"audio_input","data":"!!!"}', "bad_audio"),
    ('{"type":"audio_input","data":12}', "bad_audio"),
    ('{"type":"audio_input","data":"AAE="}', "bad_audio"),  # 2 bytes ok... see next
    ('{"type":"audio_input","data":"AAEC"}', "bad_audio"),  # 3 bytes: not whole samples
    ('{"type":"audio_input","sample_rate":1,"data":"AAAA"}', "bad_audio"),
    ('{"type":"audio_input","sample_rate":1e12,"data":"AAAA"}', "bad_audio"),
    ('{"type":"audio_input","sample_rate":"16000","data":"AAAA"}', "bad_audio"),
    ('{"type":"audio_input","sample_rate":true,"data":"AAAA"}', "bad_audio"),
    ('{"type":"audio_input","channels":3,"data":"AAAA"}', "bad_audio"),
    ('{"type":"audio_input","channels":2,"data":"AAE="}', "bad_audio"),  # 2 bytes is half a stereo frame
    ('{"type":"webrtc_offer"}', "bad_message"),
    ('{"type":"webrtc_offer","data":{"sdp":42}}', "bad_offer"),
    ('{"type":"webrtc_offer","data":{"sdp":"hello"}}', "bad_offer"),
    (json.dumps({"type": "webrtc_offer", "data": {"sdp": "v=0" + "a" * wire.MAX_SDP_CHARS}}), "bad_offer"),
])
def test_bad_client_messages(text, code):
    if text == '{"type":"audio_input","data":"AAE="}':
        assert wire.parse_client_text(text).pcm == b"\x00\x01"  # the control case: valid
        return
    with pytest.raises(ProtocolError) as info:
        wire.parse_client_text(text)
    assert info.value.code == code


def test_odd_binary_audio_is_refused():
    with pytest.raises(ProtocolError):
        wire.parse_client_binary(b"\x00\x01\x02")

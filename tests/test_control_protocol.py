import pytest

from avatard.errors import ProtocolError
from avatard.protocol import control as proto


def test_parse_valid_requests():
    assert proto.parse_request(b'{"cmd":"status"}') == proto.Request("status")
    assert proto.parse_request(b'{"cmd":"say","text":"hi"}') == proto.Request("say", text="hi")
    assert proto.parse_request(b'{"cmd":"gesture","name":"nod_agree"}') == proto.Request("gesture", name="nod_agree")
    assert proto.parse_request(b'{"cmd":"subscribe","events":["frame"]}').events == frozenset({"frame"})


@pytest.mark.parametrize("line, code", [
    (b"garbage", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[]", "bad_request"),
    (b'{"cmd": 3}', "bad_request"),
    (b'{"cmd":"explode"}', "unknown_command"),
    (b'{"cmd":"say"}', "bad_request"),
    (b'{"cmd":"say","text":["a"]}', "bad_request"),
    (b'{"cmd":"subscribe","events":"frame"}', "bad_request"),
    (b'{"cmd":"subscribe","events":["weather"]}', "bad_request"),
])
def test_parse_invalid_requests(line, code):
    with pytest.raises(ProtocolError) as info:
        proto.parse_request(line)
    assert info.value.code == code


def test_line_splitter_keeps_partial_lines_and_enforces_the_limit():
    splitter = proto.LineSplitter(limit=16)
    assert splitter.feed(b'{"a"') == []
    assert splitter.feed(b':1}\n\n{"b":2}\r\n{"c"') == [b'{"a":1}', b'{"b":2}']
    with pytest.raises(ProtocolError):
        splitter.feed(b"x" * 20)
    with pytest.raises(ProtocolError):
        proto.LineSplitter(limit=16).feed(b"y" * 20 + b"\n")

"""Server mode against the real daemon: protocol, input, fan-out, security, bad input."""

import base64
import json
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import trio
import trio_websocket
from wsclient import Client, open_client, samples

from avatard.brains import tts

SERVER = ("--server", "--host", "127.0.0.1", "--port", "0")


@pytest.fixture
def server(daemon_factory):
    return daemon_factory(*SERVER)


async def test_connect_status_then_synced_frames(server):
    async with open_client(server.port, "/") as ws:  # the seed's clients connect at "/"
        client = Client(ws)
        first = await client.receive()
        assert first["type"] == "status" and first["data"]["status"] == "connected"
        assert first["data"]["client_id"].startswith("client_") and abs(first["data"]["timestamp"] - time.time()) < 5
        with trio.fail_after(10):
            while len(client.video) < 30 or len(client.audio) < 30:
                await client.receive()
    for frame in client.video[:30]:
        image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (512, 512, 3) and (frame.width, frame.height, frame.fps) == (512, 512, 25.0)
    by_time = {c.timestamp: c for c in client.audio}
    paired = [f for f in client.video if f.timestamp in by_time]
    assert len(paired) >= 25, "each video frame has an audio chunk with the same timestamp"
    assert all(len(samples(by_time[f.timestamp])) == 640 and by_time[f.timestamp].sample_rate == 16000 for f in paired)
    stamps = sorted(by_time)
    assert np.allclose(np.diff(stamps), 0.04, atol=1e-6)


async def test_text_input_gets_transcripts_and_speech(server):
    async with open_client(server.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        await client.send_json({"type": "text_input", "data": {"text": "Hello, how are you?"}})
        user = await client.json_of("transcription", role="user")
        assert user["data"]["text"] == "Hello, how are you?" and user["data"]["is_final"] is True
        assistant = await client.json_of("transcription", role="assistant")
        assert assistant["data"]["text"] == "Hello, how are you?"
        await client.json_of("status", status="speaking")
        client.audio.clear()
        await client.json_of("status", status="listening")
        loud = [c for c in client.audio if np.abs(samples(c)).max() > 1000]
        assert len(loud) > 10


async def test_gesture_and_subscribe(server):
    async with open_client(server.port) as ws:
        client = Client(ws)
        gestures = await client.json_of("gestures")
        assert "mini_wave_hello" in gestures["data"]["gestures"]
        await client.send_json({"type": "control", "data": {"command": "gesture", "params": {"gesture": "mini_wave_hello"}}})
        event = await client.json_of("gesture")
        assert event["data"]["gesture"] == "mini_wave_hello"
        await client.send_json({"type": "control", "data": {"command": "subscribe", "params": {"video": False, "audio": True}}})
        await client.json_of("status", status="subscribed")
        client.video.clear()
        client.audio.clear()
        with trio.move_on_after(1.0):
            while True:
                await client.receive()
        assert client.video == [] and len(client.audio) >= 20
        await client.send_json({"type": "control", "data": {"command": "subscribe", "params": {"video": True, "audio": False}}})
        await client.json_of("status", status="subscribed")
        client.video.clear()
        client.audio.clear()
        with trio.move_on_after(1.0):
            while True:
                await client.receive()
        assert client.audio == [] and len(client.video) >= 20


async def test_bad_webrtc_offers_get_an_error_and_the_connection_stays(server):
    offers = ["v=0\r\n", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "v=0\r\n" + "a=x\r\n" * 2000,
              "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
              "c=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=mid:0\r\na=recvonly\r\n"]
    for offer in offers:  # each on its own connection: one offer a second per client
        async with open_client(server.port) as ws:
            client = Client(ws)
            await client.send_json({"type": "webrtc_offer", "data": {"sdp": offer}})
            await client.json_of("error", code="bad_offer")
    async with open_client(server.port) as ws:
        client = Client(ws)
        await client.send_json({"type": "webrtc_offer", "data": {"sdp": offers[0]}})
        await client.send_json({"type": "webrtc_offer", "data": {"sdp": offers[0]}})
        await client.json_of("error", code="bad_offer")
        await client.json_of("error", code="busy")
        await client.send_json({"type": "text_input", "data": {"text": "still here"}})
        await client.json_of("transcription", role="user")
    assert server.status()["webrtc"]["failures"] == len(offers) + 1


async def test_interrupt_flushes_every_client(server):
    async with open_client(server.port) as ws_a, open_client(server.port) as ws_b:
        a, b = Client(ws_a), Client(ws_b)
        await a.json_of("status", status="connected")
        await b.json_of("status", status="connected")
        await a.send_json({"type": "text_input", "data": {"text": "This is a long answer that will be cut off in the middle by an interrupt. " * 3}})
        await b.until(lambda m: not isinstance(m, dict) and hasattr(m, "sample_rate") and np.abs(samples(m)).max() > 1000)
        await a.send_json({"type": "control", "data": {"command": "interrupt"}})
        for client in (a, b):
            await client.json_of("status", status="interrupted")
            client.audio.clear()
            with trio.move_on_after(1.0):
                while True:
                    await client.receive()
            assert len(client.audio) >= 20
            assert all(np.abs(samples(c)).max() == 0 for c in client.audio), "no stale speech after interrupted"


def speech_with_silence() -> bytes:
    voice = tts.synthesize("Testing one two three, can you hear me?")
    return np.concatenate([voice, np.zeros(16000, np.int16)]).astype("<i2").tobytes()


async def test_binary_and_json_audio_input_are_echoed(server):
    pcm = speech_with_silence()
    async with open_client(server.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        for start in range(0, len(pcm), 1280):  # 40 ms binary chunks, as the page sends them
            await ws.send_message(pcm[start:start + 1280])
        user = await client.json_of("transcription", role="user")
        assert "s of speech" in user["data"]["text"]
        await client.json_of("transcription", role="assistant")
        await client.json_of("status", status="speaking")
        await client.json_of("status", status="listening", timeout=15)
        # The same speech as 48 kHz stereo JSON: downmixed and resampled to 16 kHz before the brain.
        mono = np.frombuffer(pcm, "<i2")
        import soxr
        stereo = np.repeat(soxr.resample(mono, 16000, 48000).astype("<i2")[:, None], 2, axis=1).tobytes()
        for start in range(0, len(stereo), 48000 * 4 // 10):
            await client.send_json({"type": "audio_input", "sample_rate": 48000, "channels": 2,
                                    "data": base64.b64encode(stereo[start:start + 48000 * 4 // 10]).decode()})
        second = await client.json_of("transcription", role="user", timeout=15)
        first_len = float(user["data"]["text"].split()[0].strip("["))
        second_len = float(second["data"]["text"].split()[0].strip("["))
        assert abs(first_len - second_len) < 0.3


BAD_MESSAGES = [
    "not json at all",
    "[1, 2, 3]",
    '{"type": "dance"}',
    '{"type": 7}',
    '{"type": "text_input"}',
    '{"type": "text_input", "data": {"text": 5}}',
    '{"type": "control", "data": {"command": "teleport"}}',
    '{"type": "control", "data": {"command": "gesture", "params": {"gesture": "moonwalk"}}}',
    '{"type": "control", "data": {"command": "gesture", "params": {}}}',
    '{"type": "control", "data": {"command": "subscribe", "params": {"video": "no"}}}',
    '{"type": "audio_input", "data": "%%%not-base64%%%"}',
    '{"type": "audio_input", "data": "AAEC"}',
    '{"type": "audio_input", "sample_rate": 99999999, "data": "AAAA"}',
    '{"type": "audio_input", "sample_rate": -5, "data": "AAAA"}',
    '{"type": "audio_input", "channels": 9, "data": "AAAA"}',
    '{"type": "audio_input", "sample_rate": "fast", "data": "AAAA"}',
]


async def test_bad_input_gets_errors_and_the_connection_lives(server):
    async with open_client(server.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        for text in BAD_MESSAGES:
            await ws.send_message(text)
            error = await client.json_of("error")
            assert error["data"]["code"] and error["data"]["message"], text
        await ws.send_message(b"\x01\x02\x03")  # odd byte count of binary audio
        error = await client.json_of("error")
        assert error["data"]["code"] == "bad_audio"
        await client.send_json({"type": "text_input", "data": {"text": "still here"}})
        reply = await client.json_of("transcription", role="user")
        assert reply["data"]["text"] == "still here"
    assert server.proc.poll() is None


async def test_oversized_message_closes_with_1009_others_unaffected(server):
    async with open_client(server.port) as other:
        watcher = Client(other)
        await watcher.json_of("status", status="connected")
        async with open_client(server.port) as ws:
            await ws.send_message(b"\x00" * ((1 << 20) + 2))
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                with trio.fail_after(5):
                    while True:
                        await ws.get_message()
            assert info.value.reason.code == 1009
        watcher.video.clear()
        with trio.move_on_after(1.0):
            while True:
                await watcher.receive()
        assert len(watcher.video) >= 20


async def closed_code(port, path="/ws", **kwargs) -> int:
    async with open_client(port, path, **kwargs) as ws:
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            with trio.fail_after(5):
                while True:
                    message = await ws.get_message()
                    assert isinstance(message, str), "no media before the refusal"
                    assert json.loads(message)["data"].get("status") != "connected"
    return info.value.reason.code


async def test_token_and_origin(daemon_factory):
    daemon = daemon_factory(*SERVER, "--token", "s3cret", "--allow-origin", "http://kiosk.local")
    port = daemon.port
    assert await closed_code(port) == 1008
    assert await closed_code(port, "/ws?token=wrong") == 1008
    assert await closed_code(port, "/ws?token=s3cret", extra_headers=[("Origin", "http://evil.example")]) == 1008
    async with open_client(port, "/ws?token=s3cret", extra_headers=[("Origin", "http://kiosk.local")]) as ws:
        first = json.loads(await ws.get_message())
        assert first["data"]["status"] == "connected"


async def test_max_clients_answers_1013(daemon_factory):
    daemon = daemon_factory(*SERVER, "--max-clients", "2")
    port = daemon.port
    async with open_client(port) as a, open_client(port) as b:
        for ws in (a, b):
            assert json.loads(await ws.get_message())["data"]["status"] == "connected"
        assert await closed_code(port) == 1013
        assert daemon.status()["clients"] == 2


def test_page_and_health_are_served(server):
    port = server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
        assert response.status == 200 and "text/html" in response.headers["content-type"]
        assert b"<canvas" in response.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as response:
        assert json.loads(response.read())["ok"] is True
    for missing in ("/nope", "/../pyproject.toml", "/.env"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{missing}")
        assert info.value.code == 404


async def test_a_stalled_client_never_slows_the_others(server):
    """One client stops reading entirely; a healthy one keeps getting every frame at 25 fps."""
    port = server.port
    stalled_stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    await stalled_stream.send_all((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    # ... and never reads again.
    async with open_client(port) as ws:
        healthy = Client(ws)
        await healthy.json_of("status", status="connected")
        healthy.video.clear()
        started = trio.current_time()
        with trio.move_on_after(8.0):
            while True:
                await healthy.receive()
        elapsed = trio.current_time() - started
        assert len(healthy.video) >= 0.95 * 25 * elapsed
        deadline = trio.current_time() + 30
        while trio.current_time() < deadline:
            info = server.status()
            stalled = [c for c in info["client_list"] if c["id"] != healthy.json[0]["data"]["client_id"]]
            if not stalled or stalled[0]["video_dropped"] > 0:
                break
            await trio.sleep(0.5)
        assert not stalled or stalled[0]["video_dropped"] > 0, "the stalled client loses video frames, not the others"
    await stalled_stream.aclose()


def test_metrics_match_status(server):
    server.ctl("say", "Counting frames for the metrics endpoint.")
    server.ctl("interrupt")
    time.sleep(0.3)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    status = server.status()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["avatard_interrupts_total"] == status["interrupts"] == 1
    assert 0 < values["avatard_frames_rendered_total"] <= status["frames_rendered"]
    assert values["avatard_latency_interrupt_to_silence_seconds_count"] == 1
    assert values["avatard_latency_interrupt_to_silence_seconds_sum"] < 0.08
    assert status["latency_p95_ms"]["interrupt_to_silence"] <= 80
    for name in ("avatard_clients", "avatard_bytes_sent_total", "avatard_turns_total", "avatard_brain_reconnects_total",
                 "avatard_frames_dropped_total", "avatard_latency_input_to_audio_seconds_count"):
        assert name in values, name
    # avatarctl metrics: the same exposition through the control socket (local mode serves no HTTP).
    shown = server.ctl("metrics")
    assert shown.returncode == 0, shown.stderr
    over_socket = {line.split(" ")[0]: float(line.split(" ")[1]) for line in shown.stdout.splitlines()
                   if line and not line.startswith("#")}
    assert over_socket.keys() == values.keys()
    assert over_socket["avatard_interrupts_total"] == 1
    assert over_socket["avatard_frames_rendered_total"] >= values["avatard_frames_rendered_total"]
    as_json = json.loads(server.ctl("--json", "metrics").stdout)
    assert as_json["ok"] and as_json["content_type"].startswith("text/plain") and "avatard_interrupts_total" in as_json["text"]


def test_metrics_port_serves_the_exposition_on_loopback_only(daemon_factory, tmp):
    # --metrics-port is for local mode (no server port); any mode takes it, so it is tested on a server daemon
    # beside the server port's own /metrics.
    daemon = daemon_factory("--metrics-port", "0")
    url = daemon.status()["metrics_url"]
    host, port = url.split("/")[2].split(":")
    assert host == "127.0.0.1" and url.endswith("/metrics")
    with urllib.request.urlopen(url) as response:
        assert response.headers["content-type"].startswith("text/plain")
        names = {line.split(" ")[0] for line in response.read().decode().splitlines() if line and not line.startswith("#")}
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics") as response:
        assert names == {line.split(" ")[0] for line in response.read().decode().splitlines()
                         if line and not line.startswith("#")}
    for path, method, code in (("/", "GET", 404), ("/metrics", "POST", 405)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method))
        assert refused.value.code == code
    assert daemon.status()["metrics_scrapes"] == 1
    listening = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
    ours = [fields[1] for fields in listening if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == int(port)]
    assert ours == [f"0100007F:{int(port):04X}"], "bound to 127.0.0.1, not to every interface"


def test_a_metrics_port_in_use_is_one_line_and_exit_2(tmp):
    import socket
    import subprocess
    import sys

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "avatard", "--server", "--host", "127.0.0.1", "--port", "0",
                             "--control-socket", str(tmp / "s.sock"), "--metrics-port", str(port)],
                            capture_output=True, text=True, timeout=60, cwd=tmp)
    busy.close()
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]  # start-up's log lines come first
    assert errors == [f"avatard: error: --metrics-port: cannot listen on 127.0.0.1:{port}: Address already in use"]

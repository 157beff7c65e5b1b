"""Issue 17: what a stranger on the same network can leak, squat or flood, against the real daemon.

Every attack is bounded and goes to loopback only. Distinct client addresses are 127.0.0.x (Linux
routes all of 127/8 to the loopback interface).
"""

import base64
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import trio
from conftest import SERVER_ARGS, start_daemon
from wsclient import Client, open_client

from avatard.constants import MAX_TEXT_CHARS
from avatard.control.server import IDLE_TIMEOUT, MAX_CONNECTIONS
from avatard.errors import QUOTE_CHARS
from avatard.server.websocket import PING_INTERVAL, PONG_TIMEOUT

KEY = base64.b64encode(b"0123456789abcdef").decode()


def rss_mb(daemon) -> float:
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def open_fds(daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def upgrade_request(path="/ws", version="13", key=KEY, connection="Upgrade") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", f"Sec-WebSocket-Version: {version}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked_text_frame(text: str) -> bytes:
    """One client->server text frame, masked as RFC 6455 requires (payload under 126 bytes)."""
    payload = text.encode()
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_until_closed(stream, timeout=5.0) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some(4096):
            data += chunk
    return data


# -- 1. refused handshakes leaked their task and socket for ever ----------------------------------------

BAD_HANDSHAKES = [upgrade_request(version="8"), upgrade_request(key=None), upgrade_request(connection=None),
                  upgrade_request(key="c2hvcnQ=")]


async def test_refused_handshakes_leak_nothing_and_stop_stays_fast(daemon_factory):
    daemon = daemon_factory()
    port = daemon.port
    for request in BAD_HANDSHAKES:  # each is answered and closed, not left hanging
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request)
        reply = await read_until_closed(stream)
        assert reply.startswith((b"HTTP/1.1 426 ", b"HTTP/1.1 400 ")), reply[:80]
    before = rss_mb(daemon)

    async def attacker(n):
        for i in range(n):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(BAD_HANDSHAKES[i % len(BAD_HANDSHAKES)])
            await read_until_closed(stream)
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(attacker, 150)  # 3,000 refusals: 36 MB of leaked handlers before the fix
    with trio.fail_after(5):
        while daemon.status()["pending_connections"]:
            await trio.sleep(0.1)
    assert rss_mb(daemon) - before < 15
    assert open_fds(daemon) < 80
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.0, "inside the unit's TimeoutStopSec"


# -- 2. squatters: no media asked for, never reading --------------------------------------------------

async def squat(port: int, address: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=address)
    await stream.send_all(upgrade_request())
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    await stream.send_all(masked_text_frame(json.dumps({"type": "control", "data": {
        "command": "subscribe", "params": {"video": False, "audio": False}}})))
    return stream  # ... and never read again


async def test_squatters_are_evicted_and_a_new_viewer_gets_in(daemon_factory):
    daemon = daemon_factory("--max-clients", "4")
    port = daemon.port
    squatters = [await squat(port, f"127.0.0.{n}") for n in range(2, 6)]
    with trio.fail_after(5):
        while daemon.status()["clients"] < 4:
            await trio.sleep(0.1)
    from test_server import closed_code
    assert await closed_code(port) == 1013  # full, for now
    with trio.fail_after(PING_INTERVAL + PONG_TIMEOUT + 5):
        while daemon.status()["clients"]:
            await trio.sleep(0.25)
    async with open_client(port) as ws:
        assert json.loads(await ws.get_message())["data"]["status"] == "connected"
    assert "did not answer a ping" in daemon.log()
    for stream in squatters:
        await stream.aclose()


async def test_clients_per_address_are_capped(daemon_factory):
    daemon = daemon_factory("--max-clients-per-ip", "2")
    port = daemon.port
    from test_server import closed_code
    async with open_client(port) as a, open_client(port) as b:
        for ws in (a, b):
            assert json.loads(await ws.get_message())["data"]["status"] == "connected"
        assert await closed_code(port) == 1013
        other = await squat(port, "127.0.0.7")  # another address still gets in
        with trio.fail_after(5):
            while daemon.status()["clients"] < 3:
                await trio.sleep(0.1)
        await other.aclose()


# -- 3. a text flood cannot take the voice --------------------------------------------------------------

async def test_a_text_flood_cannot_delay_say_nor_survive_one_interrupt(daemon_factory):
    daemon = daemon_factory()
    async with open_client(daemon.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        for i in range(40):
            await client.send_json({"type": "text_input", "data": {"text": (f"flood {i} " * 400)[:MAX_TEXT_CHARS]}})
        busy = 0
        with trio.fail_after(10):
            while busy < 39:
                message = await client.receive()
                busy += isinstance(message, dict) and message["type"] == "error" and message["data"]["code"] == "busy"
        started = time.monotonic()
        result = await trio.to_thread.run_sync(daemon.ctl, "say", "The operator speaks.")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 3.0  # a fresh Python process included
        # At once, so it lands while the first turn is still being synthesized (espeak's first call is slow).
        assert daemon.ctl("interrupt").returncode == 0
        await client.json_of("status", status="interrupted")
        client.json.clear()
        client.audio.clear()
        with trio.move_on_after(4.0):
            while True:
                await client.receive()
    statuses = [m["data"].get("status") for m in client.json if m["type"] == "status"]
    assert "speaking" not in statuses, "one interrupt emptied every queue"
    assert len(client.audio) > 50 and all(not any(chunk.pcm) for chunk in client.audio)


# -- 4. error replies stay short; a client that never reads them is let go ---------------------------------

async def test_error_replies_quote_only_a_prefix(daemon_factory):
    daemon = daemon_factory()
    huge = "x" * 100_000
    async with open_client(daemon.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        for message in ({"type": huge}, {"type": "control", "data": {"command": huge}},
                        {"type": "control", "data": {"command": "gesture", "params": {"gesture": huge}}}):
            await client.send_json(message)
            error = await client.json_of("error")
            assert len(error["data"]["message"]) < 200 + QUOTE_CHARS, error["data"]["code"]
            assert "xxxx" in error["data"]["message"]  # the prefix is there to recognise


async def test_a_client_that_floods_without_reading_costs_bounded_memory(daemon_factory):
    daemon = daemon_factory()
    before = rss_mb(daemon)
    async with open_client(daemon.port, message_queue_size=0) as ws:
        await ws.send_message(json.dumps({"type": "control", "data": {"command": "subscribe",
                                                                      "params": {"video": False, "audio": False}}}))
        bad = json.dumps({"type": "y" * 100_000})
        with trio.move_on_after(15):
            for _ in range(1000):  # 100 MB of input, none of the replies read
                await ws.send_message(bad)
    assert rss_mb(daemon) - before < 60
    assert daemon.proc.poll() is None


# -- 5. file descriptors --------------------------------------------------------------------------------

FD_LIMIT = 128


def low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_idle_sockets_at_the_fd_limit_do_not_stop_healthz(tmp):
    daemon = start_daemon(tmp, preexec_fn=low_fd_limit)
    try:
        port = daemon.port
        idle = []
        for _ in range(2 * FD_LIMIT):
            sock = socket.create_connection(("127.0.0.1", port))
            idle.append(sock)
        time.sleep(1.0)
        for attempt in range(3):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    assert json.loads(response.read()) == {"ok": True, "clients": 0}
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == 2:
                    raise
        assert open_fds(daemon) <= FD_LIMIT
        for sock in idle:
            sock.close()
        time.sleep(0.5)
        log = daemon.log()
        assert "Traceback" not in log
        assert log.count("cannot accept connections") <= 3, "one line per burst"
    finally:
        daemon.stop()


def test_idle_control_connections_are_closed_and_capped(daemon_factory):
    daemon = daemon_factory()
    idle = []
    for _ in range(MAX_CONNECTIONS + 1):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(daemon.socket)
        idle.append(sock)
    idle[0].settimeout(5)
    assert idle[0].recv(100) == b"", "past the cap the oldest is closed at once"
    started = time.monotonic()
    assert daemon.ctl("status").returncode == 0, "a fresh avatarctl is always served"
    assert time.monotonic() - started < 3
    deadline = time.monotonic() + IDLE_TIMEOUT + 5
    for sock in idle[1:]:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        assert sock.recv(100) == b"", "closed by the daemon after IDLE_TIMEOUT"
        sock.close()


# -- 6. open by default, transcripts, /metrics ----------------------------------------------------------

async def test_a_second_browser_does_not_see_the_first_ones_transcripts(daemon_factory):
    daemon = daemon_factory()
    async with open_client(daemon.port) as ws_a, open_client(daemon.port) as ws_b:
        a, b = Client(ws_a), Client(ws_b)
        await a.json_of("status", status="connected")
        await b.json_of("status", status="connected")
        await a.send_json({"type": "text_input", "data": {"text": "my door code is 4711"}})
        mine = await a.json_of("transcription", role="user")
        assert mine["data"] == {"role": "user", "text": "my door code is 4711", "is_final": True,
                                "timestamp": mine["data"]["timestamp"]}, "seed format, no routing fields"
        await b.json_of("transcription", role="assistant")  # the avatar's own words are for everyone
    assert not [m for m in b.json if m["type"] == "transcription" and m["data"]["role"] == "user"]


async def test_roles_share_transcripts_and_metrics_need_the_token(daemon_factory):
    daemon = daemon_factory("--token", "talk-7f3a", "--viewer-token", "watch-91c2", "--share-transcripts")
    port = daemon.port
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{base}/metrics")
    assert info.value.code == 401
    request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": "Bearer talk-7f3a"})
    with urllib.request.urlopen(request) as response:
        assert b"avatard_clients" in response.read()
    with urllib.request.urlopen(f"{base}/healthz") as response:
        assert json.loads(response.read()) == {"ok": True}
    with urllib.request.urlopen(f"{base}/healthz?token=watch-91c2") as response:
        assert json.loads(response.read()) == {"ok": True}
    async with (open_client(port, "/ws?token=talk-7f3a") as ws_a, open_client(port, "/ws?token=talk-7f3a") as ws_b,
                open_client(port, "/ws?token=watch-91c2") as ws_v):
        a, b, viewer = Client(ws_a), Client(ws_b), Client(ws_v)
        for client in (a, b, viewer):
            await client.json_of("status", status="connected")
        await viewer.send_json({"type": "text_input", "data": {"text": "let me talk"}})
        assert (await viewer.json_of("error"))["data"]["code"] == "forbidden"
        await viewer.send_json({"type": "control", "data": {"command": "subscribe", "params": {"video": False}}})
        await viewer.json_of("status", status="subscribed")
        await a.send_json({"type": "text_input", "data": {"text": "shared with talkers"}})
        await b.json_of("transcription", role="user", text="shared with talkers")
        await viewer.json_of("transcription", role="assistant")
    assert not [m for m in viewer.json if m["type"] == "transcription" and m["data"]["role"] == "user"]
    assert "talk-7f3a" not in daemon.log() and "watch-91c2" not in daemon.log()
    assert "talk-7f3a" not in daemon.ctl("status", "--json").stdout


async def test_beyond_loopback_a_token_is_generated_once_and_required(daemon_factory, tmp):
    state = tmp / "state"
    args = ("--server", "--host", "0.0.0.0", "--port", "0")
    daemon = daemon_factory(*args, env={"STATE_DIRECTORY": str(state)})
    token_file = state / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in daemon.log() and str(token_file) in daemon.log(), "stderr is no TTY: where, not what"
    from test_server import closed_code
    assert await closed_code(daemon.port) == 1008
    async with open_client(daemon.port, f"/ws?token={token}") as ws:
        assert json.loads(await ws.get_message())["data"]["status"] == "connected"
    daemon.stop()
    again = daemon_factory(*args, env={"STATE_DIRECTORY": str(state)})
    assert token_file.read_text().strip() == token
    again.stop()
    opened = daemon_factory(*args, "--no-auth", env={"STATE_DIRECTORY": str(tmp / "other")})
    assert "--no-auth: anyone who can reach" in opened.log()
    async with open_client(opened.port) as ws:
        assert json.loads(await ws.get_message())["data"]["status"] == "connected"


def test_token_file_and_refusals_at_start(tmp):
    (tmp / "tok").write_text("from-a-file-5e1d\n")
    run = [sys.executable, "-m", "avatard", "--server", "--port", "0", "--control-socket", str(tmp / "c.sock")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARD_")}
    both = subprocess.run([*run, "--token", "x", "--token-file", str(tmp / "tok")], capture_output=True, text=True,
                          env=env, timeout=30)
    assert both.returncode == 2 and "--token-file" in both.stderr
    viewer_alone = subprocess.run([*run, "--host", "127.0.0.1", "--viewer-token", "v"], capture_output=True, text=True,
                                  env=env, timeout=30)
    assert viewer_alone.returncode == 2 and "--viewer-token" in viewer_alone.stderr
    help_text = subprocess.run([sys.executable, "-m", "avatard", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--token-file" in help_text and "AVATARD_TOKEN" in help_text


def test_a_planted_fallback_socket_is_refused(tmp):
    planted = tmp / "avatard-planted.sock"
    planted.write_text("")
    os.chown(planted, 65534, 65534)  # the tests run as root; a file "another user" owns
    result = subprocess.run([sys.executable, "-m", "avatard", *SERVER_ARGS, "--control-socket", str(planted)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "belongs to uid 65534" in result.stderr


def test_the_control_socket_is_created_owner_and_group_only(daemon_factory):
    daemon = daemon_factory()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660

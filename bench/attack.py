"""A stranger on the same network, attack by attack: does the daemon hold, and what does it cost?

One ``avatard --server`` on 127.0.0.1 with ``--token`` and ``--viewer-token``; a watcher (a legitimate
client with the token) counts video frames throughout. Each attack is bounded (a few seconds, loopback
only, distinct 127.0.0.x source addresses where "another machine" matters) and judged by one rule. Per
attack: held or not (with what was seen), the watcher's worst gap between frames during it, and the
daemon's RSS and open file descriptors before and after.

    /work/venv/bin/python bench/attack.py [--no-readme]

Attacks marked "(token)" are made by a client that has the talk token (a user gone rogue); the others
by a stranger without it. Exit status 1 if any attack was not held.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request

import _common as c
import trio
import trio_websocket

TOKEN = "attack-bench-talk-token"
VIEWER = "attack-bench-viewer-token"
KEY = base64.b64encode(b"0123456789abcdef").decode()
DAEMON_ARGS = ("--server", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning",
               "--token", TOKEN, "--viewer-token", VIEWER)
FRAME_GAP_GOAL = 0.2  # s: 5 frames at 25 fps; a gap beyond it is visible to the watcher


def upgrade(version="13", key=KEY, token=TOKEN, extra="") -> bytes:
    query = f"?token={token}" if token else ""
    key_line = f"Sec-WebSocket-Key: {key}\r\n" if key else ""
    return (f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: {version}\r\n{key_line}{extra}\r\n").encode()


def masked_text(text: str) -> bytes:
    payload, mask = text.encode(), b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def drain(stream, timeout=5.0) -> bytes:
    data = b""
    with trio.move_on_after(timeout):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def fds(pid: int) -> int:
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers),
                                    timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


class Watcher:
    """The legitimate viewer: receive times of its video frames."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def run(self, port: int) -> None:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes) and message[0] == 0x01:
                    self.times.append(time.monotonic())

    def worst_gap(self, start: float, end: float) -> float:
        times = [t for t in self.times if start <= t <= end]
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


# -- the attacks: each returns (held, what was seen) ---------------------------------------------------

async def refused_handshakes(d, port):
    async def one(i):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all([upgrade(version="8"), upgrade(key=None)][i % 2])
        await drain(stream)
        await stream.aclose()
    for batch in range(100):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
    await trio.sleep(0.5)
    pending = d.status()["pending_connections"]
    return pending == 0, f"2000 refusals (426/400), {pending} still pending"


async def slowloris(d, port):
    streams = []
    for i in range(60):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and the head never ends
        streams.append(stream)
    await trio.sleep(11)  # http_front.HEAD_TIMEOUT + 1
    closed = sum([await drain(s, 0.2) == b"" for s in streams])
    for s in streams:
        await s.aclose()
    return closed == len(streams), f"{closed}/{len(streams)} unfinished heads closed by the 10 s deadline"


async def idle_socket_flood(d, port):
    streams = [await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.3") for _ in range(1000)]
    await trio.sleep(0.5)
    status, _ = await trio.to_thread.run_sync(http_get, port, "/healthz")
    held_fds = fds(d.pid)
    for s in streams:
        await s.aclose()
    return status == 200 and held_fds < 150, f"1000 idle sockets: /healthz {status}, daemon fds {held_fds}"


async def squatters(d, port):
    streams = []
    for n in range(4, 8):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=f"127.0.0.{n}")
        await stream.send_all(upgrade())
        await stream.receive_some(4096)
        await stream.send_all(masked_text(json.dumps({"type": "control", "data": {"command": "subscribe",
                                                      "params": {"video": False, "audio": False}}})))
        streams.append(stream)
    started = time.monotonic()
    while time.monotonic() - started < 15 and len(d.status()["client_list"]) > 1:
        await trio.sleep(0.25)
    evicted_after = time.monotonic() - started
    left = len(d.status()["client_list"]) - 1
    for s in streams:
        await s.aclose()
    return left == 0, f"4 never-reading clients (token), all media off: evicted after {evicted_after:.1f} s"


async def per_address(d, port):
    refused = []
    async with trio.open_nursery() as nursery:
        async def one():
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.8")
            await stream.send_all(upgrade())
            refused.append(b"\x03\xf5" in (await drain(stream, 1.5))[:4096])  # a close frame with 1013, first thing
            await stream.aclose()
        for _ in range(8):
            nursery.start_soon(one)
    return sum(refused) == 4, f"8 clients from one address: {8 - sum(refused)} admitted, {sum(refused)} closed 1013"


async def text_flood(d, port):
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
        for i in range(40):
            await ws.send_message(json.dumps({"type": "text_input", "data": {"text": (f"flood {i} " * 300)[:2000]}}))
        busy = 0
        with trio.move_on_after(5):
            while busy < 39:
                message = await ws.get_message()
                if isinstance(message, str) and '"code":"busy"' in message:
                    busy += 1
        started = time.monotonic()
        say = await trio.to_thread.run_sync(d.avatarctl, "say", "The operator speaks.")
        say_time = time.monotonic() - started
        interrupt = await trio.to_thread.run_sync(d.avatarctl, "interrupt")
        speaking = False
        for _ in range(10):  # 0.5 s for the last frames in flight, then 2.5 s of silence
            await trio.sleep(0.3)
            speaking = speaking or d.status()["speaking"]
    return (busy >= 39 and say.returncode == 0 and interrupt.returncode == 0 and not speaking,
            f"40 x 2000 chars (token): {busy} refused busy; avatarctl say exit {say.returncode} in {say_time:.1f} s; "
            f"after one interrupt speaking={speaking}")


async def error_echo_flood(d, port):
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", message_queue_size=0) as ws:
        await ws.send_message(json.dumps({"type": "control", "data": {"command": "subscribe",
                                                                      "params": {"video": False, "audio": False}}}))
        bad = json.dumps({"type": "y" * 100_000})
        before, sent = rss_mb(d.pid), 0
        with trio.move_on_after(10):
            for _ in range(600):
                await ws.send_message(bad)
                sent += 1
        growth = rss_mb(d.pid) - before
    return growth < 60, (f"{sent} x 100 KB unknown types, replies never read (token): RSS +{growth:.0f} MB while "
                         "flooding (replies quote 40 characters, the JSON queue is bounded)")


async def traversal_and_header_bomb(d, port):
    codes = [http_get(port, path)[0] for path in ("/../pyproject.toml", "/%2e%2e/pyproject.toml", "/.env",
                                                  "/static/../../README.md")]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(b"GET / HTTP/1.1\r\n" + b"X-Bomb: " + b"a" * 65536 + b"\r\n\r\n")
        reply = await drain(stream, 2)
    except trio.BrokenResourceError:
        reply = b""  # reset by the daemon mid-send: refused
    await stream.aclose()
    return all(code == 404 for code in codes) and not reply.startswith(b"HTTP/1.1 200"), \
        f"traversal answers {codes}; 64 KiB header: {'closed' if not reply else reply[:12]!r}"


async def oversize_and_ping_flood(d, port):
    code = None
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
        try:
            async with trio.open_nursery() as nursery:
                async def read():  # the client's own reader answers nothing while its queue is full
                    while True:
                        await ws.get_message()
                nursery.start_soon(read)
                with trio.fail_after(30):
                    for _ in range(2000):
                        await ws.ping()
                await ws.send_message(b"\x00" * ((1 << 20) + 2))
        except trio_websocket.ConnectionClosed as exc:
            code = exc.reason.code
        except BaseExceptionGroup as group:  # noqa: F821 (a builtin since Python 3.11, which the benches use)
            closed = group.subgroup(trio_websocket.ConnectionClosed)
            if closed is None:
                raise
            code = closed.exceptions[0].reason.code
    return code == 1009, f"2000 pings answered; 1 MiB+2 message closed with {code}"


async def bad_audio(d, port):
    errors = 0
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token={TOKEN}") as ws:
        async with trio.open_nursery() as nursery:
            async def count():  # read while sending: a client that leaves 256 replies unread is let go
                nonlocal errors
                while errors < 1000:
                    message = await ws.get_message()
                    errors += isinstance(message, str) and '"type":"error"' in message
            nursery.start_soon(count)
            for _ in range(500):
                await ws.send_message(b"\x01\x02\x03")
                await ws.send_message('{"type":"audio_input","sample_rate":99999999,"data":"AAAA"}')
            with trio.move_on_after(5):
                while errors < 1000:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    return errors == 1000, f"1000 bad audio messages: {errors} error replies, connection kept"


async def strangers(d, port):
    results = []
    for extra, token in (("", None), ("", "wrong"), ("Origin: http://evil.example\r\n", TOKEN)):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.9")
        await stream.send_all(upgrade(token=token, extra=extra))
        data = await drain(stream, 2)
        results.append(b"\x03\xf0" in data)  # close frame with 1008
        await stream.aclose()
    metrics, _ = http_get(port, "/metrics")
    health = http_get(port, "/healthz")[1]
    viewer_metrics, _ = http_get(port, "/metrics", VIEWER)
    return (all(results) and metrics == 401 and viewer_metrics == 401 and health == b'{"ok": true}',
            f"no token / wrong token / foreign Origin: 1008 {results}; /metrics {metrics} (viewer {viewer_metrics}); "
            f"/healthz {health.decode()}")


async def control_idle(d, port):
    import socket
    socks = []
    for _ in range(40):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(d.socket)
        socks.append(s)
    await trio.sleep(11)  # control.server.IDLE_TIMEOUT + 1
    closed = 0
    for s in socks:
        s.settimeout(0.2)
        try:
            s.recv(4096)  # a "busy" reply or EOF: either way the daemon let go
            closed += 1
        except TimeoutError:
            pass
        s.close()
    return closed == 40, f"40 silent control connections: {closed} answered busy or closed within 11 s"


ATTACKS = [
    ("refused WebSocket handshakes", refused_handshakes),
    ("slowloris (unfinished heads)", slowloris),
    ("idle socket flood (fds)", idle_socket_flood),
    ("viewer-slot squatting", squatters),
    ("clients from one address", per_address),
    ("text flood takes the voice", text_flood),
    ("error-reply echo flood", error_echo_flood),
    ("traversal + header bomb", traversal_and_header_bomb),
    ("ping flood + oversize message", oversize_and_ping_flood),
    ("bad audio", bad_audio),
    ("strangers: token, origin, /metrics", strangers),
    ("silent control connections", control_idle),
]


async def run(attacks) -> list[list[str]]:
    rows = []
    with c.Daemon.start(*DAEMON_ARGS) as d:
        port = d.port
        watcher = Watcher()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run, port)
            await trio.sleep(2)
            for name, attack in attacks:
                rss0, fds0, start = rss_mb(d.pid), fds(d.pid), time.monotonic()
                try:
                    held, seen = await attack(d, port)
                except Exception as exc:  # a bench reports what broke and goes on
                    held, seen = False, f"attack raised {type(exc).__name__}: {exc!r}"[:300]
                await trio.sleep(1.0)
                alive = d.proc.poll() is None
                gap = watcher.worst_gap(start, time.monotonic())
                rows.append([name, "held" if held and alive else "BROKE", seen, f"{gap * 1000:.0f} ms",
                             f"{rss0:.0f} -> {rss_mb(d.pid):.0f} MB" if alive else "dead", f"{fds0} -> {fds(d.pid)}"])
                print(" | ".join(rows[-1]), flush=True)
            nursery.cancel_scope.cancel()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--only", nargs="*", help="run the attacks whose name contains one of these words")
    args = parser.parse_args()
    only = [a for a in ATTACKS if not args.only or any(word in a[0] for word in args.only)]
    rows = trio.run(run, only)
    c.print_table(["attack", "verdict", "seen", "worst frame gap", "RSS", "fds"], rows)
    if not args.no_readme:
        c.update_readme("attack:", [(f"attack: {name}", f"{verdict}: {seen}; worst frame gap {gap}; RSS {rss}; fds {f}",
                                     f"held, gap < {FRAME_GAP_GOAL * 1000:.0f} ms")
                                    for name, verdict, seen, gap, rss, f in rows])
    sys.exit(0 if all(row[1] == "held" for row in rows) else 1)


if __name__ == "__main__":
    c.run_main(main)

"""What TLS on the server port costs: handshakes, and streaming to viewers over wss:// instead of ws://.

Two daemons, the same except for TLS (``--tls-cert``/``--tls-key`` with a pair this bench makes with
avatard's own self-signed generator, ECDSA P-256 as ``--tls self-signed`` uses), on 127.0.0.1:

- **Handshakes**: ``--connections`` new connections one after another (from a worker thread), each a full
  handshake (no session resumption) and ``GET /healthz``; a watcher (one viewer on the same scheme)
  counts video frames throughout. Reported: connection time p50/p95 seen by the client, the daemon's CPU
  per connection (its CPU during the run minus its idle rate measured just before: the renderer's share), and the watcher's worst gap between frames as received and between their render ticks
  (goal < 200 ms: a stranger's handshakes must not show). The received gap includes this load process's
  own scheduling on a shared box.
- **Streaming**: ``--viewers`` viewers read everything for ``--seconds``; reported: the daemon's CPU
  (1 core = 100 %) and the frames each viewer got (min, % of fps * seconds). The difference between
  the two schemes is what encrypting ~3.4 Mbit/s per viewer costs.

    .venv/bin/python bench/tls.py [--connections 300] [--viewers 10] [--seconds 10] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime
import socket
import ssl
import tempfile
import time
from pathlib import Path

import _common as c
import trio
import trio_websocket

from avatard.protocol import media as wire
from avatard.tls import self_signed

FPS = 25
FRAME_GAP_GOAL = 0.2  # s: 5 frames at 25 fps
DELIVERED_GOAL_PERCENT = 99.0
SETTLE_S = 1.5
IDLE_S = 3.0  # the daemon's CPU rate without the load, subtracted from the per-connection figure


def make_pair(directory: Path) -> tuple[str, str]:
    cert_pem, key_pem = self_signed.generate(["localhost"], ["127.0.0.1"], datetime.datetime.now(datetime.timezone.utc))
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return str(cert), str(key)


def client_context(cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert)
    # A browser opening the page for the first time: no ticket to resume with, every handshake is full.
    context.options |= ssl.OP_NO_TICKET
    return context


class Viewer:
    def __init__(self) -> None:
        self.frame_times: list[float] = []  # when each video frame arrived (monotonic)
        self.ticks: list[float] = []  # its header timestamp: the daemon's render tick (wall clock)

    async def run(self, nursery, port: int, context: ssl.SSLContext | None) -> None:
        ws = await trio_websocket.connect_websocket(nursery, "127.0.0.1", port, "/ws", use_ssl=context or False,
                                                    receive_buffer_size=c.BROWSER_READ_BYTES)
        nursery.start_soon(self._read, ws)

    async def _read(self, ws) -> None:
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes) and message and message[0] == wire.VIDEO:
                    self.frame_times.append(time.monotonic())
                    self.ticks.append(wire.VIDEO_HEADER.unpack_from(message)[5])
        except trio_websocket.ConnectionClosed:
            pass

    def frames_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.frame_times)

    def worst_gap(self, start: float, end: float) -> float:
        return _worst_gap([t for t in self.frame_times if start <= t <= end])

    def worst_tick_gap(self, start: float, end: float) -> float:
        """The daemon's side alone: the longest time between the render ticks of consecutive frames."""
        return _worst_gap([t for t in self.ticks if start <= t <= end])


def _worst_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


def one_request(port: int, context: ssl.SSLContext | None) -> float:
    """One new connection and ``GET /healthz``, blocking (run in a worker thread: OpenSSL releases the GIL,
    so the handshakes of this load client do not stall the watcher's reading in the trio thread)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # As browsers do. Without it the request waits for the ACK of the client's Finished, which the
        # server delays by 40 ms (delayed ACK) when it has no session ticket to send along (OP_NO_TICKET).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = raw if context is None else context.wrap_socket(raw, server_hostname="localhost")
        with sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    if not data.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"unexpected reply: {data[:80]!r}")
    return time.perf_counter() - started


async def handshakes(daemon: c.Daemon, port: int, context, connections: int) -> dict:
    async with trio.open_nursery() as nursery:
        watcher = Viewer()
        await watcher.run(nursery, port, context)
        await trio.sleep(SETTLE_S)
        idle0 = daemon.cpu_seconds()
        await trio.sleep(IDLE_S)
        idle_rate = (daemon.cpu_seconds() - idle0) / IDLE_S  # the renderer and one viewer, to subtract
        start, wall0, cpu0 = time.monotonic(), time.time(), daemon.cpu_seconds()
        times = await trio.to_thread.run_sync(lambda: [one_request(port, context) for _ in range(connections)])
        end, wall1, cpu1 = time.monotonic(), time.time(), daemon.cpu_seconds()
        nursery.cancel_scope.cancel()
    times_ms = [1e3 * t for t in times]
    return {"p50": c.percentile(times_ms, 50), "p95": c.percentile(times_ms, 95),
            "cpu_ms": 1e3 * (cpu1 - cpu0 - idle_rate * (end - start)) / connections, "gap": watcher.worst_gap(start, end),
            "tick_gap": watcher.worst_tick_gap(wall0, wall1), "rate": connections / (end - start)}


async def streaming(daemon: c.Daemon, port: int, context, viewers: int, seconds: float) -> dict:
    async with trio.open_nursery() as nursery:
        clients = [Viewer() for _ in range(viewers)]
        for client in clients:
            await client.run(nursery, port, context)
        await trio.sleep(SETTLE_S)
        rendered0 = (await trio.to_thread.run_sync(daemon.status))["frames_rendered"]
        start, cpu0, self0 = time.monotonic(), daemon.cpu_seconds(), c.self_cpu_seconds()
        await trio.sleep(seconds)
        end, cpu1, self1 = time.monotonic(), daemon.cpu_seconds(), c.self_cpu_seconds()
        rendered1 = (await trio.to_thread.run_sync(daemon.status))["frames_rendered"]
        nursery.cancel_scope.cancel()
    delivered = [100.0 * client.frames_between(start, end) / (FPS * seconds) for client in clients]
    return {"cpu": 100.0 * (cpu1 - cpu0) / seconds, "client_cpu": 100.0 * (self1 - self0) / seconds,
            "delivered_min": min(delivered), "rendered": 100.0 * (rendered1 - rendered0) / (FPS * seconds)}


def measure(scheme: str, pair: tuple[str, str], args) -> dict:
    tls_args = ("--tls-cert", pair[0], "--tls-key", pair[1]) if scheme == "wss" else ()
    context = client_context(pair[0]) if scheme == "wss" else None
    daemon_args = ("--server", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning",
                   "--max-clients", str(args.viewers + 1), "--max-clients-per-ip", str(args.viewers + 1), *tls_args)
    with c.Daemon.start(*daemon_args) as daemon:
        port = daemon.port
        result = trio.run(handshakes, daemon, port, context, args.connections)
        result.update(trio.run(streaming, daemon, port, context, args.viewers, args.seconds))
        result["tls_failures"] = daemon.status()["tls_failures"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=300, help="sequential new connections (handshakes)")
    parser.add_argument("--viewers", type=int, default=10, help="viewers streaming at once")
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming window")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    if not 1 <= args.connections <= 10000 or not 1 <= args.viewers <= 200 or not 1 <= args.seconds <= 300:
        parser.error("--connections 1..10000, --viewers 1..200, --seconds 1..300")
    print(f"machine: {c.machine()}\nload average before: {c.loadavg()}\n")
    with tempfile.TemporaryDirectory(prefix="avb-tls-") as directory:
        pair = make_pair(Path(directory))
        results = {}
        for scheme in ("ws", "wss"):
            print(f"  running: {scheme} ...", flush=True)
            results[scheme] = measure(scheme, pair, args)
    rows = [[scheme, f"{r['p50']:.1f} / {r['p95']:.1f} ms", f"{r['cpu_ms']:.2f} ms", f"{r['rate']:.0f}/s",
             f"{r['gap'] * 1000:.0f} / {r['tick_gap'] * 1000:.0f} ms", f"{r['cpu']:.0f} %", f"{r['client_cpu']:.0f} %", f"{r['delivered_min']:.1f} %",
             f"{r['rendered']:.1f} %", str(r["tls_failures"])] for scheme, r in results.items()]
    c.print_table(["scheme", "connect+GET p50/p95", "daemon CPU/conn", "conn rate", "watcher worst gap (received / ticks)",
                   f"daemon CPU, {args.viewers} viewers", "client CPU", "frames min", "rendered", "tls failures"], rows)
    print(f"\nload average after: {c.loadavg()}; CPU: 1 core = 100 %, this box has {c.os.cpu_count()} cores.")
    if args.no_readme:
        return
    plain, tls = results["ws"], results["wss"]
    c.update_readme("tls:", [
        ("tls: connection (full handshake + GET /healthz)",
         f"https p50 {tls['p50']:.1f} / p95 {tls['p95']:.1f} ms, daemon CPU {tls['cpu_ms']:.2f} ms each; "
         f"http p50 {plain['p50']:.1f} / p95 {plain['p95']:.1f} ms, {plain['cpu_ms']:.2f} ms each "
         f"({args.connections} sequential)", "-"),
        ("tls: viewer's worst frame gap during the handshakes",
         f"{tls['gap'] * 1000:.0f} ms received, {tls['tick_gap'] * 1000:.0f} ms between render ticks "
         f"(http: {plain['gap'] * 1000:.0f} / {plain['tick_gap'] * 1000:.0f} ms)", f"< {FRAME_GAP_GOAL * 1000:.0f} ms"),
        (f"tls: daemon CPU, {args.viewers} viewers",
         f"wss {tls['cpu']:.0f} % vs ws {plain['cpu']:.0f} %; frames min {tls['delivered_min']:.1f} % / "
         f"{plain['delivered_min']:.1f} % (rendered {tls['rendered']:.0f} % / {plain['rendered']:.0f} %)", f"frames >= {DELIVERED_GOAL_PERCENT:g} %"),
    ])


if __name__ == "__main__":
    c.run_main(main)

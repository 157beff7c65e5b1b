"""WebSocket fan-out: many healthy viewers, with and without one viewer that stalls.

For each client count N, two runs against a fresh ``avatard --server`` (idle avatar, 25 fps 512x512):
the baseline with N healthy clients, and the same plus ONE client that completes the WebSocket
handshake and then never reads. A 1-client baseline runs first. All clients live in this one trio
process (trio-websocket); a healthy client reads every message and, for each video frame whose header
timestamp falls in the measurement window, counts it and records receive time minus header timestamp.

Reported per run, side by side:
- frames delivered per healthy client as % of fps * seconds (min and median over clients); goal >= 99 %;
- frame delay p50 / p95 / max (receive wall time minus the frame's header timestamp, i.e. the renderer's
  tick time: includes render, JPEG encode, send, and this load client's own scheduling);
- the stalled client's fate: video frames dropped for it (from ``status``), whether the daemon
  disconnected it (``client left`` event, ``too_slow``) and which close code the client finally sees;
- CPU of the daemon and of this load-generating process over the window (1 core = 100 %). On a small
  box the load client competes with the daemon for the same cores; read the two together.

The stalled client's socket gets a small SO_RCVBUF (``--stalled-rcvbuf``) before connecting. Without it,
Linux autotunes a loopback receive buffer up to net.ipv4.tcp_rmem's maximum (32 MiB here), which holds
~40 s of this stream: within a 20 s run the daemon would never notice the stall. The small buffer stands
for "the network is full"; pass 0 to keep the OS default.

    /work/venv/bin/python bench/fanout.py [--clients 50 [N ...]] [--seconds 20] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import socket as stdlib_socket
import time

import _common as c
import attrs
import trio
import trio_websocket

from avatard.protocol import media as wire

DELIVERED_GOAL_PERCENT = 99.0
CPU_GOAL_PERCENT = 100.0  # less than one core
FPS = 25
SETTLE_S = 1.5  # after every client is connected: handshakes done, first frames flowing
GRACE_S = 2.0  # after the window: frames stamped inside it may still be on their way
CONNECT_TIMEOUT = 20.0
STATUS_POLL_S = 1.0
DRAIN_TIMEOUT = 5.0  # the stalled client, reading again, must see the end of its connection within this
DEFAULT_STALLED_RCVBUF = 64 * 1024


@attrs.define
class Window:
    start: float  # wall clock, same clock as the daemon's header timestamps
    end: float


@attrs.define
class Healthy:
    ws: trio_websocket.WebSocketConnection | None = None
    frames: int = 0
    closed: str | None = None


@attrs.define
class Stalled:
    ws: trio_websocket.WebSocketConnection | None = None
    remote: str = ""
    client_id: str | None = None
    connected_at: float = 0.0
    last_seen: dict | None = None  # its entry in status client_list, last time it was there
    left: dict | None = None  # the daemon's "client left" event for it
    left_at: float | None = None
    close_code: str = "-"


@attrs.define
class Result:
    healthy: int
    stalled: bool
    seconds: float
    delivered: list[float]
    delays_ms: list[float]
    daemon_cpu: float
    client_cpu: float
    rendered: int
    dropped: int
    healthy_closed: int
    stall: Stalled | None


async def _healthy_reader(client: Healthy, window: Window, delays: list[float]) -> None:
    video_type = wire.VIDEO
    unpack = wire.VIDEO_HEADER.unpack_from
    try:
        while True:
            message = await client.ws.get_message()
            if isinstance(message, bytes) and message and message[0] == video_type:
                now = time.time()
                ts = unpack(message)[5]
                if window.start <= ts < window.end:
                    client.frames += 1
                    delays.append(now - ts)
    except trio_websocket.ConnectionClosed as exc:
        client.closed = f"{exc.reason.code} {exc.reason.reason or ''}".strip()


async def _connect_healthy(nursery: trio.Nursery, port: int, client: Healthy) -> None:
    client.ws = await trio_websocket.connect_websocket(nursery, "127.0.0.1", port, "/ws", use_ssl=False,
                                                       receive_buffer_size=c.BROWSER_READ_BYTES)


async def _connect_stalled(nursery: trio.Nursery, port: int, rcvbuf: int, stall: Stalled) -> None:
    sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    await sock.connect(("127.0.0.1", port))
    stall.remote = "127.0.0.1:%d" % sock.getsockname()[1]
    # message_queue_size=0: trio-websocket's reader hands over one message and then stops reading the
    # socket until someone calls get_message(), which we never do until the run is over.
    stall.ws = await trio_websocket.wrap_client_stream(nursery, trio.SocketStream(sock), "127.0.0.1", "/ws",
                                                       message_queue_size=0)
    stall.connected_at = time.monotonic()


async def _watch_events(daemon: c.Daemon, stall: Stalled, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Follow the daemon's ``client`` events to learn the stalled client's id and when it is let go."""
    stream = await trio.open_unix_socket(daemon.socket)
    async with stream:
        await stream.send_all(json.dumps({"cmd": "subscribe", "events": ["client"]}).encode() + b"\n")
        buffer = b""
        started = False
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if not started:
                    started = True
                    task_status.started()
                if event.get("event") != "client":
                    continue
                if event.get("action") == "joined" and event.get("remote") == stall.remote:
                    stall.client_id = event["client_id"]
                elif event.get("action") == "left" and stall.client_id and event.get("client_id") == stall.client_id:
                    stall.left, stall.left_at = event, time.monotonic()


async def _poll_status(daemon: c.Daemon, stall: Stalled) -> None:
    while True:
        status = await trio.to_thread.run_sync(daemon.status)
        for entry in status.get("client_list", []):
            if stall.remote and entry.get("remote") == stall.remote:
                stall.last_seen = entry
        await trio.sleep(STATUS_POLL_S)


async def _drain(stall: Stalled) -> None:
    """Start reading the stalled connection and see how it ends (a close code, or not within the timeout)."""
    with trio.move_on_after(DRAIN_TIMEOUT):
        try:
            while True:
                await stall.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            stall.close_code = f"{exc.reason.code} ({exc.reason.name})"
            return
    stall.close_code = f"still open after {DRAIN_TIMEOUT:g} s of reading"


async def _load(daemon: c.Daemon, healthy: int, stalled: bool, seconds: float, rcvbuf: int) -> Result:
    port = daemon.port
    clients = [Healthy() for _ in range(healthy)]
    stall = Stalled() if stalled else None
    window = Window(float("inf"), float("inf"))  # nothing counts until the window is set
    delays: list[float] = []
    async with trio.open_nursery() as nursery:
        if stall is not None:
            await nursery.start(_watch_events, daemon, stall)
        with trio.fail_after(CONNECT_TIMEOUT):
            async with trio.open_nursery() as connecting:
                for client in clients:
                    connecting.start_soon(_connect_healthy, nursery, port, client)
                if stall is not None:
                    connecting.start_soon(_connect_stalled, nursery, port, rcvbuf, stall)
        for client in clients:
            nursery.start_soon(_healthy_reader, client, window, delays)
        if stall is not None:
            nursery.start_soon(_poll_status, daemon, stall)

        window.start = time.time() + SETTLE_S
        window.end = window.start + seconds
        await trio.sleep(window.start - time.time())
        s0 = await trio.to_thread.run_sync(daemon.status)
        d0, c0 = daemon.cpu_seconds(), c.self_cpu_seconds()
        await trio.sleep(window.end - time.time())
        d1, c1 = daemon.cpu_seconds(), c.self_cpu_seconds()
        s1 = await trio.to_thread.run_sync(daemon.status)
        await trio.sleep(GRACE_S)
        if stall is not None and stall.left is not None:
            await _drain(stall)
        nursery.cancel_scope.cancel()
    expected = FPS * seconds
    return Result(
        healthy=healthy, stalled=stalled, seconds=seconds,
        delivered=[100.0 * cl.frames / expected for cl in clients],
        delays_ms=[1e3 * d for d in delays],
        daemon_cpu=100.0 * (d1 - d0) / seconds, client_cpu=100.0 * (c1 - c0) / seconds,
        rendered=s1["frames_rendered"] - s0["frames_rendered"], dropped=s1["frames_dropped"] - s0["frames_dropped"],
        healthy_closed=sum(cl.closed is not None for cl in clients), stall=stall,
    )


def run(healthy: int, stalled: bool, seconds: float, rcvbuf: int) -> Result:
    args = ["--server", "--host", "127.0.0.1", "--port", "0", "--max-clients", str(healthy + 1),
            "--max-clients-per-ip", str(healthy + 1), "--log-level", "warning"]  # every client is on loopback
    with c.Daemon.start(*args) as daemon:
        return trio.run(_load, daemon, healthy, stalled, seconds, rcvbuf)


def stall_summary(result: Result) -> str:
    stall = result.stall
    if stall is None:
        return "-"
    seen = stall.last_seen or {}
    if stall.left is not None:
        after = stall.left_at - stall.connected_at
        how = "too slow" if stall.left.get("too_slow") else "closed"
        return (f"disconnected ({how}) {after:.1f} s after connect, video_dropped {stall.left.get('video_dropped')}; "
                f"client saw close {stall.close_code}")
    return (f"still connected: video_dropped {seen.get('video_dropped', '?')}, queued {seen.get('queued', '?')}, "
            f"frames_sent {seen.get('frames_sent', '?')}")


def row(result: Result) -> list[str]:
    delivered = result.delivered
    ok = delivered and min(delivered) >= DELIVERED_GOAL_PERCENT and result.daemon_cpu < CPU_GOAL_PERCENT
    return [
        str(result.healthy), "yes" if result.stalled else "no",
        f"{min(delivered):.1f}", f"{c.median(delivered):.1f}",
        f"{c.percentile(result.delays_ms, 50):.1f}", f"{c.percentile(result.delays_ms, 95):.1f}",
        f"{max(result.delays_ms, default=float('nan')):.0f}",
        f"{result.daemon_cpu:.0f} %", f"{result.client_cpu:.0f} %",
        f"{result.rendered}/{round(FPS * result.seconds)}", str(result.dropped), str(result.healthy_closed),
        "ok" if ok else "MISS", stall_summary(result),
    ]


HEADERS = ["healthy", "stalled", "deliv min %", "deliv med %", "delay p50 ms", "delay p95 ms", "max ms",
           "daemon CPU", "client CPU", "rendered", "dropped", "closed", "goal", "stalled client"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50], help="healthy client counts to run")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per run")
    parser.add_argument("--stalled-rcvbuf", type=int, default=DEFAULT_STALLED_RCVBUF,
                        help="SO_RCVBUF of the stalled client's socket in bytes (0: OS default)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 300 or any(not 1 <= n <= 500 for n in args.clients) or args.stalled_rcvbuf < 0:
        parser.error("--seconds must be 1..300, --clients 1..500 each, --stalled-rcvbuf >= 0")

    print(f"machine: {c.machine()}\nload average before: {c.loadavg()}")
    print(f"{args.seconds:g} s window per run, {FPS} fps 512x512, idle avatar; goal: every healthy client >= "
          f"{DELIVERED_GOAL_PERCENT:g} % of {FPS * args.seconds:g} frames, daemon < {CPU_GOAL_PERCENT:g} % CPU\n")
    plan = [(1, False)]
    for n in args.clients:
        plan += [(n, False), (n, True)]
    plan = list(dict.fromkeys(plan))
    results = []
    for healthy, stalled in plan:
        print(f"  running: {healthy} healthy{' + 1 stalled' if stalled else ''} ...", flush=True)
        results.append(run(healthy, stalled, args.seconds, args.stalled_rcvbuf))
        print("    " + ", ".join(f"{h}: {v}" for h, v in zip(HEADERS[2:], row(results[-1])[2:])), flush=True)
    print()
    c.print_table(HEADERS, [row(r) for r in results])
    print(f"\nload average after: {c.loadavg()}; CPU: 1 core = 100 %, this box has {c.os.cpu_count()} cores. "
          "'closed' = healthy clients that lost their connection.")

    if args.no_readme:
        return
    figures = []
    by_key = {(r.healthy, r.stalled): r for r in results}
    for n in dict.fromkeys([1, *args.clients]):
        base, with_stall = by_key[(n, False)], by_key.get((n, True))
        label = f"fanout: {n} client{'s' if n > 1 else ''}"

        def pair(fmt, r=base, s=with_stall):
            return fmt(r) + ("" if s is None else f" / with stalled {fmt(s)}")

        figures.append((f"{label}, frames delivered", pair(lambda r: f"min {min(r.delivered):.1f} %"),
                        f">= {DELIVERED_GOAL_PERCENT:g} % each"))
        figures.append((f"{label}, frame delay", pair(lambda r: f"p50 {c.percentile(r.delays_ms, 50):.0f} / p95 "
                                                       f"{c.percentile(r.delays_ms, 95):.0f} ms"), "-"))
        figures.append((f"{label}, CPU", pair(lambda r: f"daemon {r.daemon_cpu:.0f} % (load client {r.client_cpu:.0f} %)"),
                        f"daemon < {CPU_GOAL_PERCENT:g} %"))
        if with_stall is not None:
            figures.append((f"{label}, stalled client", stall_summary(with_stall),
                            "video dropped, then disconnected as too slow; healthy clients unaffected"))
    c.update_readme("fanout", figures)


if __name__ == "__main__":
    c.run_main(main)

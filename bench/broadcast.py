"""The broadcast through Janus: what each viewer gets, and what viewers cost the daemon and Janus.

One ``avatard --server --janus`` (idle avatar: the built-in face, 25 fps 512x512, VP8 600 kbit/s + Opus
32 kbit/s from the encode-once encoder) and one Debian ``janus`` 1.1.2 run in a private server network
namespace; aiortc viewers (one asyncio loop, this process) in a client namespace, 198.18.0.0/15 addresses
only (tests/netns.py). Viewers speak Janus's HTTP API like /watch does and count RTP packets and frames
(the marker bit) *without decoding* (tests/janus_viewer.py): the bench process would otherwise spend
the cores the daemon and Janus are measured on.

Steps: 0 viewers (the baseline), then viewers are added up to each count (1, 20, 50 by default). After each
step settles, a window of ``--seconds`` measures:

- frames per viewer as % of 25 fps (min and median over viewers); goal >= 99 % each; beside it, the frames
  the renderer itself made in the window (a loaded machine starves the source, not Janus) and what avatard
  lost after the renderer (fan-out drops, the broadcast's subscriptions, datagrams not sent to Janus);
- daemon CPU (utime + stime from /proc, one core = 100 %); goal: flat, i.e. the same as with 1 viewer:
  the daemon encodes and sends once, whatever the viewer count;
- Janus CPU, and per viewer: (Janus CPU - Janus CPU at 0 viewers) / viewers;
- bit rate per viewer (RTP payload, video + audio; median);
- time to first frame of the viewers added in that step (``watch`` request to the first complete video
  frame: session, attach, offer/answer, ICE, DTLS, then a keyframe, which Janus's keyframe buffer replays).

This bench uses the test tree's network-namespace, Janus and viewer harness (tests/netns.py,
tests/janus_server.py, tests/janus_viewer.py) rather than a copy of them. Needs root, iproute2, janus.

    .venv/bin/python bench/broadcast.py [--viewers 1 20 50] [--seconds 15] [--no-readme]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.REPO / "tests"))
from janus_server import JanusServer, entered  # noqa: E402
from janus_viewer import ViewerPool  # noqa: E402
from netns import Network  # noqa: E402

FPS = 25
MOUNTPOINT = 8765
ADMIN_KEY = "bench-admin-key"
SETTLE_S = 3.0  # after the last viewer of a step has its first frame
FIRST_FRAME_TIMEOUT = 60.0
DELIVERED_GOAL_PERCENT = 99.0


def cpu_percent(pid: int, seconds: float, start: float) -> float:
    return 100.0 * (c.process_cpu_seconds(pid) - start) / seconds


def measure(daemon: c.Daemon, janus: JanusServer, viewers: list, seconds: float) -> dict:
    d0, j0, b0 = daemon.cpu_seconds(), c.process_cpu_seconds(janus.pid()), c.self_cpu_seconds()
    status0 = daemon.status()
    bytes0 = [v.counts.video_bytes + v.counts.audio_bytes for v in viewers]
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    elapsed = end - start
    status1 = daemon.status()
    result = {
        "daemon_cpu": 100.0 * (daemon.cpu_seconds() - d0) / elapsed,
        "janus_cpu": 100.0 * (c.process_cpu_seconds(janus.pid()) - j0) / elapsed,
        "bench_cpu": 100.0 * (c.self_cpu_seconds() - b0) / elapsed,
        # The source's own rate: a starved renderer (a loaded machine) shows here, not as a Janus loss.
        "rendered_percent": 100.0 * (status1["frames_rendered"] - status0["frames_rendered"]) / elapsed / FPS,
        # What avatard itself lost in the window: frames before the encoder, packets before the broadcast,
        # datagrams before Janus. Anything else a viewer misses was lost in Janus or the viewers' process.
        "lost_inside": (status1["frames_dropped"] - status0["frames_dropped"])
        + sum(sub["dropped"] for sub in status1["broadcast_subscriptions"])
        - sum(sub["dropped"] for sub in status0["broadcast_subscriptions"])
        + status1["janus"][0]["packets_dropped"] - status0["janus"][0]["packets_dropped"],
    }
    if viewers:
        delivered = [100.0 * v.counts.fps(start, end) / FPS for v in viewers]
        kbits = [8 * (v.counts.video_bytes + v.counts.audio_bytes - b) / elapsed / 1000 for v, b in zip(viewers, bytes0)]
        result.update(delivered_min=min(delivered), delivered_median=c.median(delivered), kbit_s=c.median(kbits))
    return result


def run(args) -> list[tuple[str, str, str]]:
    work = Path(tempfile.mkdtemp(prefix="avbj-", dir="/tmp"))
    rows, figures = [], []
    with Network(clients=1, tag="avbb") as net, entered(net.server):
        client = net.clients[0]
        janus = JanusServer(work / "janus", net.server, address=client.server_address, interface="vs",
                            admin_key=ADMIN_KEY).start()
        pool = None
        try:
            with c.Daemon.start("--server", "--host", "127.0.0.1", "--port", "0", "--janus", janus.url,
                                "--janus-mountpoint", str(MOUNTPOINT), "--janus-admin-key", ADMIN_KEY) as daemon:
                deadline = time.monotonic() + 20
                while not daemon.status()["janus"][0]["connected"]:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no mountpoint:\n{daemon.log()[-2000:]}")
                    time.sleep(0.2)
                with entered(client):
                    pool = ViewerPool()
                time.sleep(SETTLE_S)
                base = measure(daemon, janus, [], args.seconds)
                print(f"0 viewers: daemon {base['daemon_cpu']:.1f} %, janus {base['janus_cpu']:.1f} %")
                rows.append(["0", "-", f"{base['daemon_cpu']:.1f} %", f"{base['janus_cpu']:.1f} %", "-", "-", "-",
                             f"{base['bench_cpu']:.0f} %"])
                first_daemon = None
                for count in args.viewers:
                    new = pool.add(janus.url, MOUNTPOINT, count - len(pool.viewers))
                    deadline = time.monotonic() + FIRST_FRAME_TIMEOUT
                    while not all(v.counts.first_frame for v in new) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    ttff = [1000 * (v.counts.first_frame - v.counts.started) for v in new if v.counts.first_frame]
                    time.sleep(SETTLE_S)
                    m = measure(daemon, janus, pool.viewers, args.seconds)
                    first_daemon = first_daemon if first_daemon is not None else m["daemon_cpu"]
                    per_viewer = (m["janus_cpu"] - base["janus_cpu"]) / count
                    rows.append([str(count), f"min {m['delivered_min']:.1f} / median {m['delivered_median']:.1f} % "
                                 f"(rendered {m['rendered_percent']:.1f} %, lost in avatard {m['lost_inside']})",
                                 f"{m['daemon_cpu']:.1f} %", f"{m['janus_cpu']:.1f} % ({per_viewer:.2f} %/viewer)",
                                 f"{m['kbit_s']:.0f} kbit/s",
                                 f"p50 {c.median(ttff):.0f} / max {max(ttff, default=float('nan')):.0f} ms ({len(ttff)}/{len(new)})",
                                 "", f"{m['bench_cpu']:.0f} %"])
                    print(" | ".join(rows[-1]))
                    figures += [
                        (f"broadcast: {count} viewers, frames per viewer",
                         f"min {m['delivered_min']:.1f} %, median {m['delivered_median']:.1f} % of 25 fps (the renderer made "
                         f"{m['rendered_percent']:.1f} %, avatard lost {m['lost_inside']} frames/packets after it; "
                         f"load average {c.loadavg()})", ">= 99 % each"),
                        (f"broadcast: {count} viewers, daemon CPU",
                         f"{m['daemon_cpu']:.1f} % (0 viewers {base['daemon_cpu']:.1f} %, 1 viewer {first_daemon:.1f} %)", "flat"),
                        (f"broadcast: {count} viewers, Janus CPU",
                         f"{m['janus_cpu']:.1f} % of one core, {per_viewer:.2f} % per viewer (0 viewers {base['janus_cpu']:.1f} %)", "-"),
                        (f"broadcast: {count} viewers, bit rate per viewer", f"{m['kbit_s']:.0f} kbit/s (RTP payload, median)", "-"),
                        (f"broadcast: {count} viewers, time to first frame",
                         f"p50 {c.median(ttff):.0f} / max {max(ttff, default=float('nan')):.0f} ms over the {len(new)} added", "-"),
                    ]
                server = daemon.status()["janus"][0]
                print(f"janus_1: {server['packets_sent']} packets sent, {server['packets_dropped']} dropped")
        finally:
            if pool is not None:
                pool.close()
            janus.kill()
            shutil.rmtree(work, ignore_errors=True)
    print()
    c.print_table(["viewers", "frames (of 25 fps)", "daemon CPU", "Janus CPU", "bit rate", "first frame", "", "bench CPU"], rows)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 20, 50])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    print(f"machine: {c.machine()}\nload average before: {c.loadavg()}\n")
    figures = run(args)
    print(f"\nload average after: {c.loadavg()}")
    if not args.no_readme:
        c.update_readme("broadcast", figures)


if __name__ == "__main__":
    c.run_main(main)

"""WebRTC viewers (issue 13): bit rate per viewer, daemon CPU for 1, 5 and 20 viewers, page load -> first
decoded frame, and the frame's age when Chromium shows it.

Needs the test tree (``tests/netns.py``, ``tests/webrtc_viewer.py``) and root: aioice offers no loopback
candidates, so the daemon runs in a network namespace of its own and the viewers in client namespaces joined
to it by veth links (198.18.0.0/15), all made and deleted here.

- **Bit rate per viewer** (goal <= 1 Mbit/s video + audio at 512x512, 25 fps; the JPEG stream is 3.4): what
  the daemon sent one viewer, from aiortc's outbound-rtp ``bytesSent`` (RTP payload; the status's
  ``bitrate_kbps``) over the window, idle and while speaking (``avatarctl say`` of a long text), and the
  encoder's own output (video + audio bytes) for comparison.
- **Daemon CPU** for 0 (encoder idle: nobody subscribes), 1, 5 and 20 aiortc viewers (``webrtc_viewer.py``, in
  processes of at most 5 viewers each, decoding everything), utime+stime over the window. The cost of one more
  viewer is the slope between 5 and 20 (goal: the 20th viewer < 2 % of one core). The viewers run on the same
  2 cores and decode VP8 in Python: read the daemon's figure next to theirs.
- **Page load -> first decoded frame** (goal <= 500 ms on the local network): headless Chromium in another
  client namespace opens the page; ``performance.now()`` at the first frame the page shows (the binary stream's
  JPEG, which carries the picture while WebRTC negotiates) and at the first WebRTC frame
  (``requestVideoFrameCallback``), median over N loads.
- **Frame age at display** (goal <= 150 ms p95): render tick -> ``expectedDisplayTime``, per frame, from
  ``requestVideoFrameCallback`` metadata (``rtpTimestamp``, ``receiveTime``; this Chromium gives no
  ``captureTime`` for these frames): see :func:`frame_ages` for how the RTP clock is tied to the wall clock
  and what that leaves out (a few ms). ``expectedDisplayTime - receiveTime`` (jitter buffer, decode,
  compositor) is printed too.

    sudo .venv/bin/python bench/webrtc.py [--seconds 10] [--loads 5] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.REPO / "tests"))
from netns import Network  # noqa: E402  (the test tree's namespace helpers)

VIEWER = c.REPO / "tests" / "webrtc_viewer.py"
CHROMIUM = "/usr/bin/chromium"
PORT = 8765
VIEWERS_PER_PROCESS = 5
COUNTS = (1, 5, 20)
SETTLE_S = 3.0  # every viewer connected and its first keyframe decoded before the window opens
CONNECT_TIMEOUT = 60.0
BITRATE_GOAL_KBPS = 1000
MARGINAL_GOAL_PERCENT = 2.0
FIRST_FRAME_GOAL_MS = 500
AGE_GOAL_MS = 150
SPEECH = ("The quick brown fox jumps over the lazy dog while the avatar keeps on talking about the weather, "
          "the mountains, the rivers and the long road home. ") * 8

FRAME_TIMES_JS = """async (seconds) => {
  const v = document.getElementById('rtc-video');
  const frames = [], keys = new Set();
  await new Promise((resolve) => {
    const end = performance.now() + seconds * 1000;
    const onFrame = (now, m) => {
      Object.keys(m).forEach((k) => keys.add(k));
      frames.push([m.rtpTimestamp, m.receiveTime, m.expectedDisplayTime, m.captureTime ?? null]);
      if (performance.now() < end) v.requestVideoFrameCallback(onFrame); else resolve();
    };
    v.requestVideoFrameCallback(onFrame);
  });
  return { frames, keys: [...keys] };
}"""


def frame_ages(frames: list) -> tuple[list[float], list[float]]:
    """Render -> display (ms) per frame, from RTP timestamps, and receive -> display.

    The daemon's video RTP timestamps are its frames' render times at 90 kHz (avatard.media.encoder) plus a
    random origin, so ``receive - rtp/90 kHz`` is the frame's render -> receive delay plus one unknown
    constant. The smallest over the run stands for that constant: ages are counted from the fastest frame's
    arrival, so they read short by that frame's render -> receive time (VP8 encode, the hops to aiortc, SRTP,
    a veth: a few ms)."""
    unwrapped, last, wraps = [], None, 0
    for rtp, receive, display, _ in frames:
        if last is not None and rtp < last - (1 << 31):
            wraps += 1
        last = rtp
        unwrapped.append((rtp + wraps * (1 << 32)) / 90.0)  # ms
    base = min(receive - rel for (_, receive, _, _), rel in zip(frames, unwrapped))
    ages = [display - rel - base for (_, _, display, _), rel in zip(frames, unwrapped)]
    held = [display - receive for _, receive, display, _ in frames]
    return ages, held


def cpu_window(daemon: c.Daemon, seconds: float) -> tuple[float, dict, dict]:
    """Daemon CPU % of one core over ``seconds``, and the status at both ends."""
    before, cpu0, t0 = daemon.status(), daemon.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    after, cpu1, t1 = daemon.status(), daemon.cpu_seconds(), time.monotonic()
    return 100 * (cpu1 - cpu0) / (t1 - t0), before, after


def peers(status: dict) -> list[dict]:
    return [client["webrtc"] for client in status["client_list"] if client.get("webrtc", {}).get("state") == "connected"]


def start_viewers(net: Network, count: int, seconds: float) -> list[subprocess.Popen]:
    url = f"ws://{net.clients[0].server_address}:{PORT}/ws"
    procs, left = [], count
    while left:
        n = min(left, VIEWERS_PER_PROCESS)
        procs.append(subprocess.Popen(net.clients[0].prefix() + [sys.executable, str(VIEWER), url, "--viewers", str(n),
                                      "--seconds", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        left -= n
    return procs


def wait_for_peers(daemon: c.Daemon, count: int, procs) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while len(peers(daemon.status())) < count:
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"{count} viewers did not connect: "
                               f"{[p.communicate()[1][-500:] for p in procs if p.poll() is not None]}")
        time.sleep(0.2)


def viewer_run(daemon: c.Daemon, net: Network, count: int, seconds: float, speak: bool = False) -> dict:
    procs = start_viewers(net, count, SETTLE_S + seconds + CONNECT_TIMEOUT / 4)
    try:
        wait_for_peers(daemon, count, procs)
        if speak:
            daemon.avatarctl("say", SPEECH)
            deadline = time.monotonic() + 10
            while not daemon.status().get("speaking") and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(SETTLE_S)
        viewer_cpu0 = sum(c.process_cpu_seconds(p.pid) for p in procs)
        cpu, before, after = cpu_window(daemon, seconds)
        viewer_cpu = 100 * (sum(c.process_cpu_seconds(p.pid) for p in procs) - viewer_cpu0) / seconds
        if speak:
            daemon.avatarctl("interrupt")
        enc0, enc1 = before["webrtc"]["encoder"], after["webrtc"]["encoder"]
        stream_kbps = 8 * ((enc1["video_bytes"] - enc0["video_bytes"]) + (enc1["audio_bytes"] - enc0["audio_bytes"])) / seconds / 1000
        rates = [p["bitrate_kbps"] for p in peers(after)]
        return {"viewers": count, "cpu": cpu, "viewer_cpu": viewer_cpu, "stream_kbps": stream_kbps,
                "peer_kbps": sum(rates) / len(rates), "peer_kbps_max": max(rates),
                "lost": sum(p["packets_lost"] for p in peers(after)),
                "dropped": sum(p["video_dropped"] + p["audio_dropped"] for p in peers(after)),
                "encoded": enc1["frames_encoded"] - enc0["frames_encoded"]}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 20
        while daemon.status()["clients"] and time.monotonic() < deadline:
            time.sleep(0.2)


def chromium_runs(net: Network, loads: int, age_seconds: float) -> dict:
    from playwright.sync_api import sync_playwright
    client = net.clients[1]
    tmp = Path(tempfile.mkdtemp(prefix="avbw-", dir="/tmp"))
    env = {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / ".config"), "XDG_CACHE_HOME": str(tmp / ".cache")}
    firsts, rtc_firsts, timelines = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=client.wrap(CHROMIUM, tmp), env=env, args=[
            "--no-sandbox", "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required",
            "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--disable-sync"])
        try:
            url = f"http://{client.server_address}:{PORT}/"
            for _ in range(loads):
                context = browser.new_context()
                page = context.new_page()
                page.goto(url)
                page.wait_for_function("avatard.rtcFirstFrameMs !== null", timeout=30_000)
                first = page.evaluate("[avatard.firstFrameMs, avatard.rtcFirstFrameMs]")
                timelines.append(page.evaluate("avatard.rtcTimeline"))
                firsts.append(first[0])
                rtc_firsts.append(first[1])
                context.close()
            context = browser.new_context()
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("avatard.transport === 'webrtc'", timeout=30_000)
            time.sleep(2)
            measured = page.evaluate(FRAME_TIMES_JS, age_seconds)
            context.close()
        finally:
            browser.close()
    return {"first": firsts, "rtc_first": rtc_firsts, "timelines": timelines, **measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    print(f"load before: {c.loadavg()}")
    with Network(clients=2, tag="wrb") as net, \
            c.Daemon.start("--server", "--host", "0.0.0.0", "--port", str(PORT), "--no-auth", "--max-clients", "50",
                           "--max-clients-per-ip", "50",
                           preexec_fn=net.server.enter) as daemon:
        idle_cpu, _, _ = cpu_window(daemon, args.seconds)
        runs = {n: viewer_run(daemon, net, n, args.seconds) for n in COUNTS}
        speaking = viewer_run(daemon, net, 1, args.seconds, speak=True)
        browser = chromium_runs(net, args.loads, args.seconds)
    print(f"load after: {c.loadavg()}")

    rows = [[str(r["viewers"]), f"{r['cpu']:.1f}", f"{r['viewer_cpu']:.0f}", f"{r['peer_kbps']:.0f}",
             f"{r['stream_kbps']:.0f}", str(r["lost"]), str(r["dropped"]), str(r["encoded"])] for r in runs.values()]
    rows.append([f"1 speaking", f"{speaking['cpu']:.1f}", f"{speaking['viewer_cpu']:.0f}", f"{speaking['peer_kbps']:.0f}",
                 f"{speaking['stream_kbps']:.0f}", str(speaking["lost"]), str(speaking["dropped"]), str(speaking["encoded"])])
    c.print_table(["viewers", "daemon CPU %", "viewers CPU %", "kbit/s per viewer", "encoder kbit/s", "lost", "dropped",
                   "frames encoded"], [["0", f"{idle_cpu:.1f}", "-", "-", "-", "-", "-", "0"], *rows])
    marginal = (runs[20]["cpu"] - runs[5]["cpu"]) / 15
    first, rtc_first = c.median(browser["first"]), c.median(browser["rtc_first"])
    ages, held = frame_ages(browser["frames"])
    print(f"\nper extra viewer (5 -> 20): {marginal:.2f} % of one core")
    print(f"page load -> first frame: median {first:.0f} ms (WebRTC's first frame {rtc_first:.0f} ms); "
          f"all: {[round(x) for x in browser['first']]} / {[round(x) for x in browser['rtc_first']]}")
    print(f"rVFC metadata keys: {browser['keys']}")
    for timeline in browser["timelines"]:
        print("WebRTC steps (ms since navigation):", {k: round(v) for k, v in timeline.items()})
    print(f"frame age at display: p50 {c.percentile(ages, 50):.0f} / p95 {c.percentile(ages, 95):.0f} ms (n={len(ages)})")
    print(f"receive -> display: p50 {c.percentile(held, 50):.0f} / p95 {c.percentile(held, 95):.0f} ms")
    if args.no_readme:
        return
    bits = max(speaking["peer_kbps"], runs[1]["peer_kbps"])
    age_text = (f"p50 {c.percentile(ages, 50):.0f} / p95 {c.percentile(ages, 95):.0f} ms (n={len(ages)}; from RTP "
                f"timestamps, counted from the fastest frame's arrival); receive -> display p50 "
                f"{c.percentile(held, 50):.0f} / p95 {c.percentile(held, 95):.0f} ms")
    c.update_readme("webrtc:", [
        ("webrtc: bit rate per viewer", f"{runs[1]['peer_kbps']:.0f} kbit/s idle, {speaking['peer_kbps']:.0f} kbit/s speaking "
         f"(RTP payload, video + audio; the encoder makes {speaking['stream_kbps']:.0f} kbit/s once for all)",
         f"<= {BITRATE_GOAL_KBPS} kbit/s ({'met' if bits <= BITRATE_GOAL_KBPS else 'missed'})"),
        ("webrtc: daemon CPU", f"0 viewers {idle_cpu:.1f} %, 1: {runs[1]['cpu']:.1f} %, 5: {runs[5]['cpu']:.1f} %, "
         f"20: {runs[20]['cpu']:.1f} % of one core (viewers' own CPU {runs[20]['viewer_cpu']:.0f} % on the same 2 cores); "
         f"per extra viewer {marginal:.2f} %; lost {runs[20]['lost']}, dropped {runs[20]['dropped']} at 20",
         f"20th viewer < {MARGINAL_GOAL_PERCENT} % ({'met' if marginal < MARGINAL_GOAL_PERCENT else 'missed'})"),
        ("webrtc: page load -> first frame", f"median {first:.0f} ms (binary stream's JPEG); first WebRTC frame "
         f"{rtc_first:.0f} ms ({args.loads} loads, Chromium in a namespace)",
         f"<= {FIRST_FRAME_GOAL_MS} ms ({'met' if first <= FIRST_FRAME_GOAL_MS else 'missed'})"),
        ("webrtc: frame age at display", age_text,
         f"<= {AGE_GOAL_MS} ms p95 ({'met' if c.percentile(ages, 95) <= AGE_GOAL_MS else 'missed'})"),
    ])


if __name__ == "__main__":
    c.run_main(main)

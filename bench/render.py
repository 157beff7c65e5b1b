"""Built-in renderer cost and daemon start-up time.

(a) CPU share of a real ``avatard --server`` with no client connected (built-in renderer, offline brain;
    the JPEG encoder idles without clients) at its configured fps and size, from /proc/PID/stat (utime+stime, all threads) over a window: once idle, once while speaking a
    long text queued with ``avatarctl say`` (re-queued whenever speech runs out). Goal: < 15 % of one core.
    Text-to-speech is synthesized before the speaking window opens (the window starts TTS_TAIL_S after
    the daemon reports ``speaking``: the voice says its first phrase while it synthesizes the rest), so the
    window measures rendering; the TTS burst is reported on its own line.
    Side by side, in this process: ``face.draw`` and ``Animator.next_pose`` + ``face.draw`` per frame,
    p50/p95 ms, for idle, speaking and speaking-with-gestures poses (real espeak speech drives the mouth).
    Wall times include preemption by whatever else runs on the box; "draw CPU" (this thread's CPU time)
    does not, so when p95 is far above p50, compare with that column before blaming the drawing code.
(b) Start-up: Popen to the sd_notify ``READY=1`` datagram of ``avatard --server``, median of N runs;
    goal < 1.5 s. (Server mode because it is headless: without ``--server`` the daemon opens a window, a
    speaker and a microphone, which a CI box or this VM may not have.) Baselines spawned in the same run, interleaved: ``python -c "import trio"`` and
    ``python -c "import avatard.app"`` (spawn to exit).

    /work/venv/bin/python bench/render.py [--seconds 20] [--runs 5] [--frames 500] [--no-readme]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import _common as c
import numpy as np

CPU_GOAL_PERCENT = 15.0
STARTUP_GOAL_S = 1.5
SETTLE_S = 2.0  # after READY: first frames, per-size layer cache, logging set up
# The rest of a long text is synthesized within this long after the first phrase is heard (~0.3 s of espeak
# and soxr for 1,500 characters on a 2-core box).
TTS_TAIL_S = 1.5
# Headless and loopback-only; with no client the encoder skips frames, so this is the renderer's cost.
DAEMON_ARGS = ("--server", "--host", "127.0.0.1", "--port", "0", "--log-level", "warning")
SPEAKING_TIMEOUT = 30.0  # TTS of LONG_TEXT takes ~1 s; far longer means the brain is stuck
POLL_S = 1.0

# ~1500 characters, ~90 s of speech at espeak's 165 words per minute: one `say` outlasts a 20 s window.
LONG_TEXT = (
    "Good morning, and thank you for joining this session. Today we are going to walk through the whole "
    "life of a single frame, from the moment a sound reaches the microphone to the moment the picture of a "
    "moving mouth arrives in your browser. First the audio is cut into short pieces, each one lasting forty "
    "milliseconds, which is exactly one frame at twenty five frames per second. Every piece is measured for "
    "loudness, and the loudness decides how far the lips open. Loud syllables open the mouth wide, quiet "
    "ones only a little, and silence lets it close again, slightly slower than it opened, so that the lips "
    "do not flap between words. Meanwhile the head sways gently, the eyes blink every few seconds, and the "
    "shoulders rise and fall with an imaginary breath. None of this depends on the wall clock: the frame "
    "counter is the only notion of time, which is why a replay of the same audio always produces the same "
    "pictures. When the picture is ready it is compressed once, and the same bytes are handed to every "
    "viewer. A viewer that falls behind simply misses a few pictures, while everybody else carries on as "
    "if nothing happened. That is the whole trick, really: never let one slow listener hold up the room. "
    "Now let us talk about what happens when somebody interrupts. The queued speech is thrown away at once, "
    "the mouth shuts on the very next frame, and the avatar turns its attention to the new speaker, ready "
    "to listen and, after a short pause, to answer."
)


# -- (a) in-process: what one frame costs ------------------------------------------------------------

def frame_costs(frames: int, width: int, height: int, fps: int) -> list[list[str]]:
    from avatard.brains import tts
    from avatard.constants import GESTURES
    from avatard.renderers import face
    from avatard.renderers.animator import Animator

    per_frame = 16000 // fps
    speech = tts.synthesize(LONG_TEXT[:600])
    silence = np.zeros(per_frame, dtype=np.int16)
    gestures = sorted(GESTURES)
    gesture_every = round(2.5 * fps)

    def audio_at(i: int, speaking: bool) -> np.ndarray:
        if not speaking:
            return silence
        start = (i * per_frame) % max(1, len(speech) - per_frame)
        return speech[start:start + per_frame]

    rows = []
    for scenario in ("idle", "speaking", "speaking+gestures"):
        animator = Animator(fps, seed=1)
        speaking = scenario != "idle"
        anim_ms, draw_ms, draw_cpu_ms, total_ms = [], [], [], []
        warmup = fps  # first frames build the per-size layer cache
        for i in range(frames + warmup):
            if scenario == "speaking+gestures" and i % gesture_every == 0:
                animator.start_gesture(gestures[(i // gesture_every) % len(gestures)])
            audio = audio_at(i, speaking)
            t0 = time.perf_counter()
            pose = animator.next_pose(audio)
            t1, cpu1 = time.perf_counter(), time.thread_time()
            face.draw(pose, width, height)
            t2, cpu2 = time.perf_counter(), time.thread_time()
            if i >= warmup:
                anim_ms.append((t1 - t0) * 1e3)
                draw_ms.append((t2 - t1) * 1e3)
                draw_cpu_ms.append((cpu2 - cpu1) * 1e3)
                total_ms.append((t2 - t0) * 1e3)
        budget = 1000.0 / fps
        rows.append([scenario, f"{c.percentile(draw_ms, 50):.2f}", f"{c.percentile(draw_ms, 95):.2f}",
                     f"{c.percentile(draw_cpu_ms, 50):.2f}", f"{c.percentile(anim_ms, 50):.3f}", f"{c.percentile(total_ms, 50):.2f}",
                     f"{c.percentile(total_ms, 95):.2f}", f"{max(total_ms):.2f}",
                     f"{100 * c.percentile(total_ms, 50) / budget:.1f} %"])
    return rows


# -- (a) the real daemon: CPU share idle and speaking ------------------------------------------------

def daemon_cpu(seconds: float, size: str, fps: int) -> dict:
    out = {}
    with c.Daemon.start(*DAEMON_ARGS, "--size", size, "--fps", str(fps)) as daemon:
        time.sleep(SETTLE_S)
        out["idle"] = _window(daemon, seconds, speak=False)

        # Queue the speech, then open the window once the avatar is actually speaking.
        cpu0, t0 = daemon.cpu_seconds(), time.perf_counter()
        _say(daemon)
        deadline = time.monotonic() + SPEAKING_TIMEOUT
        while not daemon.status()["speaking"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"avatard never started speaking:\n{daemon.log()[-3000:]}")
            time.sleep(0.05)
        # The voice speaks its first phrase while it synthesizes the rest (avatard/brains/voice.py): that
        # burst belongs to the TTS line, not to the rendering window.
        time.sleep(TTS_TAIL_S)
        elapsed = time.perf_counter() - t0
        idle_rate = out["idle"]["cpu_s"] / out["idle"]["wall_s"]
        out["tts"] = {"cpu_s": daemon.cpu_seconds() - cpu0 - idle_rate * elapsed, "wall_s": elapsed}
        out["speaking"] = _window(daemon, seconds, speak=True)
    return out


def _say(daemon: c.Daemon) -> None:
    done = daemon.avatarctl("say", LONG_TEXT)
    if done.returncode != 0:
        raise RuntimeError(f"avatarctl say failed ({done.returncode}): {done.stderr.strip()}")


def _window(daemon: c.Daemon, seconds: float, speak: bool) -> dict:
    s0 = daemon.status()
    cpu0, t0 = daemon.cpu_seconds(), time.perf_counter()
    polls = speaking_polls = resays = 0
    end = t0 + seconds
    while (now := time.perf_counter()) < end:
        time.sleep(min(POLL_S, end - now))
        if speak:
            polls += 1
            if daemon.status()["speaking"]:
                speaking_polls += 1
            else:
                resays += 1  # ran out of speech: queue more (its TTS then lands inside the window)
                _say(daemon)
    cpu1, t1 = daemon.cpu_seconds(), time.perf_counter()
    s1 = daemon.status()
    return {
        "cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
        "frames": s1["frames_rendered"] - s0["frames_rendered"],
        "dropped": s1["frames_dropped"] - s0["frames_dropped"],
        "skipped": s1["ticks_skipped"] - s0["ticks_skipped"],
        "speaking_share": speaking_polls / polls if polls else None, "resays": resays,
    }


# -- (b) start-up ------------------------------------------------------------------------------------

def startup(runs: int) -> dict[str, list[float]]:
    spawns = {
        "import trio": [sys.executable, "-c", "import trio"],
        "import avatard.app": [sys.executable, "-c", "import avatard.app"],
    }
    times: dict[str, list[float]] = {"avatard --server": [], **{k: [] for k in spawns}}
    for _ in range(runs):  # interleaved, so a burst of load elsewhere hits every column alike
        for label, cmd in spawns.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=c.daemon_env(None), cwd="/tmp")
            times[label].append(time.perf_counter() - t0)
        with c.Daemon.start(*DAEMON_ARGS) as daemon:
            times["avatard --server"].append(daemon.spawn_to_ready)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each CPU window (idle, speaking)")
    parser.add_argument("--runs", type=int, default=5, help="start-up runs (median reported)")
    parser.add_argument("--frames", type=int, default=500, help="frames per in-process scenario")
    parser.add_argument("--size", default="512x512", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600 or not 1 <= args.runs <= 50 or not 10 <= args.frames <= 100000:
        parser.error("--seconds must be 1..600, --runs 1..50, --frames 10..100000")
    width, height = (int(v) for v in args.size.lower().split("x"))

    print(f"machine: {c.machine()}\nload average before: {c.loadavg()}\n")

    print(f"[a] per frame, in this process ({args.frames} frames each, {args.size}, budget {1000 / args.fps:.0f} ms):")
    cost_rows = frame_costs(args.frames, width, height, args.fps)
    c.print_table(["poses", "draw p50 ms", "draw p95 ms", "draw CPU p50 ms", "animator p50 ms", "anim+draw p50 ms",
                   "anim+draw p95 ms", "max ms", "p50 of budget"], cost_rows)

    print(f"\n[a] daemon CPU, {args.seconds:g} s windows (goal < {CPU_GOAL_PERCENT:g} % of one core):")
    cpu = daemon_cpu(args.seconds, args.size, args.fps)
    cpu_rows = []
    for label in ("idle", "speaking"):
        w = cpu[label]
        pct = 100 * w["cpu_s"] / w["wall_s"]
        extra = "" if w["speaking_share"] is None else f"speaking {100 * w['speaking_share']:.0f} % of polls, re-said {w['resays']}x"
        cpu_rows.append([label, f"{pct:.1f} %", "ok" if pct < CPU_GOAL_PERCENT else "MISS",
                         f"{w['frames']} / {round(args.fps * w['wall_s'])}", w["dropped"], w["skipped"], extra])
        w["pct"] = pct
    c.print_table(["window", "CPU (1 core = 100 %)", "goal", "frames / expected", "dropped", "ticks skipped", "notes"],
                  cpu_rows)
    tts = cpu["tts"]
    print(f"TTS burst for the {len(LONG_TEXT)}-character say: ~{tts['cpu_s']:.2f} CPU-s above idle, "
          f"{tts['wall_s']:.2f} s from `avatarctl say` to speaking")

    print(f"\n[b] start-up, spawn to READY=1 (daemons) or to exit (baselines), {args.runs} runs, "
          f"goal < {STARTUP_GOAL_S:g} s:")
    times = startup(args.runs)
    start_rows = []
    for label, values in times.items():
        daemon_row = label.startswith("avatard")
        start_rows.append([label, f"{c.median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}",
                           ("ok" if c.median(values) < STARTUP_GOAL_S else "MISS") if daemon_row else "(baseline)"])
    c.print_table(["process", "median s", "min s", "max s", "goal"], start_rows)
    print(f"\nload average after: {c.loadavg()}")

    if args.no_readme:
        return
    idle_row = next(r for r in cost_rows if r[0] == "idle")
    speak_row = next(r for r in cost_rows if r[0] == "speaking")
    gest_row = next(r for r in cost_rows if r[0] == "speaking+gestures")
    rate = f"{args.fps} fps {args.size}"
    base = c.median(times["import trio"])
    c.update_readme("render", [
        ("render: daemon CPU, idle", f"{cpu['idle']['pct']:.1f} % of one core ({rate}, {args.seconds:g} s)",
         f"< {CPU_GOAL_PERCENT:g} %"),
        ("render: daemon CPU, speaking", f"{cpu['speaking']['pct']:.1f} % of one core ({rate}, {args.seconds:g} s)",
         f"< {CPU_GOAL_PERCENT:g} %"),
        ("render: face.draw per frame", f"p50 {idle_row[1]} / p95 {idle_row[2]} ms idle; p50 {speak_row[1]} / p95 "
         f"{speak_row[2]} ms speaking; p50 {gest_row[1]} / p95 {gest_row[2]} ms with gestures", "(see CPU goal)"),
        ("render: Animator + draw per frame", f"p50 {idle_row[5]} / p95 {idle_row[6]} ms idle; p50 {speak_row[5]} / "
         f"p95 {speak_row[6]} ms speaking; p50 {gest_row[5]} / p95 {gest_row[6]} ms with gestures",
         f"well inside {1000 / args.fps:.0f} ms"),
        ("render: start-up to READY=1", f"median {c.median(times['avatard --server']):.2f} s "
         f"(avatard --server, {args.runs} runs; `python -c \"import trio\"` {base:.2f} s, "
         f"`import avatard.app` {c.median(times['import avatard.app']):.2f} s)", f"< {STARTUP_GOAL_S:g} s"),
    ])


if __name__ == "__main__":
    c.run_main(main)

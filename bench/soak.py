"""Soak: the Gemini daemon under a steady conversation with ten viewers, watched for leaks and losses.

A real ``avatard --server`` with the Gemini brain talks to the Live test server (tests/gemini_live_server.py,
``realtime=True``: every answer streams at talking speed, ~3 s for these turns) running in a child process.
``--clients`` browser-like WebSocket clients (default 10, all in this trio process) read everything:
they count video frames and audio chunks, keep a small playout buffer that they empty on
``status: interrupted`` (what a browser must do), and collect the assistant's final transcriptions.

Load: a user turn every ``--turn-every`` s (``text_input``, from each client in turn) and a barge-in every
``--barge-every`` s (``control`` interrupt, from another client in turn), 2 s after every other turn, so it
cuts an answer that is being spoken. Every ``--report-every`` s and at the end it prints:

- the daemon's RSS (VmRSS of /proc/PID/status), open file descriptors (/proc/PID/fd) and CPU share;
- frames delivered per client: video frames (and audio chunks) whose header timestamp lies in the window
  so far (minus 2 s still on their way), as % of fps x seconds; minimum and median over clients;
- turns sent vs answered: answered = a final assistant transcription for that turn's text reached the
  clients, complete or ``interrupted: true`` (counted separately); missing = none yet (at the end, after
  waiting for the last answers);
- speech after ``interrupted`` (non-silent audio a client received after the status and before the next
  turn; must be 0), and client-side p95s over the report window: ``text_input`` -> first speech at every
  client, barge-in -> ``interrupted`` + a silent chunk at every client;
- the daemon's own p95s over the window from ``GET /metrics`` (histogram buckets, so "<= bound").

Goals for a 60-minute run: RSS growth < 5 % from the 1-minute mark (start-up and warm-up -- first turns,
first JPEG buffers, Python's allocator arenas -- are discounted) to the end; fds flat (end within 2 of the
1-minute mark); every turn answered; every client >= 99 % of the frames.

    /work/venv/bin/python bench/soak.py [--minutes 2] [--clients 10] [--no-readme]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import time

import _common as c
import _gemini as g
import attrs
import trio
import trio_websocket

from avatard.protocol import media as wire

FPS = 25
SETTLE_S = 1.5  # after every client connected: handshakes done, media flowing
GRACE_S = 2.0  # frames stamped inside the window may still be on their way
BARGE_AFTER_TURN_S = 2.0  # answers last ~3 s: 2 s in, the barge-in cuts one being spoken
ANSWER_WAIT_S = 20.0  # at the end: the last answer (~3 s) and its final transcription
SAMPLE_EVERY_S = 5.0  # RSS and fds sampled this often (printed every --report-every)
WARMUP_MARK_S = 60.0  # RSS/fd growth is measured from here
RSS_GOAL_PERCENT = 5.0
FDS_SLACK = 2  # a /metrics or status connection closing at the moment of sampling
DELIVERED_GOAL_PERCENT = 99.0
PLAYOUT_CHUNKS = 10  # 0.4 s: what a browser's playback buffer holds ahead
CONNECT_TIMEOUT = 20.0
PHASE_JITTER_S = 0.04  # one frame at 25 fps
TURN_RE = re.compile(r"soak turn (\d+)\b")


@attrs.define
class Viewer:
    index: int
    ws: trio_websocket.WebSocketConnection | None = None
    video: collections.Counter = attrs.Factory(collections.Counter)  # second of the window -> frames
    audio: collections.Counter = attrs.Factory(collections.Counter)
    playout: collections.deque = attrs.Factory(lambda: collections.deque(maxlen=PLAYOUT_CHUNKS))
    finals: dict = attrs.Factory(dict)  # turn number -> "complete" | "interrupted"
    cut: bool = False  # `interrupted` received and no turn sent since: speech now is a leak
    leaks: int = 0
    flushes: int = 0
    speech_wait: float | None = None  # perf time of the turn we wait to hear
    silence_wait: float | None = None  # perf time of the barge-in we wait to see honoured
    status_seen: bool = False  # `interrupted` has arrived for that barge-in
    closed: str | None = None


@attrs.define
class Sample:
    at: float  # seconds since the window start
    rss_kib: int
    fds: int


@attrs.define
class State:
    start_wall: float = float("inf")  # window start, wall clock (header timestamps)
    start: float = 0.0  # the same, perf_counter
    start_trio: float = 0.0  # the same, trio's clock (the load's schedule)
    turns_sent: int = 0
    barge_ins: int = 0
    turn_latency: list = attrs.Factory(list)  # (perf time, ms) text_input -> first speech, per client
    cut_latency: list = attrs.Factory(list)  # (perf time, ms) barge-in -> interrupted + silent chunk, per client
    samples: list = attrs.Factory(list)
    reports: list = attrs.Factory(list)


async def _reader(viewer: Viewer, state: State) -> None:
    audio_type, unpack, audio_unpack = wire.AUDIO, wire.VIDEO_HEADER.unpack_from, wire.AUDIO_HEADER.unpack_from
    try:
        while True:
            message = await viewer.ws.get_message()
            if isinstance(message, bytes):
                if message[0] != audio_type:
                    offset = unpack(message)[5] - state.start_wall  # -inf before the window opens
                    if offset >= 0:
                        viewer.video[int(offset)] += 1
                    continue
                now = time.perf_counter()
                offset = audio_unpack(message)[4] - state.start_wall
                if offset >= 0:
                    viewer.audio[int(offset)] += 1
                silent = g.is_silent(message)
                viewer.playout.append(message)
                if not silent:
                    if viewer.cut:
                        viewer.leaks += 1
                    if viewer.speech_wait is not None:
                        state.turn_latency.append((now, 1e3 * (now - viewer.speech_wait)))
                        viewer.speech_wait = None
                if viewer.status_seen and viewer.silence_wait is not None:
                    if silent:
                        state.cut_latency.append((now, 1e3 * (now - viewer.silence_wait)))
                    viewer.silence_wait, viewer.status_seen = None, False
                continue
            obj = json.loads(message)
            data = obj.get("data", {})
            if obj.get("type") == "status" and data.get("status") == "interrupted":
                viewer.playout.clear()  # a browser flushes its playback buffer
                viewer.flushes += 1
                viewer.cut = True
                viewer.status_seen = viewer.silence_wait is not None
            elif obj.get("type") == "transcription" and data.get("role") == "assistant" and data.get("is_final"):
                match = TURN_RE.search(data.get("text", ""))
                if match:
                    viewer.finals[int(match.group(1))] = "interrupted" if data.get("interrupted") else "complete"
    except trio_websocket.ConnectionClosed as exc:
        viewer.closed = f"{exc.reason.code} {exc.reason.reason or ''}".strip()


async def _send_turn(viewers: list[Viewer], state: State, number: int) -> None:
    sender = viewers[number % len(viewers)]
    text = f"soak turn {number} from viewer {sender.index}: what happens next?"
    now = time.perf_counter()
    for viewer in viewers:
        viewer.cut = False
        viewer.speech_wait = now
    state.turns_sent += 1
    await sender.ws.send_message(json.dumps({"type": "text_input", "data": {"text": text}}))


async def _barge_in(viewers: list[Viewer], state: State, number: int) -> None:
    sender = viewers[(number + len(viewers) // 2) % len(viewers)]
    now = time.perf_counter()
    for viewer in viewers:
        viewer.silence_wait, viewer.status_seen = now, False
    state.barge_ins += 1
    await sender.ws.send_message(json.dumps({"type": "control", "data": {"command": "interrupt"}}))


async def _load(viewers: list[Viewer], state: State, seconds: float, turn_every: float, barge_every: float) -> None:
    """Turns at 0, turn_every, ...; barge-ins BARGE_AFTER_TURN_S after a turn, every barge_every s."""
    plan = [(k * turn_every, _send_turn, k) for k in range(int(seconds // turn_every) + 1) if k * turn_every < seconds]
    plan += [(j * barge_every + BARGE_AFTER_TURN_S, _barge_in, j) for j in range(int(seconds // barge_every) + 1)
             if j * barge_every + BARGE_AFTER_TURN_S < seconds]
    for at, action, number in sorted(plan, key=lambda item: item[0]):
        # 5 s is a whole number of 40 ms ticks: without jitter every turn would land at one phase of the clock.
        await trio.sleep_until(state.start_trio + at + random.uniform(0, PHASE_JITTER_S))
        await action(viewers, state, number)


# -- reporting ----------------------------------------------------------------------------------------------

def delivered(viewers: list[Viewer], upto_s: int) -> tuple[list[float], list[float]]:
    """Per client: video and audio % of fps * seconds over whole seconds [0, upto_s) of the window."""
    expected = FPS * upto_s
    if expected <= 0:
        return [], []
    video = [100.0 * sum(n for s, n in v.video.items() if s < upto_s) / expected for v in viewers]
    audio = [100.0 * sum(n for s, n in v.audio.items() if s < upto_s) / expected for v in viewers]
    return video, audio


def answered(viewers: list[Viewer], sent: int) -> tuple[int, int, int, int]:
    """(complete, interrupted, missing, finals some client missed) over turns 0..sent-1."""
    complete = interrupted = missing = partial = 0
    for turn in range(sent):
        seen = [v.finals.get(turn) for v in viewers]
        kinds = {k for k in seen if k is not None}
        if not kinds:
            missing += 1
        elif "interrupted" in kinds:
            interrupted += 1
        else:
            complete += 1
        if kinds and None in seen:
            partial += 1
    return complete, interrupted, missing, partial


def p95(values) -> str:
    return f"{c.percentile(list(values), 95):.0f}" if values else "-"


def since(pairs: list, t: float) -> list[float]:
    return [ms for at, ms in pairs if at >= t]


def bucket_p95(now: dict, before: dict | None, name: str) -> str:
    histogram = now.get(f"avatard_latency_{name}_seconds")
    if histogram is None:
        return "?"
    window = histogram.minus((before or {}).get(f"avatard_latency_{name}_seconds"))
    if not window.count:
        return "-"
    bound = window.bound(0.95)
    return f"<={bound * 1e3:g}" if bound != float("inf") else ">top"


REPORT_HEADERS = ["t", "RSS MiB", "fds", "CPU", "video min/med %", "audio min %", "turns sent", "answered (int.)",
                  "missing", "leaks", "turn p95", "cut p95", "daemon p95 in>audio/audio>frame/int>silence ms",
                  "dropped", "clients"]


async def _report(daemon: c.Daemon, port: int, viewers: list[Viewer], state: State, previous: dict) -> list[str]:
    now = time.perf_counter()
    elapsed = now - state.start
    metrics = await trio.to_thread.run_sync(g.scrape_metrics, port)
    status = await trio.to_thread.run_sync(daemon.status)
    cpu = daemon.cpu_seconds()
    cpu_share = 100.0 * (cpu - previous.get("cpu", cpu)) / max(now - previous.get("at", now), 1e-9)
    sample = state.samples[-1]
    video, audio = delivered(viewers, int(elapsed - GRACE_S))
    complete, interrupted, missing, _ = answered(viewers, state.turns_sent)
    window_start = previous.get("at", state.start)
    hist = previous.get("metrics")
    row = [
        f"{elapsed / 60:.1f} min", f"{sample.rss_kib / 1024:.1f}", str(sample.fds),
        f"{cpu_share:.0f} %" if "cpu" in previous else "-",
        f"{min(video):.1f}/{c.median(video):.1f}" if video else "-", f"{min(audio):.1f}" if audio else "-",
        str(state.turns_sent), f"{complete + interrupted} ({interrupted})", str(missing),
        str(sum(v.leaks for v in viewers)),
        p95(since(state.turn_latency, window_start)), p95(since(state.cut_latency, window_start)),
        "/".join(bucket_p95(metrics, hist, n) for n in ("input_to_audio", "audio_to_frame", "interrupt_to_silence")),
        f"{status['frames_dropped']}+{status['video_dropped']}v", str(status["clients"]),
    ]
    previous.update(at=now, cpu=cpu, metrics=metrics, status=status)
    return row


def _print_row(row: list[str]) -> None:
    print("  " + "  ".join(f"{h}={v}" for h, v in zip(REPORT_HEADERS, row)), flush=True)


async def _sampler(pid: int, state: State) -> None:
    while True:
        state.samples.append(Sample(time.perf_counter() - state.start, g.rss_kib(pid), g.fd_count(pid)))
        await trio.sleep(SAMPLE_EVERY_S)


async def _soak(daemon: c.Daemon, server: g.ServerProcess, args) -> dict:
    port = daemon.port
    viewers = [Viewer(i + 1) for i in range(args.clients)]
    state = State()
    previous: dict = {}
    seconds = args.minutes * 60
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT):
            for viewer in viewers:
                viewer.ws = await g.connect(nursery, port)
        for viewer in viewers:
            nursery.start_soon(_reader, viewer, state)
        await trio.sleep(SETTLE_S)
        state.start_wall = float(int(time.time()) + 1)  # whole seconds: per-second frame counts stay exact
        await trio.sleep(state.start_wall - time.time())
        state.start, state.start_trio = time.perf_counter(), trio.current_time()
        nursery.start_soon(_sampler, daemon.pid, state)
        await trio.sleep(0.01)
        state.reports.append(await _report(daemon, port, viewers, state, previous))
        _print_row(state.reports[-1])
        async with trio.open_nursery() as load:
            load.start_soon(_load, viewers, state, seconds, args.turn_every, args.barge_every)
            k = 1
            while k * args.report_every < seconds:
                await trio.sleep_until(state.start_trio + k * args.report_every)
                state.reports.append(await _report(daemon, port, viewers, state, previous))
                _print_row(state.reports[-1])
                k += 1
        await trio.sleep_until(state.start_trio + seconds)
        end = time.perf_counter()
        with trio.move_on_after(ANSWER_WAIT_S):  # the last answers, then their final transcriptions
            while answered(viewers, state.turns_sent)[2]:
                await trio.sleep(0.2)
        await trio.sleep(max(0.0, GRACE_S - (time.perf_counter() - end)))
        state.samples.append(Sample(time.perf_counter() - state.start, g.rss_kib(daemon.pid), g.fd_count(daemon.pid)))
        final = await _report(daemon, port, viewers, state, previous)
        state.reports.append(final)
        _print_row(final)
        nursery.cancel_scope.cancel()
    conversations = server.conversations
    statuses = collections.Counter(entry.get("status") for log in conversations.values() for entry in log
                                   if entry["role"] == "model")
    video, audio = delivered(viewers, int(seconds))
    return dict(viewers=viewers, state=state, seconds=seconds, video=video, audio=audio,
                answers=answered(viewers, state.turns_sent), server_statuses=statuses, status=previous["status"],
                metrics=previous["metrics"])


def _at_mark(samples: list[Sample]) -> tuple[Sample, bool]:
    """The sample at the 1-minute mark (or the first one, for runs shorter than two minutes)."""
    if samples[-1].at >= 2 * WARMUP_MARK_S:
        return min(samples, key=lambda s: abs(s.at - WARMUP_MARK_S)), True
    return samples[0], False


def _slope_mib_per_hour(samples: list[Sample]) -> float:
    points = [(s.at, s.rss_kib / 1024) for s in samples]
    if len(points) < 3:
        return float("nan")
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    var = sum((x - mx) ** 2 for x, _ in points)
    return 3600 * sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the load (60 for the real soak)")
    parser.add_argument("--clients", type=int, default=10, help="browser-like WebSocket clients")
    parser.add_argument("--turn-every", type=float, default=5.0, help="seconds between user turns")
    parser.add_argument("--barge-every", type=float, default=10.0, help="seconds between barge-ins")
    parser.add_argument("--report-every", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    if not 0.5 <= args.minutes <= 24 * 60 or not 1 <= args.clients <= 100:
        parser.error("--minutes must be 0.5..1440, --clients 1..100")
    if not 2.5 <= args.turn_every <= 600 or not BARGE_AFTER_TURN_S < args.barge_every <= 600 or args.report_every < 5:
        parser.error("--turn-every must be 2.5..600, --barge-every 2..600, --report-every >= 5")

    print(f"machine: {c.machine()}\nload average before: {c.loadavg()}")
    print(f"{args.minutes:g} min, {args.clients} clients, a turn every {args.turn_every:g} s, a barge-in every "
          f"{args.barge_every:g} s; Live test server realtime, in a child process\n")
    with g.ServerProcess(realtime=True) as server, g.start_gemini_daemon(server, args.clients + 2) as daemon:
        print(f"  daemon pid {daemon.pid}; started in {daemon.spawn_to_ready:.2f} s. Columns: CPU = daemon, "
              "1 core = 100 %; turn/cut p95 = client-side ms over the last report window; dropped = renderer/fan-out "
              "frames + per-client video\n", flush=True)
        result = trio.run(_soak, daemon, server, args)
        log_tail = [line for line in daemon.log().splitlines() if "WARNING" in line or "ERROR" in line]

    viewers, state = result["viewers"], result["state"]
    print()
    c.print_table(REPORT_HEADERS, state.reports)
    mark, long_enough = _at_mark(state.samples)
    last = state.samples[-1]
    after = [s for s in state.samples if s.at >= mark.at]
    growth = 100.0 * (last.rss_kib - mark.rss_kib) / mark.rss_kib
    mark_name = f"the {mark.at / 60:.1f}-minute mark" if long_enough else "the start (run shorter than 2 min)"
    complete, interrupted, missing, partial = result["answers"]
    video, audio = result["video"], result["audio"]
    closed = [v.closed for v in viewers if v.closed]
    ok_rss = growth < RSS_GOAL_PERCENT
    ok_fds = last.fds <= mark.fds + FDS_SLACK
    ok_turns = missing == 0
    ok_frames = bool(video) and min(video) >= DELIVERED_GOAL_PERCENT
    fds_after = [s.fds for s in after]
    lines = [
        f"RSS: {mark.rss_kib / 1024:.1f} MiB at {mark_name} -> {last.rss_kib / 1024:.1f} MiB at the end "
        f"({growth:+.1f} %; max {max(s.rss_kib for s in after) / 1024:.1f} MiB; trend "
        f"{_slope_mib_per_hour(after):+.1f} MiB/h after the mark; {state.samples[0].rss_kib / 1024:.1f} MiB at start): "
        f"{'ok' if ok_rss else 'MISS'} (goal < {RSS_GOAL_PERCENT:g} %)",
        f"fds: {mark.fds} at the mark -> {last.fds} at the end (min {min(fds_after)}, max {max(fds_after)}): "
        f"{'ok' if ok_fds else 'MISS'} (goal flat, +-{FDS_SLACK})",
        f"turns: {state.turns_sent} sent, {complete + interrupted} answered ({complete} complete, {interrupted} marked "
        f"interrupted), {missing} missing; {partial} finals missed by some client; server log: "
        f"{dict(result['server_statuses'])}: {'ok' if ok_turns else 'MISS'} (goal 100 %)",
        f"barge-ins: {state.barge_ins}; speech after `interrupted`: {sum(v.leaks for v in viewers)} chunks; "
        f"playout flushes per client {min(v.flushes for v in viewers)}..{max(v.flushes for v in viewers)}",
        f"frames delivered ({result['seconds'] / 60:g} min window): video min {min(video):.2f} % / median "
        f"{c.median(video):.2f} %, audio min {min(audio):.2f} %: {'ok' if ok_frames else 'MISS'} (goal >= "
        f"{DELIVERED_GOAL_PERCENT:g} % each); clients closed: {closed or 'none'}",
        f"client-side p95 over the run: text_input -> first speech {p95(ms for _, ms in state.turn_latency)} ms, "
        f"barge-in -> interrupted + silence {p95(ms for _, ms in state.cut_latency)} ms "
        f"(n={len(state.cut_latency)} of {state.barge_ins * len(viewers)})",
        "daemon histograms over the run: " + "; ".join(
            f"{n} {result['metrics'][f'avatard_latency_{n}_seconds'].summary_ms()}"
            for n in ("input_to_audio", "audio_to_frame", "interrupt_to_silence")
            if f"avatard_latency_{n}_seconds" in result["metrics"]),
        f"daemon status: rendered {result['status']['frames_rendered']}, dropped {result['status']['frames_dropped']}, "
        f"ticks skipped {result['status']['ticks_skipped']}, video dropped {result['status']['video_dropped']}, "
        f"events dropped {result['status']['events_dropped']}, reconnects {result['status']['reconnects']}, "
        f"turns {result['status']['turns']}, interrupts {result['status']['interrupts']}",
        f"daemon warnings/errors in its log: {len(log_tail)}" + (f" (last: {log_tail[-1][-200:]})" if log_tail else ""),
    ]
    print("\n" + "\n".join(lines))
    print(f"load average after: {c.loadavg()}")

    if args.no_readme:
        return
    c.update_readme("soak", [
        (f"soak: {args.minutes:g} min, RSS", f"{mark.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB "
         f"({growth:+.1f} % from {mark_name}; trend {_slope_mib_per_hour(after):+.1f} MiB/h)",
         f"< {RSS_GOAL_PERCENT:g} % growth (60 min)"),
        (f"soak: {args.minutes:g} min, fds", f"{mark.fds} -> {last.fds} (min {min(fds_after)}, max {max(fds_after)})",
         "flat"),
        (f"soak: {args.minutes:g} min, turns", f"{state.turns_sent} sent, {complete + interrupted} answered "
         f"({interrupted} interrupted by {state.barge_ins} barge-ins), {missing} missing; speech after interrupted: "
         f"{sum(v.leaks for v in viewers)} chunks", "100 % answered"),
        (f"soak: {args.minutes:g} min, frames", f"{args.clients} clients: video min {min(video):.2f} %, audio min "
         f"{min(audio):.2f} %; dropped {result['status']['frames_dropped']}", f">= {DELIVERED_GOAL_PERCENT:g} % each"),
        (f"soak: {args.minutes:g} min, latency", f"client p95: text -> speech {p95(ms for _, ms in state.turn_latency)} ms, "
         f"barge-in -> silence {p95(ms for _, ms in state.cut_latency)} ms; daemon " + "; ".join(
             f"{n} p95 {bucket_p95(result['metrics'], None, n)} ms"
             for n in ("input_to_audio", "audio_to_frame", "interrupt_to_silence")), "-"),
    ])


if __name__ == "__main__":
    c.run_main(main)

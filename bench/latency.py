"""Latency the daemon adds: model audio in -> lip-synced audio out, and interrupt -> silence on every client.

A real ``avatard --server`` with the Gemini brain talks to the Live test server (tests/gemini_live_server.py,
in a child process, or with ``--server-in-process`` in a thread of this one) with ``realtime=False``: the
server answers every turn at once, so any time between the model's audio and a client hearing it is the
daemon's. ``--clients`` WebSocket clients
(default 3) read everything. Each of N turns (after ``--warmup`` uncounted ones):

1. a client sends ``text_input`` (each client in turn: the daemon budgets every browser's typing at 600
   characters a minute, and one client typing a turn a second would be refused after ~90 turns; a
   refusal, or any ``error``, stops the bench saying so); every client waits for its first non-silent
   audio chunk;
2. (a) **model audio -> speech out**: from the server's ``sent_at`` of the turn's first audio message
   (``time.perf_counter()`` once the frame is written to its TLS socket: CLOCK_MONOTONIC, the same clock in
   every process of the machine) to the first non-silent audio chunk arriving at each client: the kernel's
   receive stamp on the client's socket (bench/_stamped_ws.py), which leaves out this process's own
   scheduling, as a browser on another machine would. When this process read it is printed beside it
   (and, with ``--server-in-process``, the server thread competes with the clients for the GIL). Split
   with the chunk's header timestamp (the renderer tick it belongs to, wall clock) into *audio -> its tick*
   (the wait for the clock: ~0 since the clock re-phases when speech starts) and *tick -> client* (render,
   send);
3. 0.15-0.6 s later (random, so interrupts do not align with ticks) an interrupt, rotating through three
   paths: a WebSocket ``control`` message from client 1, the control socket's ``interrupt`` request (what
   ``avatarctl interrupt`` sends, timed from the request), and the real ``avatarctl interrupt`` process
   (timed from the daemon's own ``interrupted`` event timestamp: the CLI's ~0.3 s Python start-up is not
   the daemon's, and is printed on its own);
4. (b) **interrupt -> silence**, per client: until ``status: interrupted`` has arrived AND the first audio
   chunk after it has arrived silent. Non-silent chunks after ``interrupted`` are counted as leaks (must be
   0). Also shown: the first silent chunk whatever its order relative to the status.

Local speaker (``--speaker-turns``, default 20; 0 skips it): a local-mode daemon (offline brain) plays
through a private PulseAudio (null sink) with its window on a private Xvfb, as the local tests do
(tests/localenv.py). Each turn ``say``s a long sentence, interrupts it 0.2-0.6 s into the speech, and
reads the speaker's own report: interrupt -> the next block the card takes (silent from there on, as the
interrupt cleared the ring), plus the device latency PortAudio reports (what was already in the card still
plays). Goal: within the device latency + 10 ms.

Side by side: the same loop against the offline brain (espeak; no model, so only end to end text -> first
speech) as the baseline, and the daemon's own histograms from ``GET /metrics`` over the counted turns
(``avatard_latency_audio_to_frame_seconds``: brain hands audio over -> its frame rendered;
``avatard_latency_interrupt_to_silence_seconds``: interrupt -> first silent frame rendered). Goals: (a) and
(b) p95 <= 10 ms (the daemon's own work on one frame); offline text -> first speech p95 <= 35 ms.

    .venv/bin/python bench/latency.py [--turns 300] [--clients 3] [--warmup 2] [--no-local] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import _common as c
import _gemini as g
import attrs
import numpy as np
import trio
from _stamped_ws import Closed, StampedWebSocket

from avatard.constants import RATE
from avatard.protocol import media as wire

# The daemon's share of a reply and of an interrupt: render + encode + send of one frame, with no wait
# for the clock (it re-phases on speech after idle and on interrupts; see avatard/core/frame_clock.py).
GOAL_MS = 10.0
OFFLINE_TEXT_GOAL_MS = 35.0  # text -> first speech with espeak: the first phrase is synthesized first
TURN_TIMEOUT = 20.0  # first speech after text_input; espeak + a cold start on a loaded box take ~2 s
INTERRUPT_TIMEOUT = 5.0
INTERRUPT_DELAY_S = (0.15, 0.6)  # after speech reached every client; the answers last ~2.5 s
AFTER_INTERRUPT_S = 0.4  # keep reading after the cut: any speech arriving now is a leak
# The bench wakes up on a received chunk, i.e. in step with the renderer's ticks; a fixed pause would send
# every turn at the same phase of the 40 ms tick and measure one point of the wait for the clock. A
# random extra of up to one frame spreads the turns over the whole tick.
PHASE_JITTER_S = 0.04
OPENING_CHUNKS = 8  # an answer's first 0.32 s at every client, checked for silence inside the speech
CONNECT_TIMEOUT = 20.0
METHODS = ("ws", "control", "avatarctl")
REPLY_MS_PER_CHAR = 60  # the test server's talking speed: "You said: latency turn 12 ..." is ~2.5 s of speech


@attrs.define
class View:
    """One client's view of one turn; perf_counter() times unless said otherwise."""

    speech_at: float | None = None  # first non-silent audio chunk (arrived: the kernel's stamp, see _stamped_ws)
    speech_read_at: float | None = None  # the same, when this process had read it
    speech_tick: float | None = None  # its header timestamp (wall clock: the renderer tick)
    idle_tick: float | None = None  # the tick of the (silent) chunk before it: the idle grid's phase
    lead_in: float | None = None  # seconds of silence at the head of that first speech chunk
    opening: list[bytes] = attrs.Factory(list)  # PCM of the first OPENING_CHUNKS audio chunks from the first speech
    interrupting: bool = False  # the bench has started an interrupt (set before it is sent)
    silent_at: float | None = None  # first silent chunk after that
    status_at: float | None = None  # `interrupted` status arrived
    status_read_at: float | None = None
    status_stamp: float | None = None  # its data.timestamp (daemon wall clock at publish)
    after_status_at: float | None = None  # first audio chunk after the status
    after_status_read_at: float | None = None
    after_status_silent: bool | None = None
    leaks: int = 0  # non-silent chunks after the status
    listening: bool = False  # `listening` status after the status
    latency: dict | None = None  # the daemon's `latency` event for this turn (its own stages)


@attrs.define
class Client:
    ws: StampedWebSocket
    view: View | None = None


@attrs.define
class Turn:
    method: str
    sent_at: float  # text_input sent (perf)
    t0: float | None = None  # interrupt sent (perf); None for avatarctl (see stamp)
    views: list[View] = attrs.Factory(list)
    ctl_seconds: float | None = None  # avatarctl process: spawn to exit
    model_audio_at: float | None = None  # the test server's sent_at of the first audio message (perf)


@attrs.define
class Run:
    brain: str
    turns: list[Turn]
    histograms: dict[str, g.Histogram]
    status: dict
    wall_offset: float  # time.time() - time.perf_counter()


class Bench:
    def __init__(self) -> None:
        self.clients: list[Client] = []
        self._changed = trio.Event()

    def poke(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate, timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                self._changed = trio.Event()
                await self._changed.wait()
            return
        raise TimeoutError(f"{what}: not within {timeout:g} s")


async def _reader(bench: Bench, client: Client) -> None:
    audio_type, unpack = wire.AUDIO, wire.AUDIO_HEADER.unpack_from
    last_tick = None
    try:
        while True:
            message, now, read = await client.ws.get_message()
            view = client.view
            if view is None:
                continue
            if isinstance(message, bytes):
                if message[0] != audio_type:
                    continue
                silent = g.is_silent(message)
                tick, last_tick = last_tick, unpack(message)[4]
                if not silent and view.speech_at is None:
                    view.speech_at, view.speech_tick, view.idle_tick = now, last_tick, tick
                    view.speech_read_at = read
                    pcm = message[wire.AUDIO_HEADER.size:]
                    view.lead_in = (len(pcm) - len(pcm.lstrip(b"\0"))) // 2 / RATE
                    bench.poke()
                if view.speech_at is not None and not view.interrupting and len(view.opening) < OPENING_CHUNKS:
                    view.opening.append(message[wire.AUDIO_HEADER.size:])
                if view.interrupting and silent and view.silent_at is None:
                    view.silent_at = now
                if view.status_at is not None:
                    if view.after_status_at is None:
                        view.after_status_at, view.after_status_silent = now, silent
                        view.after_status_read_at = read
                        bench.poke()
                    if not silent:
                        view.leaks += 1
                continue
            decoded = json.loads(message)
            data = decoded.get("data", {})
            if decoded.get("type") == "error":
                raise RuntimeError(f"the daemon answered a bench client with an error: {data}")
            if "audio_to_frame_ms" in data and view.latency is None:
                view.latency = data
            if data.get("status") == "interrupted" and view.status_at is None:
                view.status_at, view.status_stamp = now, data.get("timestamp")
                view.status_read_at = read
            elif data.get("status") == "listening" and view.status_at is not None:
                view.listening = True
            bench.poke()
    except Closed as exc:
        print(f"warning: a client's connection closed: {exc.reason}", file=sys.stderr)


async def _interrupt(method: str, daemon: c.Daemon, bench: Bench, turn: Turn) -> None:
    for client in bench.clients:
        client.view.interrupting = True
    if method == "ws":
        turn.t0 = time.perf_counter()
        await bench.clients[0].ws.send_message(json.dumps({"type": "control", "data": {"command": "interrupt"}}))
    elif method == "control":
        turn.t0 = time.perf_counter()
        stream = await trio.open_unix_socket(daemon.socket)
        async with stream:
            await stream.send_all(b'{"cmd": "interrupt"}\n')
            reply = b""
            while not reply.endswith(b"\n"):
                data = await stream.receive_some(4096)
                if not data:
                    break
                reply += data
        if not json.loads(reply).get("ok"):
            raise RuntimeError(f"control interrupt refused: {reply!r}")
    else:
        start = time.perf_counter()
        done = await trio.run_process([sys.executable, "-m", "avatarctl", "--socket", daemon.socket, "interrupt"],
                                      capture_stdout=True, capture_stderr=True, check=False,
                                      env=c.daemon_env(None))
        turn.ctl_seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"avatarctl interrupt exited {done.returncode}: {done.stderr.decode()[-500:]}")


async def _turn(index: int, daemon: c.Daemon, bench: Bench) -> Turn:
    method = METHODS[index % len(METHODS)]
    for client in bench.clients:
        client.view = View()
    views = [client.view for client in bench.clients]
    turn = Turn(method, time.perf_counter(), views=views)
    text = f"latency turn {index}: please answer"
    sender = bench.clients[index % len(bench.clients)]
    await sender.ws.send_message(json.dumps({"type": "text_input", "data": {"text": text}}))
    await bench.wait_for(lambda: all(v.speech_at is not None for v in views), TURN_TIMEOUT, f"turn {index}: speech")
    await trio.sleep(random.uniform(*INTERRUPT_DELAY_S))
    await _interrupt(method, daemon, bench, turn)
    await bench.wait_for(lambda: all(v.after_status_at is not None and v.listening for v in views), INTERRUPT_TIMEOUT,
                         f"turn {index}: interrupted + listening")
    await trio.sleep(AFTER_INTERRUPT_S + random.uniform(0, PHASE_JITTER_S))
    for client in bench.clients:
        client.view = None
    return turn


async def _drive(daemon: c.Daemon, clients: int, turns: int, warmup: int) -> tuple[list[Turn], dict, dict]:
    port = daemon.port
    bench = Bench()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT):
            for _ in range(clients):
                bench.clients.append(Client(await StampedWebSocket.connect("127.0.0.1", port)))
        for client in bench.clients:
            nursery.start_soon(_reader, bench, client)
        await trio.sleep(1.0 + random.uniform(0, PHASE_JITTER_S))  # handshakes done, media flowing
        for i in range(warmup):
            await _turn(-1 - i, daemon, bench)
        before = await trio.to_thread.run_sync(g.scrape_metrics, port)
        done = []
        for i in range(turns):
            try:
                done.append(await _turn(i, daemon, bench))
            except TimeoutError as exc:  # say what the daemon knew: its brain's state and the end of its log
                status = await trio.to_thread.run_sync(daemon.status)
                raise RuntimeError(f"{exc}; brain {status['brain_state']}, {status['reconnects']} reconnects, "
                                   f"speaking {status['speaking']}; the daemon's log ends:\n{daemon.log()[-1500:]}") from None
            if (i + 1) % 10 == 0:
                print(f"    {i + 1}/{turns} turns", flush=True)
        after = await trio.to_thread.run_sync(g.scrape_metrics, port)
        status = await trio.to_thread.run_sync(daemon.status)
        nursery.cancel_scope.cancel()
    return done, {name: h.minus(before.get(name)) for name, h in after.items()}, status


def _first_audio_per_turn(server: g.GeminiLiveTestServer, turns: int, warmup: int) -> list[float]:
    """sent_at of each answer's first audio message; answers are told apart by their turnComplete."""
    sessions = server.sessions
    if len(sessions) != 1:
        raise RuntimeError(f"the daemon used {len(sessions)} Live sessions; expected one (a reconnect spoils sent_at)")
    firsts, waiting = [], True
    for message, at in zip(sessions[0].sent, sessions[0].sent_at):
        content = message.get("serverContent", {})
        parts = content.get("modelTurn", {}).get("parts", [])
        if waiting and any("inlineData" in part for part in parts):
            firsts.append(at)
            waiting = False
        if content.get("turnComplete"):
            waiting = True
    if len(firsts) != warmup + turns:
        raise RuntimeError(f"found {len(firsts)} answers with audio in the server's log; expected {warmup + turns}")
    return firsts[warmup:]


def run_gemini(clients: int, turns: int, warmup: int, in_process: bool, realtime: bool = False) -> Run:
    options = dict(realtime=realtime, ms_per_char=REPLY_MS_PER_CHAR)
    with (g.GeminiLiveTestServer(**options) if in_process else g.ServerProcess(**options)) as server:
        with g.start_gemini_daemon(server, clients + 2) as daemon:
            done, histograms, status = trio.run(_drive, daemon, clients, turns, warmup)
        for turn, at in zip(done, _first_audio_per_turn(server, turns, warmup)):
            turn.model_audio_at = at
    return Run("gemini", done, histograms, status, time.time() - time.perf_counter())


def run_local(clients: int, turns: int, warmup: int) -> Run:
    with g.start_local_daemon(clients + 2) as daemon:
        done, histograms, status = trio.run(_drive, daemon, clients, turns, warmup)
    return Run("local", done, histograms, status, time.time() - time.perf_counter())


# -- figures -------------------------------------------------------------------------------------------------

SLOWEST_SHOWN = 8  # (a)'s slowest turns printed stage by stage: at 30 turns, p95 lies among them


def _ms(values) -> list[float]:
    return [1e3 * v for v in values]


def stats(values_ms: list[float]) -> str:
    if not values_ms:
        return "-"
    return (f"p50 {c.percentile(values_ms, 50):.1f} / p95 {c.percentile(values_ms, 95):.1f} / "
            f"max {max(values_ms):.1f} ms (n={len(values_ms)})")


def speech_out(run: Run, lead_in: bool = False, read: bool = False) -> list[float]:
    """(a): model audio sent -> first speech chunk at each client; with ``lead_in``, to its first speech sample: the
    chunk plus the silence leading it in (the renderer leads a start short of a frame in rather than wait for the
    model's next chunk); with ``read``, to when this process had read the chunk rather than when it arrived."""
    return _ms((v.speech_read_at if read else v.speech_at) + (v.lead_in if lead_in else 0.0) - t.model_audio_at
               for t in run.turns if t.model_audio_at is not None for v in t.views)


def to_tick(run: Run) -> list[float]:
    return _ms(v.speech_tick - (t.model_audio_at + run.wall_offset) for t in run.turns
               if t.model_audio_at is not None for v in t.views)


# A run of zero samples this long inside speech is a gap in the word (a word's own waveform crosses zero for a
# sample or two, never for 6 ms; the test server's voice has no silence inside its answers).
GAP_SAMPLES = 100


def _has_gap(opening: list[bytes]) -> bool:
    samples = np.frombuffer(b"".join(opening), dtype="<i2")
    voiced = np.flatnonzero(samples)
    if not len(voiced):
        return False
    zero = np.concatenate([[0], samples[voiced[0]:voiced[-1] + 1] == 0, [0]]).astype(np.int8)
    edges = np.diff(zero)
    return bool(((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)) >= GAP_SAMPLES).any())


def gaps(run: Run) -> str:
    """Answers whose opening (the first OPENING_CHUNKS chunks from the first speech, up to an interrupt) has
    silence inside the speech: the renderer ran short of samples mid-word."""
    views = [v for t in run.turns for v in t.views if v.opening]
    return f"{sum(_has_gap(v.opening) for v in views)} of {len(views)}"


def lead_ins(run: Run) -> list[float]:
    return _ms(v.lead_in for t in run.turns for v in t.views)


def tick_to_client(run: Run) -> list[float]:
    return _ms(v.speech_at + run.wall_offset - v.speech_tick for t in run.turns for v in t.views)


def daemon_stage(run: Run, name: str) -> list[float]:
    """A stage the daemon reports in its `latency` event (one per turn: client 1's copy)."""
    return [t.views[0].latency[name] for t in run.turns if t.views[0].latency and name in t.views[0].latency]


def _staged(run: Run) -> list[Turn]:
    """The turns whose model audio and daemon stages are known (the stage figures need both)."""
    return [t for t in run.turns if t.model_audio_at is not None and t.views[0].latency]


def _into_daemon_ms(run: Run, turn: Turn) -> float:
    """Model audio sent -> the daemon's trio side has it (TLS, the SDK's parsing, the asyncio bridge): the wait
    for the tick minus the daemon's own audio -> frame."""
    view = turn.views[0]
    return 1000 * (view.speech_tick - (turn.model_audio_at + run.wall_offset)) - view.latency["audio_to_frame_ms"]


def to_daemon(run: Run) -> list[float]:
    return [_into_daemon_ms(run, t) for t in _staged(run)]


def slowest_turns(run: Run, count: int) -> list[str]:
    """(a)'s slowest turns, each split into its stages, so that a tail can be pinned on one of them."""
    lines = []
    for t in sorted(_staged(run), key=lambda t: -max(v.speech_at - t.model_audio_at for v in t.views))[:count]:
        stages = t.views[0].latency
        clients = " / ".join(f"{1000 * (v.speech_at + run.wall_offset - v.speech_tick):.1f}" for v in t.views)
        phase = 1000 * (t.model_audio_at + run.wall_offset - t.views[0].idle_tick)
        lines.append(f"  {max(1000 * (v.speech_at - t.model_audio_at) for v in t.views):5.1f} ms = into the daemon "
                     f"{_into_daemon_ms(run, t):.1f} + whole frame queued {stages['audio_to_queued_ms']:.1f} + to its "
                     f"tick {stages['queued_to_frame_ms']:.1f} + tick -> clients {clients} (audio sent "
                     f"{phase:.1f} ms after an idle tick)")
    return lines


def end_to_end(run: Run) -> list[float]:
    return _ms(v.speech_at - t.sent_at for t in run.turns for v in t.views)


def _origin(run: Run, turn: Turn, view: View) -> float:
    """The interrupt's time zero on the perf clock: sent, or (avatarctl) the daemon's event timestamp."""
    return turn.t0 if turn.t0 is not None else view.status_stamp - run.wall_offset


def to_silence(run: Run, method: str | None = None, read: bool = False) -> list[float]:
    """(b): interrupt -> `interrupted` arrived and the next audio chunk arrived (silent), per client; with ``read``,
    until this process had read both."""
    return _ms((max(v.status_read_at, v.after_status_read_at) if read else max(v.status_at, v.after_status_at))
               - _origin(run, t, v) for t in run.turns if method in (None, t.method) for v in t.views)


def to_status(run: Run, method: str | None = None) -> list[float]:
    return _ms(v.status_at - _origin(run, t, v) for t in run.turns if method in (None, t.method) for v in t.views)


def to_first_silent(run: Run) -> list[float]:
    return _ms(v.silent_at - _origin(run, t, v) for t in run.turns for v in t.views if v.silent_at is not None)


def leaks(run: Run) -> tuple[int, int]:
    """(non-silent chunks after `interrupted`, first chunks after it that were not silent)."""
    views = [v for t in run.turns for v in t.views]
    return sum(v.leaks for v in views), sum(not v.after_status_silent for v in views)


def histogram(run: Run, name: str) -> str:
    found = run.histograms.get(f"avatard_latency_{name}_seconds")
    return found.summary_ms() if found is not None else "not exported"


def verdict(values_ms: list[float], goal_ms: float = GOAL_MS) -> str:
    return "ok" if values_ms and c.percentile(values_ms, 95) <= goal_ms else "MISS"


SPEAKER_SENTENCE = ("This is a long sentence that keeps going and going, so that there is plenty of time "
                    "to interrupt it somewhere in the middle of a word. ") * 2
SPEAKER_GOAL_MS = 10.0  # beyond the device latency
SPEAKER_FLOWING_BLOCKS = 200  # 2 s of 10 ms blocks: PulseAudio's stream has settled


def run_speaker(turns: int) -> tuple[list[float], list[float], float | None]:
    """Per turn (ms): interrupt -> next block taken by the card, and interrupt -> that block at the DAC
    (PortAudio's own times: when the speaker falls silent); and the device latency PortAudio reports (ms)."""
    import localenv  # tests/, on the path through _gemini

    pulse, xvfb = localenv.Pulse(), localenv.Xvfb()
    saved = dict(os.environ)
    os.environ.update({**pulse.env, **xvfb.env()})
    try:
        with c.Daemon.start() as daemon:
            deadline = time.monotonic() + TURN_TIMEOUT
            while daemon.status()["local_io"]["speaker"]["blocks_played"] < SPEAKER_FLOWING_BLOCKS:
                if time.monotonic() > deadline:
                    raise RuntimeError("the speaker did not start playing")
                time.sleep(0.05)
            speaker = {}
            for _ in range(turns):
                if daemon.request("say", text=SPEAKER_SENTENCE).get("ok") is not True:
                    raise RuntimeError("say refused")
                deadline = time.monotonic() + TURN_TIMEOUT
                while not daemon.status().get("speaking"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the local daemon did not start speaking")
                    time.sleep(0.01)
                time.sleep(random.uniform(0.2, 0.6))
                daemon.request("interrupt")
                time.sleep(0.2)
                speaker = daemon.status()["local_io"]["speaker"]
            blocks, leads = speaker["interrupt_to_block_ms"][-turns:], speaker["interrupt_block_lead_ms"][-turns:]
            return blocks, [b + lead for b, lead in zip(blocks, leads) if lead is not None], speaker["latency_ms"]
    finally:
        os.environ.clear()
        os.environ.update(saved)
        xvfb.close()
        pulse.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300,
                        help="counted turns per brain (300: a p95 over 900 arrivals; 30 runs vary by +-3 ms on a busy box)")
    parser.add_argument("--clients", type=int, default=3, help="WebSocket clients reading everything")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted turns first (cold caches, first resampler)")
    parser.add_argument("--server-in-process", action="store_true",
                        help="run the Live test server in a thread of this process (default: a child process)")
    parser.add_argument("--no-local", action="store_true", help="skip the offline-brain baseline")
    parser.add_argument("--speaker-turns", type=int, default=20,
                        help="interrupts of a local-mode daemon's speaker (PulseAudio + Xvfb); 0 skips them")
    parser.add_argument("--paced-turns", type=int, default=60,
                        help="turns against a test server speaking in real time (40 ms chunks 40 ms apart); 0 skips")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    if not 3 <= args.turns <= 1000 or not 1 <= args.clients <= 50 or not 0 <= args.warmup <= 20:
        parser.error("--turns must be 3..1000, --clients 1..50, --warmup 0..20")

    print(f"machine: {c.machine()}\nload average before: {c.loadavg()}")
    print(f"{args.turns} turns (+{args.warmup} warm-up) per brain, {args.clients} WebSocket clients, interrupts "
          f"rotating {'/'.join(METHODS)}; goal p95 <= {GOAL_MS:g} ms for (a) and (b)\n")
    where = "in this process" if args.server_in_process else "in a child process"
    print(f"  running: Gemini brain, Live test server ({where}) answering instantly ...", flush=True)
    gem = run_gemini(args.clients, args.turns, args.warmup, args.server_in_process)
    runs = [gem]
    paced = None
    if args.paced_turns:
        print("  running: Gemini brain, Live test server speaking in real time ...", flush=True)
        paced = run_gemini(args.clients, args.paced_turns, args.warmup, args.server_in_process, realtime=True)
    if not args.no_local:
        print("  running: offline brain (baseline) ...", flush=True)
        runs.append(run_local(args.clients, args.turns, args.warmup))
    local = runs[1] if len(runs) > 1 else None
    speaker_ms, silent_ms, device_ms = [], [], None
    if args.speaker_turns:
        print("  running: local mode, speaker on a private PulseAudio ...", flush=True)
        speaker_ms, silent_ms, device_ms = run_speaker(args.speaker_turns)

    def both(fn, *fn_args) -> list[str]:
        return [fn(gem, *fn_args), fn(local, *fn_args) if local is not None else "-"]

    rows = [
        ["(a) model audio sent -> first speech chunk at client", stats(speech_out(gem)), "n/a (no model audio)"],
        ["    ... read by the bench (arrival above: the kernel's receive stamp)", stats(speech_out(gem, read=True)), "-"],
        ["    ... -> its first speech sample (the chunk + silence leading it in)", stats(speech_out(gem, lead_in=True)), "-"],
        [f"    openings with >= {GAP_SAMPLES} silent samples inside the speech (a gap in a word)", gaps(gem), "-"],
        ["    of which: audio sent -> its renderer tick", stats(to_tick(gem)), "-"],
        ["      stage: audio sent -> in the daemon (TLS, SDK parse, bridge)", stats(to_daemon(gem)), "-"],
        ["      stage: first audio -> a whole frame queued (resampler, next chunk)",
         stats(daemon_stage(gem, "audio_to_queued_ms")), "-"],
        ["      stage: whole frame queued -> its tick (re-phase, min gap)",
         *both(lambda r: stats(daemon_stage(r, "queued_to_frame_ms")))],
        ["    of which: tick -> chunk at client", *both(lambda r: stats(tick_to_client(r)))],
        ["text_input sent -> first speech chunk (end to end)", *both(lambda r: stats(end_to_end(r)))],
        ["daemon: audio_to_frame histogram", *both(histogram, "audio_to_frame")],
        ["daemon: input_to_audio histogram", *both(histogram, "input_to_audio")],
        ["(b) interrupt -> interrupted + silent chunk, all", *both(lambda r: stats(to_silence(r)))],
        *[[f"    via {m}", *both(lambda r, m=m: stats(to_silence(r, m)))] for m in METHODS],
        ["    ... read by the bench", *both(lambda r: stats(to_silence(r, read=True)))],
        ["    interrupt -> `interrupted` status only", *both(lambda r: stats(to_status(r)))],
        ["    interrupt -> first silent chunk (any order)", *both(lambda r: stats(to_first_silent(r)))],
        ["daemon: interrupt_to_silence histogram", *both(histogram, "interrupt_to_silence")],
        ["speech after `interrupted` (chunks / first-chunk misses)", *both(lambda r: "%d / %d" % leaks(r))],
        ["avatarctl interrupt process, spawn to exit",
         *both(lambda r: stats(_ms(t.ctl_seconds for t in r.turns if t.ctl_seconds is not None)))],
    ]
    print()
    c.print_table(["measure", "gemini (test server, instant)", "offline brain (baseline)"], rows)
    if paced is not None:
        print(f"\nthe same, {args.paced_turns} turns against a Live test server speaking in real time (a start short of "
              "a frame: the model's next chunk is 40 ms away)")
        c.print_table(["measure", "gemini (test server, real time)"], [
            ["(a) model audio sent -> first speech chunk at client", stats(speech_out(paced))],
            ["    stage: first audio -> its frame may go (a whole frame, or the lead-in's wait)",
             stats(daemon_stage(paced, "audio_to_queued_ms"))],
            ["    silence leading the first speech chunk in", stats(lead_ins(paced))],
            ["model audio sent -> first speech sample at client (chunk + lead-in)", stats(speech_out(paced, lead_in=True))],
            [f"openings with >= {GAP_SAMPLES} silent samples inside the speech (a gap in a word)", gaps(paced)],
        ])
    print("\n" + "; ".join(f"{r.brain}: rendered {r.status['frames_rendered']}, dropped {r.status['frames_dropped']}, "
                          f"ticks skipped {r.status['ticks_skipped']}, idle pictures reused "
                          f"{r.status.get('pictures_reused', '-')}, reconnects {r.status['reconnects']}" for r in runs))
    print(f"load average after: {c.loadavg()}. (a) goal: {verdict(speech_out(gem))}; "
          f"(b) goal: {verdict(to_silence(gem))}"
          + (f"; offline text -> speech goal: {verdict(end_to_end(local), OFFLINE_TEXT_GOAL_MS)}" if local else ""))
    print("(avatarctl rows: timed from the daemon's `interrupted` event timestamp, see the docstring)")
    print("(a)'s slowest turns (the last client's time), by stage in ms:", *slowest_turns(gem, SLOWEST_SHOWN), sep="\n")
    if speaker_ms:
        print(f"local speaker: interrupt -> next block taken by the card {stats(speaker_ms)}, then the device's "
              f"{device_ms:g} ms; goal <= device + {SPEAKER_GOAL_MS:g} ms: "
              f"{verdict(speaker_ms, SPEAKER_GOAL_MS)}\n  silent at the DAC (that block's time there, PortAudio's "
              f"clock): {stats(silent_ms)}")

    if args.no_readme:
        return
    a_leaks = leaks(gem)
    figures = [
        ("latency: model audio -> speech out (a)",
         f"{stats(speech_out(gem))} at the client's socket (read by the bench: p95 "
         f"{c.percentile(speech_out(gem, read=True), 95):.1f} ms); of which wait for the tick p50 {c.percentile(to_tick(gem), 50):.0f} / "
         f"p95 {c.percentile(to_tick(gem), 95):.0f} ms, tick -> client p50 {c.percentile(tick_to_client(gem), 50):.0f} / "
         f"p95 {c.percentile(tick_to_client(gem), 95):.0f} ms; stages p50/p95: into the daemon "
         f"{c.percentile(to_daemon(gem), 50):.1f}/{c.percentile(to_daemon(gem), 95):.1f}, whole frame queued "
         f"{c.percentile(daemon_stage(gem, 'audio_to_queued_ms'), 50):.1f}/{c.percentile(daemon_stage(gem, 'audio_to_queued_ms'), 95):.1f}, "
         f"queued -> tick {c.percentile(daemon_stage(gem, 'queued_to_frame_ms'), 50):.1f}/"
         f"{c.percentile(daemon_stage(gem, 'queued_to_frame_ms'), 95):.1f} ms; daemon histogram audio_to_frame "
         f"{histogram(gem, 'audio_to_frame')}; openings with a gap in a word: {gaps(gem)}",
         f"p95 <= {GOAL_MS:g} ms"),
        ("latency: text -> first speech, end to end",
         f"Gemini (instant test server) {stats(end_to_end(gem))}"
         + (f"; offline brain (espeak) {stats(end_to_end(local))}" if local else ""),
         f"offline p95 <= {OFFLINE_TEXT_GOAL_MS:g} ms"),
        ("latency: interrupt -> silence on every client (b)",
         f"{stats(to_silence(gem))} (read by the bench: p95 {c.percentile(to_silence(gem, read=True), 95):.1f} ms) "
         f"[ws {c.percentile(to_silence(gem, 'ws'), 95):.0f} / control "
         f"{c.percentile(to_silence(gem, 'control'), 95):.0f} / avatarctl {c.percentile(to_silence(gem, 'avatarctl'), 95):.0f}"
         f" ms p95]; speech after `interrupted`: {a_leaks[0]} chunks; daemon histogram interrupt_to_silence "
         f"{histogram(gem, 'interrupt_to_silence')}"
         + (f"; offline brain {stats(to_silence(local))}" if local else ""), f"p95 <= {GOAL_MS:g} ms, no speech after"),
    ]
    if paced is not None:
        figures.append(("latency: a model speaking in real time -> speech out",
                        f"first speech chunk {stats(speech_out(paced))}; its first speech sample (after the lead-in, "
                        f"p50 {c.percentile(lead_ins(paced), 50):.1f} ms) {stats(speech_out(paced, lead_in=True))}; "
                        f"openings with a gap in a word: {gaps(paced)}",
                        "- (before the lead-in: chunk p50 44.5 / p95 46.8 ms, no lead-in)"))
    if speaker_ms:
        figures.append(("latency: interrupt -> local speaker silent",
                        f"next block taken by the card {stats(speaker_ms)}, then the device latency {device_ms:g} ms "
                        f"(PulseAudio null sink); silent at the DAC {stats(silent_ms)}", f"device latency + {SPEAKER_GOAL_MS:g} ms"))
    c.update_readme("latency", figures)


if __name__ == "__main__":
    c.run_main(main)

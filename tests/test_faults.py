"""Faults from outside, against the real daemon: a flaky Gemini link, hostile browsers, a flooded control socket,
SIGTERM at awkward moments.

What "every turn answered once" means here (test_gemini_cut_at_random_points). The Live API does not acknowledge
a client turn, so when a connection dies the daemon cannot know whether the model saw the turn it just sent. If it
sent the turn again on the next connection, a model that had seen it would answer twice; so a turn is sent once,
and the rules are:

- a *probe* turn, asked after the daemon has noticed the cut (while it reconnects, or once it has): exactly one
  final assistant transcription contains its text, and it is the whole reply (``You said: <turn>``, no
  ``interrupted``); the server received it exactly once and answered it completely;
- a *victim* turn, whose answer was in flight when the link was cut: at most one final assistant transcription
  contains its text (a cut answer is closed by one final marked ``interrupted: true``, never followed by a second
  answer); the server received it at most once. Zero finals is allowed: the cut may come before the model said a
  word (a tool call, the first audio chunk);
- nothing else: every final assistant transcription belongs to one of the turns asked;
- after each cut the brain reports ``connected`` again.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time

import numpy as np
import pytest
import trio
from fuzzing import EVENT_KINDS, FrameWatcher
from gemini_live_server import GeminiLiveTestServer
from wsclient import Client, open_client

from avatard.core.frame_clock import MIN_GAP_FRACTION

SEED = 20261126  # the "random" cut points are the same on every run
CUTS = 20
GEMINI_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
ANSWER_TIMEOUT = 30.0  # backoff after a few rejected setups is a few seconds; far longer means a lost turn


def gemini_args(server, *extra):
    return ("--gemini-api-key", "test-key", "--gemini-base-url", server.base_url, "--gemini-ca-file", server.ca_path,
            "--server", "--host", "127.0.0.1", "--port", "0", *extra)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.02)
    raise TimeoutError(f"{what} within {timeout} s")


class EventLog:
    """Every event of one control-socket subscription, read by a thread so none is dropped while the test waits."""

    def __init__(self, daemon, kinds) -> None:
        self._client = daemon.control(timeout=None)
        assert self._client.request("subscribe", events=list(kinds))["ok"]
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                event = self._client.read()
            except (OSError, ValueError, ConnectionError):
                return
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, predicate, timeout: float, since: int = 0, what: str = "event") -> dict:
        return self.events[self.wait_index(predicate, timeout, since, what)]

    def wait_index(self, predicate, timeout: float, since: int = 0, what: str = "event") -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(since, len(self.events)):
                    if predicate(self.events[index]):
                        return index
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what} within {timeout} s; last events: {self.events[-6:]}")
                self._cond.wait(remaining)

    def close(self) -> None:
        try:
            self._client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(2)
        self._client.close()


def describe(events) -> list[str]:
    """Events, short, for an assertion message."""
    out = []
    for e in events:
        if e.get("event") == "transcription":
            out.append(f"{e['role']}{' final' if e['is_final'] else ''}{' interrupted' if e.get('interrupted') else ''}"
                       f": {e['text']}")
        else:
            out.append(f"{e.get('event')}: {e.get('status', '')} {e.get('source', '')}".strip())
    return out


def describe_server(live) -> list[str]:
    """Per Live connection: how it ended and the turns it received."""
    return [f"{s.id} resumed={s.resumed} {s.closed_by} {s.close_code}: "
            + " | ".join(p["text"] for m in s.received[1:] for t in (m.get("client_content") or {}).get("turns", [])
                         for p in t.get("parts", []) if "text" in p) for s in live.sessions]


def is_final_answer(event) -> bool:
    return event.get("event") == "transcription" and event.get("role") == "assistant" and event.get("is_final")


def is_partial_answer(event) -> bool:
    return event.get("event") == "transcription" and event.get("role") == "assistant" and not event.get("is_final")


# -- the Gemini link cut at random points ---------------------------------------------------------------------------

class Cutter:
    """The ways to cut the Live connection; each returns the victim turn it put in flight, or None."""

    def __init__(self, live: GeminiLiveTestServer, ask, log: EventLog, rng: random.Random) -> None:
        self.live, self.ask, self.log, self.rng = live, ask, log, rng

    def _victim_speaking(self, text: str) -> None:
        mark = self.log.mark()
        self.ask(text)
        self.log.wait_for(is_partial_answer, 15, mark, "assistant partial transcript of the victim")
        time.sleep(self.rng.uniform(0.0, 0.4))  # somewhere in its ~1.5 s answer

    def setup_rejected(self, i: int) -> None:
        """Mid-setup: the next 1-2 connections are closed with 1011 right after their setup message."""
        self.live.reject_next_setups(self.rng.randint(1, 2))
        self.live.drop_connections()

    def dropped_after_setup(self, i: int) -> None:
        """Mid-setup: the next connection is dropped right after setupComplete."""
        self.live.drop_after(1)
        self.live.drop_connections()

    def dropped_mid_answer(self, i: int) -> str:
        victim = f"story {i:02d} with a long and winding middle part that goes on for quite a while"
        self._victim_speaking(victim)
        self.live.drop_connections()
        return victim

    def dropped_after_n_messages(self, i: int) -> str:
        """Mid-answer at a message count: the n-th message of the answer is the last one sent."""
        victim = f"story {i:02d} that is cut after a few chunks of audio and transcript"
        self.live.drop_after(self.rng.randint(1, 15))
        self.ask(victim)
        return victim

    def dropped_mid_tool_call(self, i: int) -> str:
        """The server calls trigger_gesture for "wave" turns: the toolCall is the last message sent."""
        victim = f"wave {i:02d} at me please, then tell me something"
        self.live.drop_after(1)
        self.ask(victim)
        return victim

    def go_away(self, i: int) -> str | None:
        if self.rng.random() < 0.3:  # sometimes while idle
            self.live.send_go_away("1s")
            return None
        victim = f"story {i:02d} which a goAway interrupts before it can end properly"
        self._victim_speaking(victim)
        self.live.send_go_away("1s")
        return victim

    def closed_1011(self, i: int) -> str:
        victim = f"story {i:02d} that the server gives up on with an internal error"
        self._victim_speaking(victim)
        self.live.close_connections(1011, "Internal error occurred.")
        return victim

    KINDS = ("setup_rejected", "dropped_after_setup", "dropped_mid_answer", "dropped_after_n_messages",
             "dropped_mid_tool_call", "go_away", "closed_1011")


@pytest.fixture
def live():
    # 15 ms per character: a probe's answer lasts ~0.5 s, a victim's ~1.5 s (long enough to cut in the middle).
    with GeminiLiveTestServer(ms_per_char=15) as server:
        yield server


def test_gemini_cut_at_random_points(live, daemon_factory):
    daemon = daemon_factory(*gemini_args(live), env=GEMINI_ENV)
    wait_until(lambda: daemon.status()["brain_state"] == "connected", 15, "brain connected")
    log = EventLog(daemon, ["transcription", "status", "gesture"])
    asker = daemon.control()

    def ask(text: str) -> None:
        assert asker.request("ask", text=text) == {"ok": True}

    def barrier() -> int:
        """The log index after a gesture event requested now: whatever the daemon published before (a cut answer's
        final, say) is ahead of it, since one subscriber's events arrive in order. Marking the log's length
        instead would race with events still on their way through the socket."""
        mark = log.mark()
        assert asker.request("gesture", name="nod_agree")["ok"]
        return 1 + log.wait_index(lambda e: e.get("event") == "gesture" and e.get("source") == "avatarctl", 10,
                                  mark, "the barrier gesture")

    def answered(text: str, since: int) -> dict:
        return log.wait_for(lambda e: is_final_answer(e) and text in e["text"], ANSWER_TIMEOUT, since,
                            f"final answer to {text!r}")

    def server_saw(text: str) -> bool:
        return any(e["text"] == text for conv in live.conversations.values() for e in conv)

    rng = random.Random(SEED)
    plan = [Cutter.KINDS[i % len(Cutter.KINDS)] for i in range(CUTS)]
    rng.shuffle(plan)
    cutter = Cutter(live, ask, log, rng)
    # (turn or None, "probe"/"victim", first event index of its window): the finals published between one
    # window's start and the next belong to that turn. A cut answer's final is published before the daemon counts
    # the reconnect (same task, no checkpoint between), and the probe's window starts at a barrier after that.
    windows = []

    first = "question 00 before any cut"  # also earns a resumption handle
    windows.append((first, "probe", barrier()))
    ask(first)
    answered(first, windows[-1][2])
    for i, kind in enumerate(plan, 1):
        live.wait_for(lambda: server_saw(windows[-1][0]), 10)  # the last answer is complete: the server is idle
        reconnects = daemon.status()["reconnects"]
        windows.append((None, "victim", barrier()))
        victim = getattr(cutter, kind)(i)
        windows[-1] = (victim, "victim", windows[-1][2])
        # A drop after setup costs two connections: the one cut now and the next, dropped after its setupComplete.
        # The probe waits for both: a turn written to the second in the instant the server closes it is lost (it
        # leaves the outbox once written; keeping turns until the server acknowledges them is not built yet).
        lost = 2 if kind == "dropped_after_setup" else 1
        wait_until(lambda: daemon.status()["reconnects"] >= reconnects + lost, 15, f"the daemon noticing the {kind} cut")
        probe = f"question {i:02d} after the {kind.replace('_', ' ')} cut"
        windows.append((probe, "probe", barrier()))
        ask(probe)
        final = answered(probe, windows[-1][2])
        assert final["text"] == f"You said: {probe}" and not final.get("interrupted"), (kind, final)
        wait_until(lambda: daemon.status()["brain_state"] == "connected", 15, f"brain connected after {kind}")

    live.wait_for(lambda: server_saw(windows[-1][0]), 10)
    time.sleep(0.5)  # a late second answer would show now
    log.close()
    asker.close()
    assert not [e for e in log.events[:windows[0][2]] if is_final_answer(e)]
    bounds = [w[2] for w in windows[1:]] + [len(log.events)]
    for (turn, role, start), end in zip(windows, bounds):
        finals = [e for e in log.events[start:end] if is_final_answer(e)]
        if role == "probe":
            assert len(finals) == 1, (turn, describe(log.events[start:end]), describe_server(live))
            assert finals[0]["text"] == f"You said: {turn}" and not finals[0].get("interrupted"), (turn, finals)
        elif turn is None:
            assert finals == [], ("a cut with no turn in flight", finals)
        else:
            assert len(finals) <= 1, (turn, finals)
            if finals:
                reply = f"You said: {turn}"
                if finals[0].get("interrupted"):
                    assert reply.startswith(finals[0]["text"]), (turn, finals)
                else:
                    assert finals[0]["text"] == reply, (turn, finals)
    probes = [turn for turn, role, _ in windows if role == "probe"]
    victims = [turn for turn, role, _ in windows if role == "victim" and turn]

    # The server's side: each turn arrived once; every probe got one complete answer.
    entries = [e for conv in live.conversations.values() for e in conv]
    received = [e["text"] for e in entries if e["role"] == "user"]
    for probe in probes:
        assert received.count(probe) == 1, (probe, describe_server(live))
        answer = entries[entries.index(next(e for e in entries if e["role"] == "user" and e["text"] == probe)) + 1]
        assert answer["status"] == "complete", (probe, answer)
    for victim in victims:
        assert received.count(victim) <= 1, (victim, describe_server(live))
    assert daemon.status()["brain_state"] == "connected"
    assert live.connections > CUTS, "every cut made the daemon reconnect"


def test_a_turn_queued_behind_a_tool_call_is_sent_once(daemon_factory):
    """Found by the cut test: the sender took the outbox's front item *after* sending, and a tool response put in
    front of the turn meanwhile (a "wave" turn's toolCall answered while the next turn was being sent) was
    dropped instead, and the turn sent again: ~3 in 10 such pairs were answered twice on a healthy link."""
    with GeminiLiveTestServer(ms_per_char=5) as live:
        # A generation whose calls block the answer until the response arrives (3.8's NON_BLOCKING calls do not).
        daemon = daemon_factory(*gemini_args(live, "--gemini-model", "gemini-2.5-flash-native-audio-preview-12-2025"),
                                env=GEMINI_ENV)
        wait_until(lambda: daemon.status()["brain_state"] == "connected", 15, "brain connected")
        asker = daemon.control()

        def users() -> list[str]:
            return [e["text"] for conv in live.conversations.values() for e in conv if e["role"] == "user"]

        for i in range(20):
            assert asker.request("ask", text=f"wave {i:02d}") == {"ok": True}
            assert asker.request("ask", text=f"and then question {i:02d}") == {"ok": True}
            live.wait_for(lambda: f"and then question {i:02d}" in users(), 15)
        time.sleep(0.3)
        received = users()
        assert all(received.count(text) == 1 for text in received), describe_server(live)


def test_brain_state_leaves_connected_as_soon_as_the_link_is_cut(live, daemon_factory):
    daemon = daemon_factory(*gemini_args(live), env=GEMINI_ENV)
    wait_until(lambda: daemon.status()["brain_state"] == "connected", 15, "brain connected")
    live.reject_next_setups(5)  # at least 7 s of backoff before the next session: no legitimate "connected"
    live.drop_connections()
    status = wait_until(lambda: (s := daemon.status())["reconnects"] >= 1 and s, 10, "the daemon noticing the drop")
    assert status["brain_state"] != "connected", status


# -- hostile browsers -------------------------------------------------------------------------------------------------

HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {base64.b64encode(b'0123456789abcdef').decode()}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode()
FPS = 25


async def raw_socket(port: int, rcvbuf: int | None = None) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    await sock.connect(("127.0.0.1", port))
    return sock


def abort(sock) -> None:
    """Close with a TCP RST instead of a FIN, as a crashing browser tab or a pulled cable would look."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def masked_frame_header(opcode: int, length: int) -> bytes:
    """A client frame header announcing ``length`` payload bytes (masked, as clients must)."""
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + os.urandom(4)


async def stalled_reader(port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Handshake, then never read: with a 4 KiB receive window the daemon's sends to it stall within a frame."""
    sock = await raw_socket(port, rcvbuf=4096)
    try:
        await sock.send(HANDSHAKE)
        task_status.started()
        await trio.sleep_forever()
    finally:
        sock.close()


async def flooder(port: int, seconds: float, stats: dict) -> None:
    """Binary audio as fast as the daemon takes it for ``seconds``, and a text turn every second; it reads what it
    is sent. The audio is quiet noise (-49 dBFS, under the offline brain's voice gate): loud audio would be echoed
    back 20 s at a time, fill the brain's queue and throttle the flood to the speed of speech (by design), which
    is not what this client is for."""
    rng = np.random.default_rng(1)
    chunks = [rng.integers(-200, 200, 640, dtype=np.int16).astype("<i2").tobytes() for _ in range(8)]
    async with open_client(port) as ws:
        async def drain():
            while True:
                await ws.get_message()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            end = trio.current_time() + seconds
            next_text = trio.current_time()
            while trio.current_time() < end:
                if trio.current_time() >= next_text:
                    await ws.send_message(json.dumps({"type": "text_input", "data": {"text": f"flood {stats['texts']}"}}))
                    stats["texts"] += 1
                    next_text += 1.0
                await ws.send_message(chunks[stats["chunks"] % len(chunks)])
                stats["chunks"] += 1
            stats["finished"] = True
            # Stay connected until the test ends: a client closing while the daemon's 5 s ping is on its way
            # trips trio-websocket's own bug (a Pong sent in LOCAL_CLOSING, python-trio/trio-websocket#184),
            # and this client's 5 s flood would line its close up with a ping.
            await trio.sleep_forever()


async def quitters(port: int, stats: dict) -> None:
    """Over and over: clients that vanish mid-frame, in both directions, and one that never finishes its request."""
    rng = random.Random(SEED)
    while True:
        variant = stats["quits"] % 3
        sock = await raw_socket(port)
        try:
            if variant == 2:
                await sock.send(HANDSHAKE[: rng.randint(1, len(HANDSHAKE) - 5)])  # half a request head
            else:
                await sock.send(HANDSHAKE)
                want = rng.randint(300, 60_000)  # the 101 response, then part of some frame
                got = 0
                with trio.move_on_after(2):
                    while got < want:
                        data = await sock.recv(min(65536, want - got))
                        if not data:
                            break
                        got += len(data)
                if variant == 1:  # and half a frame of our own
                    await sock.send(masked_frame_header(0x2, 1000) + os.urandom(rng.randint(0, 999)))
            await trio.sleep(rng.uniform(0, 0.05))
        finally:
            abort(sock)
        stats["quits"] += 1
        await trio.sleep(0.1)


def assert_smooth(stamps: list[float], seconds: float, max_gap: int, share: float = 0.95) -> None:
    periods = np.diff(stamps) * FPS
    # A step is whole periods, or ends early by a fraction where the clock re-phased (an interrupt, a
    # speech start): at once after a regular tick, never below its minimum gap after a re-phased one, so
    # no two steps in a row are that short.
    short = periods < MIN_GAP_FRACTION - 0.01
    assert (periods > 0).all() and not (short[1:] & short[:-1]).any(), f"steps {sorted(periods)[:3]} periods"
    gaps = np.maximum(np.floor(periods + 0.05).astype(int), 1) - 1
    assert len(stamps) >= share * FPS * seconds, f"{len(stamps)} frames in {seconds:.1f} s"
    assert gaps.max() <= max_gap, f"gaps {sorted(gaps)[-5:]} frames"


async def test_hostile_browsers_do_not_disturb_a_healthy_one(daemon_factory):
    """For 8 s: two clients that stopped reading, one flooding audio and text for 5 s, and a stream of clients that
    vanish mid-frame. A healthy client gets >= 95 % of the frames with no run of more than 3 missing; the stalled
    ones are disconnected as too slow; the renderer never skipped a tick. (All from one address, so the per-address
    cap is raised: what is measured here is the fan-out, not the cap, which tests/test_security.py covers.)"""
    daemon = daemon_factory("--max-clients-per-ip", "10")
    port = daemon.port
    stats = {"chunks": 0, "texts": 0, "quits": 0, "finished": False}
    clients = EventLog(daemon, ["client"])
    async with open_client(port) as ws:
        healthy = Client(ws)
        await healthy.json_of("status", status="connected")
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                await nursery.start(stalled_reader, port)
            nursery.start_soon(flooder, port, 5.0, stats)
            nursery.start_soon(quitters, port, stats)
            healthy.video.clear()
            started = trio.current_time()
            with trio.move_on_after(8.0):
                while True:
                    await healthy.receive()
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert_smooth([f.timestamp for f in healthy.video], elapsed, max_gap=3)
        assert stats["finished"] and stats["chunks"] > 1000 and stats["texts"] >= 5, stats
        assert stats["quits"] >= 10, stats
        # Still a working connection: it is answered.
        await healthy.send_json({"type": "control", "data": {"command": "subscribe", "params": {}}})
        await healthy.json_of("status", status="subscribed")
    assert daemon.proc.poll() is None
    status = daemon.status()
    assert status["ticks_skipped"] == 0 and status["frames_dropped"] == 0, status
    clients.close()
    too_slow = [e for e in clients.events if e.get("action") == "left" and e.get("too_slow")]
    assert len(too_slow) == 2, f"the two stalled readers are disconnected as too slow: {too_slow}"


# -- a flooded control socket -----------------------------------------------------------------------------------------

def control_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def garbage_writer(path: str, kind: str, stop: threading.Event, counts: dict) -> None:
    """Writes junk without ever reading; reconnects whenever the daemon hangs up on it (or our send times out).

    The megabyte and the error storm get error replies they never read, so the daemon holds those connections
    blocked in a send until its 5 s send timeout, while ``status`` must still be answered.
    """
    rng = random.Random(kind)
    while not stop.is_set():
        try:
            with control_socket(path) as sock:
                sock.settimeout(0.5)
                if kind == "megabyte":
                    sock.sendall(rng.randbytes(1 << 20))
                while not stop.is_set():
                    if kind == "endless line":
                        sock.sendall(b"x" * 4096)
                    elif kind == "error storm":  # 3 bytes in, a ~60-byte error out: fills the daemon's side
                        sock.sendall(b"{}\n" * 1365)
                    elif kind == "hit and run":  # subscribe and hang up at once, while events are being sent
                        break
                    else:
                        sock.sendall(rng.randbytes(rng.randint(1, 4096)))
                    counts[kind] = counts.get(kind, 0) + 1
                if kind == "hit and run":
                    sock.sendall(b'{"cmd": "subscribe"}\n')
                    time.sleep(rng.uniform(0, 0.02))
                    counts[kind] = counts.get(kind, 0) + 1
        except (OSError, socket.timeout):
            counts[f"{kind} hung up on"] = counts.get(f"{kind} hung up on", 0) + 1
            time.sleep(0.05)


def event_spammer(path: str, stop: threading.Event, counts: dict) -> None:
    """~2000 gesture requests a second (replies read): an event stream that fills a non-reading subscriber's
    socket buffer (~200 kB) within a second or two. Frame events alone would take half a minute."""
    with control_socket(path) as sock:
        reader = sock.makefile("rb")
        while not stop.is_set():
            sock.sendall(b'{"cmd": "gesture", "name": "nod_agree"}\n' * 50)
            for _ in range(50):
                reader.readline()
            counts["gestures"] = counts.get("gestures", 0) + 50
            time.sleep(0.025)


def hung_up(sock: socket.socket, timeout: float) -> bool:
    """Whether the daemon closed this connection: read what it had sent until EOF."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 16):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def test_flooded_control_socket_still_answers(daemon):
    """50 subscribers to every event (frames included) that never read, hit-and-run subscribers, garbage writers
    and an event storm: ``avatarctl status`` answers in < 1 s every time, frames keep flowing, and the stuck
    subscribers are dropped after the send timeout (which once raised TooSlowError inside a nursery and killed
    the daemon)."""
    path = daemon.socket
    watcher = FrameWatcher(daemon.port)
    subscribers = []
    subscribe = json.dumps({"cmd": "subscribe", "events": list(EVENT_KINDS)}).encode() + b"\n"
    for _ in range(50):
        sock = control_socket(path)
        sock.sendall(subscribe)  # ... and never read
        subscribers.append(sock)
    stop, counts = threading.Event(), {}
    writers = [threading.Thread(target=garbage_writer, args=(path, kind, stop, counts), daemon=True)
               for kind in ("random bytes", "random bytes", "endless line", "megabyte", "error storm", "hit and run")]
    writers.append(threading.Thread(target=event_spammer, args=(path, stop, counts), daemon=True))
    for writer in writers:
        writer.start()
    try:
        time.sleep(1.0)  # the writers get going
        mark, started = watcher.mark(), time.monotonic()
        timings = []
        for _ in range(5):  # over 7 s: past the subscribers' buffers filling up plus the 5 s send timeout
            t0 = time.monotonic()
            result = daemon.ctl("status", "--json", timeout=10)
            timings.append(time.monotonic() - t0)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["frames_rendered"] > 0
            time.sleep(1.4 - timings[-1])
        report = watcher.report(mark)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for writer in writers:
            writer.join(5)
        watcher.close()
    try:
        assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.log()[-3000:]}"
        assert max(timings) < 1.0, f"avatarctl status took {[round(t, 2) for t in timings]} s"
        assert not report.problems(max_gap=3) and report.frames >= 0.95 * FPS * elapsed - 2, report
        assert counts.get("random bytes", 0) > 10 and counts.get("endless line hung up on", 0) >= 1, counts
        assert counts.get("hit and run", 0) > 50 and counts.get("gestures", 0) > 5000, counts
        assert all(hung_up(sock, 3.0) for sock in subscribers), "stuck subscribers are disconnected"
        assert daemon.control().request("ping") == {"ok": True, "pong": True}
    finally:
        for sock in subscribers:
            sock.close()


# -- SIGTERM at awkward moments -------------------------------------------------------------------------------------

STOP_LIMIT = 2.0  # seconds from SIGTERM to exit, the daemon's promise to systemd


def assert_clean_exit(daemon) -> None:
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        code = daemon.proc.wait(STOP_LIMIT + 3)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        raise AssertionError(f"still running {STOP_LIMIT + 3} s after SIGTERM:\n{daemon.log()[-2000:]}")
    took = time.monotonic() - started
    assert code == 0, f"exit code {code}:\n{daemon.log()[-3000:]}"
    assert took < STOP_LIMIT, f"took {took:.2f} s to exit"
    assert not os.path.exists(daemon.socket), "control socket file left behind"


def test_sigterm_while_speaking(daemon):
    assert daemon.ctl("say", "A long announcement that is still being spoken when the daemon is told to stop. " * 3
                      ).returncode == 0
    wait_until(lambda: daemon.status()["speaking"], 10, "speaking")
    time.sleep(0.5)
    assert_clean_exit(daemon)


def test_sigterm_while_gemini_reconnects(daemon_factory):
    with GeminiLiveTestServer() as live:
        daemon = daemon_factory(*gemini_args(live), env=GEMINI_ENV)
        wait_until(lambda: daemon.status()["brain_state"] == "connected", 15, "brain connected")
        live.reject_next_setups(1000)
        live.drop_connections()
        # Two failed attempts: the brain is sleeping in its backoff, between attempts.
        wait_until(lambda: daemon.status()["reconnects"] >= 2, 15, "two failed reconnects")
        assert daemon.status()["brain_state"] == "reconnecting"
        assert daemon.ctl("ask", "are you there?").returncode == 0  # queued for a connection that never comes
        assert_clean_exit(daemon)


def test_sigterm_while_gemini_connections_drop(daemon_factory):
    """The server accepts each connection and drops it right away, again and again, while the avatar speaks."""
    with GeminiLiveTestServer() as live:
        daemon = daemon_factory(*gemini_args(live), env=GEMINI_ENV)
        wait_until(lambda: daemon.status()["brain_state"] == "connected", 15, "brain connected")
        assert daemon.ctl("say", "Still talking while the link to the model keeps breaking.").returncode == 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            live.drop_connections()
            time.sleep(0.1)
        assert daemon.status()["reconnects"] >= 1
        assert_clean_exit(daemon)


async def test_sigterm_with_stalled_websocket_clients(daemon):
    """Three clients whose sends are blocked (the daemon's polite close to each waits for CLOSE_TIMEOUT, 1 s, in
    parallel) and an ordinary one: still gone within 2 s (1.3 s measured)."""
    port = daemon.port
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            await nursery.start(stalled_reader, port)
        async with open_client(port) as ws:
            client = Client(ws)
            await client.json_of("status", status="connected")
            await trio.sleep(3.0)  # the stalled ones' queues are full and their sends blocked (kicked only after 5 s)
            info = daemon.status()
            assert info["clients"] >= 4, info
            assert any(c["video_dropped"] > 0 for c in info["client_list"]), info["client_list"]
            await trio.to_thread.run_sync(assert_clean_exit, daemon)
        nursery.cancel_scope.cancel()

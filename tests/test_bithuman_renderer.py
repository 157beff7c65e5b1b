"""The bitHuman renderer: the adapter against a stand-in SDK, the real SDK's surface, and the daemon's failures.

The real thing needs a paid secret and a model, so the adapter runs against ``fake_bithuman`` (the SDK's
names, signatures and frame shape; checked against the installed package below). What the real package
can do offline is used for real: its import surface, its verdict on garbage model files, its
ModelNotFoundError, and its network failure when the licence server cannot be reached.
"""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import types
from contextlib import asynccontextmanager
from pathlib import Path

import bithuman
import fake_bithuman
import numpy as np
import prometheus_client
import pytest
import trio
from conftest import READY_TIMEOUT, Daemon, start_daemon

from avatard.config import Config
from avatard.core.events import EventBus
from avatard.core.fanout import FanOut
from avatard.core.hub import Hub
from avatard.core.input_lanes import InputLanes
from avatard.core.latency import LatencyMeter
from avatard.errors import ConfigError, Refused, RendererError, RendererFailed, UnknownGesture
from avatard.renderers import bithuman as bh
from avatard.renderers.bithuman import BithumanRenderer, make_bithuman_renderer
from avatard.renderers.bithuman_errors import KIND_BY_CLASS
from avatard.renderers.fallback import FALLBACK_NAME, FallbackRenderer

TESTS = Path(__file__).parent
SECRET = "bh-secret-5e3a9c"


# -- helpers ---------------------------------------------------------------------------------------

@pytest.fixture
def model(tmp) -> str:
    """A file that passes check_model_file (an IMX container header); only the stand-in SDK loads it."""
    path = tmp / "avatar.imx"
    path.write_bytes(b"IMX\x00" + struct.pack("<HH", 2, 0) + bytes(100))
    return str(path)


def meters():
    events = EventBus()
    return events, LatencyMeter(events, prometheus_client.CollectorRegistry())


def adapter(model: str, sdk, **kwargs) -> tuple[BithumanRenderer, EventBus]:
    events, latency = meters()
    return BithumanRenderer(model_path=model, api_secret=SECRET, events=events, latency=latency, sdk=sdk, **kwargs), events


def supervised(model: str, sdk, **kwargs) -> tuple[FallbackRenderer, EventBus]:
    """The app's arrangement (make_bithuman_renderer), with test-sized retry delays and timeouts."""
    from avatard.renderers.builtin import BuiltinRenderer
    events, latency = meters()
    primary = BithumanRenderer(model_path=model, api_secret=SECRET, events=events, latency=latency, sdk=sdk, **kwargs)

    def make_fallback(geometry):
        width, height, fps = geometry or (96, 80, 25)
        return BuiltinRenderer(width=width, height=height, fps=fps, events=events, latency=latency)

    return FallbackRenderer(primary, make_fallback, events), events


class Collected(list):
    """The frames a renderer emitted, in order; ``await frames.until(predicate)`` wakes on each arrival
    (no sleeping and counting: on busy cores a frame may come late, but a wait does not flake)."""

    def __init__(self) -> None:
        super().__init__()
        self._arrived = trio.Event()

    def add(self, frame) -> None:
        self.append(frame)
        self._arrived.set()
        self._arrived = trio.Event()

    async def until(self, predicate, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self._arrived.wait()


@asynccontextmanager
async def running(renderer, buffer: int = 256):
    """Run ``renderer`` and collect every frame it emits into the yielded list (a :class:`Collected`)."""
    send, receive = trio.open_memory_channel(buffer)
    frames = Collected()

    async def collect():
        async for frame in receive:
            frames.add(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await nursery.start(renderer.run, send)
        yield frames
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def speech(seconds: float, seed: int = 1) -> np.ndarray:
    """Non-zero, recognizable samples (never 0, so real speech can be told from padding)."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(500, 8000, int(seconds * 16000), dtype=np.int16)
    return samples * rng.choice(np.array([-1, 1], dtype=np.int16), samples.size)


def real_audio(frames) -> np.ndarray:
    audio = np.concatenate([f.audio for f in frames]) if frames else np.zeros(0, np.int16)
    return audio[audio != 0]


# -- the real SDK: the surface the adapter and the stand-in match -----------------------------------

# How the adapter calls each AsyncBithuman method (self is bound separately).
ADAPTER_CALLS = {
    "create": ((), dict(model_path="m.imx", api_secret="s", agent_code="a")),
    "start": ((), {}),
    "push_audio": ((b"\x00\x00", 16000), dict(last_chunk=False)),
    "flush": ((), {}),
    "interrupt": ((), {}),
    "push": ((bithuman.VideoControl(action="wave"),), {}),
    "run": ((), {}),
    "shutdown": ((), {}),
}
ASYNC_METHODS = {"create", "start", "push_audio", "flush", "push", "shutdown", "stop"}


def _params(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_real_sdk_exposes_what_the_adapter_calls():
    real = bithuman.AsyncBithuman
    for name, (args, kwargs) in ADAPTER_CALLS.items():
        method = getattr(real, name)
        signature = inspect.signature(method)
        if name == "create":
            signature.bind(*args, **kwargs)  # a classmethod: cls is bound already
        else:
            signature.bind(object(), *args, **kwargs)
        assert inspect.iscoroutinefunction(method) == (name in ASYNC_METHODS), name
    for prop in ("fps", "frame_width", "frame_height", "sample_rate"):
        assert isinstance(inspect.getattr_static(real, prop), property) or hasattr(real, prop), prop
    assert {"bgr_image", "audio_chunk", "frame_index", "end_of_speech"} <= {f.name for f in dataclasses.fields(bithuman.VideoFrame)}
    assert {"data", "sample_rate", "last_chunk"} <= {f.name for f in dataclasses.fields(bithuman.AudioChunk)}
    assert bithuman.VideoControl(action="wave").action == "wave"
    # Every SDK class the error table names exists (a rename would silently change a verdict).
    for name in KIND_BY_CLASS:
        if not hasattr(builtins, name):
            assert isinstance(getattr(bithuman, name), type), name


def test_stand_in_matches_the_real_signatures():
    fake, real = fake_bithuman.FakeAsyncBithuman, bithuman.AsyncBithuman
    for name in ("__init__", "create", "start", "push_audio", "flush", "interrupt", "push", "run", "stop", "shutdown", "cleanup"):
        assert _params(getattr(fake, name)) == _params(getattr(real, name)), name
        assert inspect.iscoroutinefunction(getattr(fake, name)) == inspect.iscoroutinefunction(getattr(real, name)), name


# -- the real SDK: a missing model ---------------------------------------------------------------------

async def test_real_sdk_missing_model_is_a_config_error(tmp):
    """The real SDK, for real: ModelNotFoundError (offline, before any network) -> ConfigError."""
    renderer, _ = adapter(str(tmp / "gone.imx"), sdk=None)
    send, _receive = trio.open_memory_channel(1)
    with pytest.raises(ConfigError, match=r"^--model: bitHuman cannot use .*gone.imx: \[model_not_found\]"):
        await renderer.run(send)


# -- the adapter against the stand-in ----------------------------------------------------------------

async def test_frames_flow_at_the_models_fps_with_exact_audio(model):
    sdk = fake_bithuman.make_sdk(fps=20, size=(80, 60))
    renderer, _ = adapter(model, sdk)
    started = trio.current_time()
    async with running(renderer) as frames:
        assert (renderer.width, renderer.height, renderer.fps, renderer.samples_per_frame) == (80, 60, 20, 800)
        await frames.until(lambda frames: len(frames) >= 20)
        elapsed = trio.current_time() - started
    # Not faster than the model's fps: the 20th frame is due 19/20 s after the first, which came after start.
    # (Not slower either: the clock stamps each frame with its slot, checked below; a late machine skips
    # ticks rather than stretching them, and that shows as a gap in the indices.)
    assert elapsed >= 19 / 20 - 0.001, elapsed
    assert [f.index for f in frames] == list(range(len(frames)))
    assert np.allclose(np.diff([f.timestamp for f in frames]), 0.05, atol=1e-6)
    assert all(f.audio.shape == (800,) and f.audio.dtype == np.int16 for f in frames)
    assert all(f.image.shape == (60, 80, 3) and f.image.dtype == np.uint8 for f in frames)
    assert not any(f.speaking for f in frames) and not real_audio(frames).size
    assert renderer.frames_rendered == len(frames) and renderer.last_frame is frames[-1]


async def test_an_unpaced_sdk_is_paced_by_the_adapter(model):
    sdk = fake_bithuman.make_sdk(fps=25, pace=False)
    renderer, _ = adapter(model, sdk)
    started = trio.current_time()
    async with running(renderer) as frames:
        await frames.until(lambda frames: len(frames) >= 25)
        elapsed, count, pulled = trio.current_time() - started, len(frames), sdk.script.frames
    assert elapsed >= 24 / 25 - 0.001, f"25 frames in {elapsed:.3f} s: faster than 25 fps"
    assert pulled < count + 10, "the SDK is not read far ahead of the clock"
    assert np.allclose(np.diff([f.timestamp for f in frames]), 0.04, atol=1e-6)


async def test_push_flush_reach_the_sdk_and_the_audio_comes_back_in_order(model):
    sdk = fake_bithuman.make_sdk(fps=25)
    renderer, events = adapter(model, sdk)
    said = speech(0.6)
    with events.subscribe(frozenset({"status"})) as statuses:
        async with running(renderer) as frames:
            for start in range(0, said.size, 1600):
                assert await renderer.push_audio(said[start:start + 1600]) is True
            renderer.flush()
            await wait_for(lambda: any(f.speaking for f in frames))
            await wait_for(lambda: frames[-1].speaking is False and any(f.speaking for f in frames), 3)
        seen = []
        while True:
            try:
                seen.append(statuses.receive_nowait().data["status"])
            except trio.WouldBlock:
                break
    pushes = [c for c in sdk.script.calls if c[0] == "push_audio"]
    assert [c[1:] for c in pushes] == [(1600, 16000, False)] * 6, "16 kHz int16 bytes, end of speech only by flush"
    assert sdk.script.names().index("flush") > sdk.script.names().index("push_audio")
    assert np.array_equal(real_audio(frames), said), "every sample, once, in order"
    speaking = [f for f in frames if f.speaking]
    assert len(speaking) == 15 and max(f.mouth for f in speaking) > 0.5
    assert seen == ["speaking", "listening"]
    assert ("shutdown",) in sdk.script.calls, "the SDK is shut down when the renderer stops"


async def test_resampled_and_repacketized_sdk_audio_keeps_exact_frame_length(model):
    sdk = fake_bithuman.make_sdk(fps=25, audio_rate=24000)  # chunks of 960 samples at 24 kHz
    renderer, _ = adapter(model, sdk)
    t = np.arange(8000) / 16000
    said = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    async with running(renderer) as frames:
        assert await renderer.push_audio(said)
        renderer.flush()
        await wait_for(lambda: any(f.speaking for f in frames))
        await wait_for(lambda: not frames[-1].speaking, 3)
    assert all(f.audio.shape == (640,) for f in frames)
    heard = real_audio(frames).astype(np.float64)
    assert abs(heard.size - said.size) <= 2 * 640
    assert abs(np.sqrt(np.mean(heard ** 2)) - 8000 / np.sqrt(2)) < 300


async def test_silent_idle_chunks_are_not_speech(model):
    sdk = fake_bithuman.make_sdk(fps=25, idle_audio=True)
    renderer, _ = adapter(model, sdk)
    async with running(renderer) as frames:
        await frames.until(lambda frames: len(frames) >= 12)  # half a second of idle chunks
        assert not renderer.speaking and not any(f.speaking for f in frames)
        await renderer.push_audio(speech(0.2))
        renderer.flush()
        await wait_for(lambda: renderer.speaking)
        await wait_for(lambda: not renderer.speaking, 2)


async def test_interrupt_reaches_the_sdk_silences_the_next_frame_and_releases_pushes(model):
    sdk = fake_bithuman.make_sdk(fps=25)
    renderer, _ = adapter(model, sdk, max_ahead_seconds=0.5)
    results = []

    async def brain(samples):
        for start in range(0, samples.size, 4000):
            ok = await renderer.push_audio(samples[start:start + 4000])
            results.append(ok)
            if not ok:
                return

    async with running(renderer) as frames:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(brain, speech(3.0))
            await frames.until(lambda frames: sum(f.speaking for f in frames) >= 5)
            generation = renderer.generation
            assert renderer.interrupt() > 0
        assert results[-1] is False, "the push waiting for room was discarded"
        assert renderer.generation == generation + 1
        await wait_for(lambda: ("interrupt" in sdk.script.names()))
        await frames.until(lambda frames: sum(f.generation == generation + 1 for f in frames) >= 12)
        after = [f for f in frames if f.generation == generation + 1]  # rendered after the interrupt
        assert len(after) >= 10 and not real_audio(after).size, "the very next frame is silent"
        assert not any(f.speaking for f in after)
        # the next turn plays normally
        again = speech(0.3, seed=7)
        assert await renderer.push_audio(again)
        renderer.flush()
        await wait_for(lambda: np.array_equal(real_audio([f for f in frames if f.generation == generation + 1]), again), 3)
    interrupt = next(c for c in sdk.script.calls if c[0] == "interrupt")
    assert interrupt[1] >= 0


async def test_interrupt_before_the_sdk_is_ready_does_not_mute_later_speech(model):
    sdk = fake_bithuman.make_sdk(fps=25)
    renderer, _ = adapter(model, sdk)
    renderer.interrupt()
    async with running(renderer) as frames:
        said = speech(0.2)
        assert await renderer.push_audio(said)
        renderer.flush()
        await wait_for(lambda: np.array_equal(real_audio(frames), said), 3)


async def test_gesture_is_a_video_control_action(model):
    sdk = fake_bithuman.make_sdk(fps=25)
    renderer, events = adapter(model, sdk)
    hub = make_hub(renderer, events)
    async with running(renderer) as frames:
        assert "mini_wave_hello" in renderer.gestures
        hub.gesture("mini_wave_hello", "test")
        renderer.gesture("custom_bow-2")  # models bring their own actions: any action-shaped name goes
        await wait_for(lambda: sdk.script.calls.count(("push", "custom_bow-2")) == 1)
        assert ("push", "mini_wave_hello") in sdk.script.calls
        await wait_for(lambda: any(f.gesture == "custom_bow-2" for f in frames))
        with pytest.raises(UnknownGesture, match="mini_wave_hello"):
            renderer.gesture("wave; rm -rf /")
        with pytest.raises(Refused, match="invalid gesture name"):
            hub.gesture("", "test")


async def test_agent_gestures_from_dynamics_are_the_only_ones_accepted(model, monkeypatch):
    import avatard.renderers.dynamics

    async def fake_fetch(agent_id, api_secret):
        assert (agent_id, api_secret) == ("agent7", SECRET)
        return ["bow", "wave"]

    monkeypatch.setattr(avatard.renderers.dynamics, "fetch_gestures", fake_fetch)
    sdk = fake_bithuman.make_sdk(fps=25)
    renderer, _ = adapter(model, sdk, agent_code="agent7")
    async with running(renderer):
        assert renderer.gestures == ["bow", "wave"]
        renderer.gesture("bow")
        with pytest.raises(UnknownGesture, match="'moonwalk'; known: bow, wave"):
            renderer.gesture("moonwalk")
    assert sdk.script.calls[0] == ("create", dict(model_path=model, api_secret=SECRET, agent_code="agent7"))


async def test_refused_secret_is_a_clear_renderer_error(model):
    sdk = fake_bithuman.make_sdk(create_errors=[bithuman.AccountStatusError(f"HTTP 401: {SECRET} was rejected")])
    renderer, _ = supervised(model, sdk)
    send, _receive = trio.open_memory_channel(1)
    with pytest.raises(RendererError) as caught:
        await renderer.run(send)
    assert not isinstance(caught.value, RendererFailed), "no fallback: the operator must fix the secret"
    assert "refused the API secret" in str(caught.value) and SECRET not in str(caught.value)
    assert sdk.script.creates == 1, "a refusal is not retried"


async def test_unreachable_at_start_retries_then_falls_back(model):
    curl = "auth_authenticate: curl_easy_perform: Couldn't resolve host name"
    sdk = fake_bithuman.make_sdk(create_errors=[RuntimeError(curl)] * 3)
    renderer, events = supervised(model, sdk, retry_delays=(0.01, 0.01))
    with events.subscribe(frozenset({"status"})) as statuses:
        async with running(renderer) as frames:
            assert sdk.script.creates == 3
            assert renderer.name == FALLBACK_NAME and renderer.fallback_reason.startswith("cannot reach bitHuman")
            assert (renderer.width, renderer.height, renderer.fps) == (96, 80, 25), "the configured geometry"
            event = statuses.receive_nowait()
            assert event.data == {"status": "renderer_fallback", "renderer": "builtin", "reason": renderer.fallback_reason}
            await frames.until(lambda frames: len(frames) >= 5)
            assert await renderer.push_audio(speech(0.1))


async def test_crash_mid_session_falls_back_and_frames_keep_flowing(model):
    sdk = fake_bithuman.make_sdk(fps=20, size=(96, 64), crash_after=20,
                                 crash_error=RuntimeError("libessence: segfault in warp node"))
    renderer, events = supervised(model, sdk)
    hub = make_hub(renderer, events)
    with events.subscribe(frozenset({"status"})) as statuses:
        async with running(renderer) as frames:
            assert hub.status()["renderer"] == "bithuman"
            assert await renderer.push_audio(speech(2.0))  # speaking when it dies
            generation = renderer.generation
            with trio.fail_after(5):
                async for event in statuses:
                    if event.data["status"] == "renderer_fallback":
                        break
            assert event.data["reason"] == "bitHuman stopped: libessence: segfault in warp node"
            await frames.until(lambda frames: sum(f.generation > generation for f in frames) >= 8)
            status = hub.status()
    assert status["renderer"] == FALLBACK_NAME and status["size"] == "96x64" and status["fps"] == 20
    before = [f for f in frames if f.generation == generation]
    after = [f for f in frames if f.generation > generation]
    assert len(before) >= 19 and len(after) >= 8 and len(before) + len(after) == len(frames)
    assert after[0].timestamp - before[-1].timestamp < 0.15, "no gap: the built-in clock takes over at once"
    assert all(f.image.shape == (64, 96, 3) for f in after), "same geometry for the sinks"
    assert renderer.generation > generation
    assert not real_audio(after).size, "the dead renderer's speech is gone"
    assert renderer.frames_rendered >= len(frames)


async def test_a_stalled_sdk_falls_back_instead_of_freezing(model):
    sdk = fake_bithuman.make_sdk(fps=25, hang_after=10)
    renderer, events = supervised(model, sdk, stall_timeout=0.3)
    async with running(renderer) as frames:
        await wait_for(lambda: renderer.name == FALLBACK_NAME, 3)
        assert renderer.fallback_reason == "bitHuman sent no frame for 0.3 s"
        cut = len(frames)
        await frames.until(lambda frames: len(frames) - cut >= 5)  # the built-in clock runs


def make_hub(renderer, events) -> Hub:
    brain = types.SimpleNamespace(interrupt=lambda: None, status=lambda: {"brain": "local", "brain_state": "ready"})
    return Hub(renderer=renderer, brain=brain, events=events, latency=meters()[1], fanout=FanOut(lambda: 0),
               inputs=InputLanes())


def test_make_bithuman_renderer_checks_the_model_first(tmp):
    garbage = tmp / "bad.imx"
    garbage.write_bytes(b"\x00" * 1024)
    config = Config(model=str(garbage), api_secret=SECRET, control_socket=str(tmp / "s.sock"))
    events, latency = meters()
    with pytest.raises(ConfigError, match="is not a bitHuman .imx model"):
        make_bithuman_renderer(config, events, latency, sdk=fake_bithuman.make_sdk())


# -- the daemon, for real ----------------------------------------------------------------------------

def run_avatard(tmp, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatard", "--server", "--port", "0",
                           "--control-socket", str(tmp / "s.sock"), *args],
                          capture_output=True, text=True, timeout=30, env=env)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_daemon_missing_model_exits_2_with_one_line(tmp):
    result = run_avatard(tmp, "--model", "/nonexistent.imx", "--api-secret", "x")
    assert result.returncode == 2
    assert one_line(result) == "avatard: error: --model: file not found: /nonexistent.imx"


@pytest.mark.parametrize("content", [b"", b"GIF89a" + bytes(2000), "not a model\n".encode() * 50])
def test_daemon_garbage_model_exits_2_with_one_line(tmp, content):
    path = tmp / "avatar.imx"
    path.write_bytes(content)
    result = run_avatard(tmp, "--model", str(path), "--api-secret", SECRET)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"avatard: error: --model: {path} is not a bitHuman .imx model")
    assert SECRET not in result.stderr


def warnings_in(log: str) -> list[str]:
    """The renderers' warnings and errors (the test harness's closed NOTIFY_SOCKET makes sd_notify warn)."""
    return [line for line in log.splitlines() if (" WARNING " in line or " ERROR " in line)
            and ("avatard.renderer" in line or "avatard.bithuman" in line)]


def test_daemon_with_the_real_sdk_and_no_network_falls_back_to_builtin(tmp, model):
    """The real SDK authenticates first; through a dead proxy libcurl fails, deterministically."""
    dead = "http://127.0.0.1:9"
    daemon = start_daemon(tmp, "--model", model, "--api-secret", SECRET,
                          env={"https_proxy": dead, "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": ""})
    try:
        status = daemon.status()
        assert status["renderer"] == FALLBACK_NAME and status["size"] == "512x512" and status["fps"] == 25
        assert daemon.ctl("say", "still talking").returncode == 0
        assert daemon.ctl("gesture", "thumbs_up").returncode == 0
    finally:
        assert daemon.stop() == 0
    log = daemon.log()
    assert "Traceback" not in log and SECRET not in log
    warnings = warnings_in(log)
    assert len(warnings) == 1, log
    warning = warnings[0]
    assert "bithuman renderer failed: cannot reach bitHuman to check the API secret: auth_authenticate: " in warning
    assert "the built-in avatar takes over" in warning


# A daemon subprocess whose ``import bithuman`` is the stand-in (knobs from $FAKE_BITHUMAN, JSON).
BOOT = ("import json, os, sys; sys.path.insert(0, os.environ['FAKE_BITHUMAN_PATH']); import fake_bithuman; "
        "fake_bithuman.install(**json.loads(os.environ['FAKE_BITHUMAN'])); "
        "from avatard.cli import main; main(sys.argv[1:])")


def start_fake_daemon(tmp, knobs: dict, *args, wait_ready=True):
    own = Path(tempfile.mkdtemp(prefix="f", dir=tmp))
    socket_path, notify_path = str(own / "avatard.sock"), str(own / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(READY_TIMEOUT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "BITHUMAN_", "AVATARD_"))}
    env.update(NOTIFY_SOCKET=notify_path, PYTHONUNBUFFERED="1", FAKE_BITHUMAN=json.dumps(knobs), FAKE_BITHUMAN_PATH=str(TESTS))
    stderr_path = own / "avatard.log"
    argv = [sys.executable, "-c", BOOT, "--server", "--host", "127.0.0.1", "--port", "0", "--control-socket", socket_path, *args]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp)
    daemon = Daemon(proc, socket_path, stderr_path, env)
    try:
        if wait_ready:
            while "READY=1" not in notify.recv(4096).decode():
                pass
    except socket.timeout:
        daemon.stop(signal.SIGKILL)
        raise RuntimeError(f"avatard did not become ready:\n{daemon.log()}") from None
    finally:
        notify.close()
    return daemon


def test_daemon_refused_secret_exits_1_with_one_line(tmp, model):
    knobs = {"create_errors": [["AccountStatusError", f"this credential ({SECRET}) was REFUSED by the service"]]}
    daemon = start_fake_daemon(tmp, knobs, "--model", model, "--api-secret", SECRET, wait_ready=False)
    assert daemon.proc.wait(20) == 1
    log = daemon.log()
    assert "Traceback" not in log and SECRET not in log
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert errors == ["avatard: error: bitHuman refused the API secret (--api-secret / BITHUMAN_API_SECRET): "
                      "[account_status_invalid] this credential (***) was REFUSED by the service"], log
    assert not warnings_in(log)


def test_daemon_renderer_crash_falls_back_and_keeps_serving(tmp, model):
    daemon = start_fake_daemon(tmp, {"fps": 25, "size": [160, 120], "crash_after": 100}, "--model", model, "--api-secret", SECRET)
    try:
        watcher = daemon.control()
        assert watcher.request("subscribe", events=["status", "frame"])["ok"]
        assert daemon.status()["renderer"] == "bithuman"
        events = watcher.events_until(lambda e: e["event"] == "status" and e["status"] == "renderer_fallback", 10)
        assert events[-1]["reason"] == "bitHuman stopped: libessence: engine died"
        after = [watcher.read() for _ in range(20)]
        assert len([e for e in after if e["event"] == "frame"]) >= 10, "frames keep flowing"
        status = daemon.status()
        assert status["renderer"] == FALLBACK_NAME and status["size"] == "160x120"
        snapshot = daemon.ctl("snapshot", str(tmp / "after.jpg"))
        assert snapshot.returncode == 0, snapshot.stderr
        assert daemon.ctl("say", "the drawn face speaks now").returncode == 0
        watcher.events_until(lambda e: e["event"] == "status" and e["status"] == "speaking", 10)
    finally:
        assert daemon.stop() == 0
    log = daemon.log()
    assert "Traceback" not in log
    warnings = warnings_in(log)
    assert len(warnings) == 1, log
    warning = warnings[0]
    assert "bithuman renderer failed: bitHuman stopped: libessence: engine died; the built-in avatar takes over" in warning


def renderer_warnings(caplog) -> list:
    return [r for r in caplog.records if r.levelname in ("WARNING", "ERROR") and r.name.startswith("avatard.")]


@pytest.mark.parametrize("call", ["gesture", "flush"])
async def test_sdk_errors_in_fire_and_forget_calls_fall_back_with_one_warning(model, caplog, call):
    """An SDK call that raises is a failure, not a dropped call: the built-in renderer takes over."""
    sdk = fake_bithuman.make_sdk(fps=25)

    async def exploding(self, *args):
        raise bithuman.RuntimeNotReadyError("Fixture not loaded; await create() first.")

    setattr(sdk.AsyncBithuman, "push" if call == "gesture" else "flush", exploding)
    renderer, events = supervised(model, sdk)
    with events.subscribe(frozenset({"status"})) as statuses:
        async with running(renderer) as frames:
            renderer.gesture("mini_wave_hello") if call == "gesture" else renderer.flush()
            with trio.fail_after(10):
                event = await statuses.receive()
            reason = f"bitHuman {call} failed: [runtime_not_ready] Fixture not loaded; await create() first."
            assert event.data == {"status": "renderer_fallback", "renderer": "builtin", "reason": reason}
            assert renderer.name == FALLBACK_NAME
            cut = len(frames)
            await frames.until(lambda frames: len(frames) > cut + 3)  # the avatar carries on, drawn
    [record] = renderer_warnings(caplog)
    assert record.getMessage() == f"bithuman renderer failed: {reason}; the built-in avatar takes over"
    assert record.exc_info is None


async def test_push_audio_failing_mid_session_falls_back_and_the_next_speech_is_heard(model, caplog):
    sdk = fake_bithuman.make_sdk(fps=25, size=(96, 64), push_fails_after=3,
                                 push_error=RuntimeError("libessence: audio input closed"))
    renderer, events = supervised(model, sdk)
    reason = "bitHuman refused audio: libessence: audio input closed"
    with events.subscribe(frozenset({"status"})) as statuses:
        async with running(renderer) as frames:
            said = speech(0.5)
            results = [await renderer.push_audio(said[start:start + 1600]) for start in range(0, 4 * 1600, 1600)]
            # Three went through; the fourth hit the failure: discarded by the switch (an interrupt), not
            # silently "interrupted" while bitHuman carried on -- the built-in renderer is active now.
            assert results == [True, True, True, False]
            assert renderer.name == FALLBACK_NAME and renderer.fallback_reason == reason
            generation = renderer.generation
            again = speech(0.3, seed=5)
            assert await renderer.push_audio(again) is True
            renderer.flush()
            await frames.until(lambda frames: np.array_equal(
                real_audio([f for f in frames if f.generation >= generation]), again))
        seen = []
        while True:
            try:
                seen.append(statuses.receive_nowait().data)
            except trio.WouldBlock:
                break
    assert {"status": "renderer_fallback", "renderer": "builtin", "reason": reason} in seen
    assert all(f.image.shape == (64, 96, 3) for f in frames), "the built-in renderer keeps the geometry"
    [record] = renderer_warnings(caplog)
    assert reason in record.getMessage() and record.exc_info is None


async def test_a_failed_push_raises_renderer_failed_never_false(model):
    """The adapter alone: a refused push is RendererFailed, from push_audio and from run()."""
    sdk = fake_bithuman.make_sdk(fps=25, push_fails_after=0)
    renderer, _ = adapter(model, sdk)
    send, _receive = trio.open_memory_channel(256)
    failures = []

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            await renderer.run(send, task_status=task_status)
        except RendererFailed as exc:
            failures.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            with pytest.raises(RendererFailed, match="^bitHuman refused audio"):
                await renderer.push_audio(speech(0.1))
            with pytest.raises(RendererFailed, match="^bitHuman refused audio"):  # and every push after
                await renderer.push_audio(speech(0.1))
        # ... and run() ended with it (the nursery waited for that)
    assert [str(exc) for exc in failures] == ["bitHuman refused audio: libessence: audio input closed"]
    renderer.flush()  # fire-and-forget calls on a failed renderer are no-ops
    renderer.gesture("mini_wave_hello")
    assert ("shutdown",) in sdk.script.calls


async def test_a_gesture_flood_stays_bounded_and_counts_its_drops(model):
    sdk = fake_bithuman.make_sdk(fps=25)
    renderer, events = adapter(model, sdk)
    hub = make_hub(renderer, events)
    async with running(renderer) as frames:
        for _ in range(5000):  # a browser spamming the gesture message, faster than the SDK's loop runs
            hub.gesture("mini_wave_hello", "client_1")
        assert renderer._aio.pending_calls == bh.MAX_PENDING_GESTURES, "in flight: bounded"
        assert renderer.gestures_dropped == 5000 - bh.MAX_PENDING_GESTURES
        assert renderer._aio.calls_refused == 0, "the bridge's bound is never reached: interrupts still go"
        await wait_for(lambda: renderer._aio.pending_calls == 0)
        # Spaced out a little, as a real flood over a socket is: still bounded, drops still counted.
        for i in range(2000):
            hub.gesture("mini_wave_hello", "client_1")
            assert renderer._aio.pending_calls <= bh.MAX_PENDING_GESTURES
            if i % 50 == 0:
                await trio.sleep(0)
        renderer.interrupt()
        await wait_for(lambda: "interrupt" in sdk.script.names())
        await wait_for(lambda: renderer._aio.pending_calls == 0)
        pushed = sdk.script.calls.count(("push", "mini_wave_hello"))
        assert pushed + renderer.gestures_dropped == 7000
        assert renderer.status()["gestures_dropped"] == renderer.gestures_dropped
        cut = len(frames)
        await frames.until(lambda frames: len(frames) > cut + 3)
    assert renderer.name == "bithuman", "a flood is not a failure"


async def test_an_unexpected_error_falls_back_too(model):
    sdk = fake_bithuman.make_sdk(fps=25)
    sdk.AsyncBithuman.fps = property(lambda self: (_ for _ in ()).throw(bithuman.RuntimeNotReadyError("no fixture")))
    renderer, events = supervised(model, sdk)
    async with running(renderer) as frames:
        assert renderer.name == FALLBACK_NAME
        assert renderer.fallback_reason == "bitHuman renderer failed: [runtime_not_ready] no fixture"
        await frames.until(lambda frames: len(frames) >= 1)


def test_daemon_speaks_through_bithuman_and_stops_within_2_s(tmp, model):
    daemon = start_fake_daemon(tmp, {"fps": 20, "size": [160, 120]}, "--model", model, "--api-secret", SECRET)
    try:
        status = daemon.status()
        assert (status["renderer"], status["size"], status["fps"]) == ("bithuman", "160x120", 20)
        watcher = daemon.control()
        assert watcher.request("subscribe", events=["status", "frame"])["ok"]
        assert daemon.ctl("say", "Hello from the bitHuman stand in.").returncode == 0
        events = watcher.events_until(lambda e: e["event"] == "status" and e["status"] == "speaking", 20)
        events += watcher.events_until(lambda e: e["event"] == "status" and e["status"] == "listening", 20)
        speaking = [e for e in events if e["event"] == "frame" and e["speaking"]]
        assert len(speaking) > 10 and max(e["rms"] for e in speaking) > 500
        frames = [e for e in events if e["event"] == "frame"]
        assert np.allclose(np.diff([e["pts"] for e in frames]), 0.05, atol=1e-6)
        assert daemon.ctl("gesture", "mini_wave_hello").returncode == 0
    finally:
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 2.0
    assert "Traceback" not in daemon.log() and not warnings_in(daemon.log())

"""The spine end to end: the real avatard subprocess, driven by the real avatarctl."""

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from conftest import ControlClient

from avatard.constants import GESTURES
from avatard.protocol.control import MAX_LINE_BYTES


def frames_until(client: ControlClient, predicate, timeout=15.0):
    return client.events_until(predicate, timeout)


def counting(n: int, predicate):
    """A predicate that holds on the ``n``-th event matching ``predicate``."""
    seen = 0

    def nth(event) -> bool:
        nonlocal seen
        seen += predicate(event)
        return seen >= n
    return nth


def test_say_speaks_with_a_moving_mouth(daemon):
    watcher = daemon.control()
    assert watcher.request("subscribe", events=["frame", "transcription", "status"])["ok"]
    result = daemon.ctl("say", "Hello there, I am the built in avatar and I can talk.")
    assert result.returncode == 0, result.stderr
    events = frames_until(watcher, lambda e: e["event"] == "status" and e.get("status") == "speaking", 10)
    events += frames_until(watcher, lambda e: e["event"] == "status" and e.get("status") == "listening", 20)
    frames = [e for e in events if e["event"] == "frame"]
    speaking = [f for f in frames if f["speaking"]]
    assert len(speaking) > 25, "at least a second of speech frames"
    assert max(f["rms"] for f in speaking) > 500
    mouths = [f["mouth"] for f in speaking]
    assert max(mouths) > 0.4 and min(mouths) < 0.2, "the mouth opens and closes with the syllables"
    idle = [f for f in frames if not f["speaking"]]
    assert all(f["rms"] == 0 for f in idle)
    # one frame per 1/25 s: consecutive indices and presentation times 40 ms apart, except the one short
    # interval where speech started while idle (the clock re-phases so the first word does not wait)
    indices = [f["index"] for f in frames]
    assert indices == list(range(indices[0], indices[0] + len(indices)))
    steps = np.diff([f["pts"] for f in frames])
    regular = np.isclose(steps, 0.04, atol=1e-6)
    assert (~regular).sum() <= 1 and (steps[~regular] >= 0.005 - 1e-6).all() and (steps[~regular] < 0.04).all()
    said = [e for e in events if e["event"] == "transcription"]
    assert said and said[0]["role"] == "assistant" and "built in avatar" in said[0]["text"]


def test_interrupt_silences_the_next_frame(daemon):
    watcher = daemon.control()
    assert watcher.request("subscribe", events=["frame", "status"])["ok"]
    daemon.ctl("say", "This is a long sentence that keeps going so that there is time to interrupt it in the middle. " * 3)
    frames_until(watcher, lambda e: e["event"] == "frame" and e["speaking"] and e["rms"] > 300)
    assert daemon.ctl("interrupt").returncode == 0
    frames_until(watcher, lambda e: e["event"] == "status" and e["status"] == "interrupted")
    # The next 20 frames (0.8 s of the daemon's clock), however long a busy machine takes to deliver them.
    after = frames_until(watcher, counting(20, lambda e: e["event"] == "frame"))
    frames_after = [e for e in after if e["event"] == "frame"]
    assert len(frames_after) == 20
    assert all(f["rms"] == 0 for f in frames_after), "the very next frame after the interrupt is silent"
    assert not any(f["speaking"] for f in frames_after)
    assert daemon.status()["interrupts"] == 1


def snapshot(daemon, path, with_index=False):
    result = daemon.ctl("snapshot", str(path))
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (512, 512, 3)
    if with_index:
        return image.astype(np.int16), int(result.stdout.split()[1])  # "frame 123 (512x512) -> path"
    return image.astype(np.int16)


def snapshot_mid_gesture(daemon, watcher, name, path, attempts=3):
    """Start ``name`` and snapshot it 0.6 s in (counted in the daemon's frames, not the test's clock).

    The snapshot goes through a fresh avatarctl process; on a busy machine that can take longer than the
    rest of the gesture, so a snapshot whose frame is past the gesture's end is taken again.
    """
    fps = daemon.status()["fps"]
    length = round(GESTURES[name] * fps)
    for _ in range(attempts):
        assert daemon.ctl("gesture", name).returncode == 0
        started = frames_until(watcher, lambda e: e["event"] == "frame" and e["gesture"] == name)[-1]["index"]
        frames_until(watcher, counting(round(0.6 * fps), lambda e: e["event"] == "frame" and e["gesture"] == name))
        image, index = snapshot(daemon, path, with_index=True)
        # The gesture is over once a frame without it comes out; the next one starts from idle.
        frames_until(watcher, lambda e: e["event"] == "frame" and e["gesture"] is None)
        if index < started + length:
            return image
    raise AssertionError(f"{name}: no snapshot landed inside the gesture in {attempts} attempts")


def test_gesture_animates_and_unknown_gesture_is_refused(daemon, tmp):
    idle = snapshot(daemon, tmp / "idle.jpg")
    listed = daemon.ctl("gestures")
    assert listed.returncode == 0
    names = listed.stdout.split()
    assert set(names) >= {"mini_wave_hello", "laugh_react", "nod_agree", "heart_gesture", "thumbs_up"}
    watcher = daemon.control()
    assert watcher.request("subscribe", events=["frame"])["ok"]
    for name in ("mini_wave_hello", "heart_gesture"):
        moving = snapshot_mid_gesture(daemon, watcher, name, tmp / f"{name}.jpg")
        changed = (np.abs(moving - idle).max(axis=2) > 40).mean()
        assert changed > 0.01, f"{name}: {changed:.4f} of the pixels changed"
    bad = daemon.ctl("gesture", "moonwalk")
    assert bad.returncode == 1
    assert "moonwalk" in bad.stderr and "mini_wave_hello" in bad.stderr


def test_ask_is_a_user_turn_with_transcripts_and_latency(daemon):
    watcher = daemon.control()
    assert watcher.request("subscribe", events=["transcription", "latency"])["ok"]
    assert daemon.ctl("ask", "what a nice day").returncode == 0
    events = frames_until(watcher, lambda e: e["event"] == "latency")
    roles = [(e["role"], e["text"]) for e in events if e["event"] == "transcription"]
    assert roles[:2] == [("user", "what a nice day"), ("assistant", "what a nice day")]
    status = daemon.ctl("status", "--json")
    assert status.returncode == 0
    import json
    info = json.loads(status.stdout)
    assert info["turns"] == 1 and info["last_latency"]["total_ms"] > 0
    assert info["renderer"] == "builtin" and info["brain"] == "local"


def test_control_socket_survives_bad_requests(daemon):
    good = daemon.control()
    bad = daemon.control()
    assert bad.request("explode")["code"] == "unknown_command"
    bad.sock.sendall(b"this is not json\n")
    assert bad.read()["code"] == "bad_json"
    assert bad.request("fly")["code"] == "unknown_command"
    assert bad.request("say")["code"] == "bad_request"
    assert bad.request("status")["ok"] is True, "the same connection keeps working"
    huge = daemon.control()
    huge.sock.sendall(b"x" * (MAX_LINE_BYTES + 1024))
    assert huge.read()["code"] == "too_long"
    assert good.request("ping") == {"ok": True, "pong": True}
    assert daemon.proc.poll() is None


def test_avatarctl_exit_codes(daemon, tmp):
    assert daemon.ctl("say", "   ").returncode == 1
    missing = subprocess.run([sys.executable, "-m", "avatarctl", "--socket", str(tmp / "nope.sock"), "status"],
                             capture_output=True, text=True)
    assert missing.returncode == 3 and "avatard is not running at" in missing.stderr
    usage = daemon.ctl("gesture")
    assert usage.returncode == 2


def test_sigterm_exits_cleanly_and_removes_the_socket(daemon):
    assert os.path.exists(daemon.socket)
    watcher = daemon.control()
    assert watcher.request("subscribe", events=["status"])["ok"]
    daemon.ctl("say", "I am still talking when the signal arrives, which must not matter at all.")
    frames_until(watcher, lambda e: e["event"] == "status" and e.get("status") == "speaking")
    watcher.close()
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 2.0
    assert not os.path.exists(daemon.socket)
    assert "Traceback" not in daemon.log()


def test_second_daemon_on_the_same_socket_is_refused(daemon, tmp):
    result = subprocess.run([sys.executable, "-m", "avatard", "--server", "--port", "0", "--control-socket", daemon.socket],
                            capture_output=True, text=True, timeout=20, env=daemon.env)
    assert result.returncode == 2
    assert "already listening" in result.stderr
    assert daemon.ctl("status").returncode == 0


@pytest.mark.parametrize("args, flag", [
    (["--model", "/nonexistent/avatar.imx"], "--model"),
    (["--port", "70000"], "--port"),
    (["--port", "eighty"], "--port"),
    (["--gemini-voice", "Robot"], "--gemini-voice"),
    (["--audio-file", "/nonexistent.wav"], "--audio-file"),
    (["--fps", "7"], "--fps"),
    (["--size", "big"], "--size"),
    (["--renderer", "bithuman"], "--renderer"),
    (["--brain", "telepathy"], "--brain"),
    (["--env-file", "/nonexistent.env"], "--env-file"),
    (["--vertex"], "--vertex"),
    (["--vertex", "--gcp-project", "Bad Project!"], "--gcp-project"),
    (["--gcp-location", "us central1/../x"], "--gcp-location"),
])
def test_bad_config_stops_with_one_line(args, flag, tmp):
    result = subprocess.run([sys.executable, "-m", "avatard", "--server", "--control-socket", str(tmp / "s.sock"), *args],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and "Traceback" not in result.stderr


def test_precedence_flag_over_env_over_dotenv(daemon_factory, tmp):
    (tmp / ".env").write_text("AVATARD_FPS=20\nAVATARD_SIZE=320x240\nAVATARD_JPEG_QUALITY=50\n")
    daemon = daemon_factory(env={"AVATARD_SIZE": "256x256"})
    info = daemon.status()
    assert info["fps"] == 20  # from .env
    assert info["size"] == "256x256"  # environment beats .env
    daemon.stop()
    daemon = daemon_factory("--fps", "32", env={"AVATARD_FPS": "25"})
    assert daemon.status()["fps"] == 32  # flag beats environment


def test_secrets_never_appear(daemon_factory):
    """Even at debug level, with the Gemini client sending its key in a header that websockets would log."""
    from gemini_live_server import GeminiLiveTestServer
    secret, token, key = "bh-secret-8d7f6e", "tok-1a2b3c", "test-key"
    with GeminiLiveTestServer(valid_keys={key}) as live:
        daemon = daemon_factory("--api-secret", secret, "--token", token, "--server", "--host", "127.0.0.1", "--port", "0",
                                "--log-level", "debug", "--gemini-api-key", key, "--gemini-base-url", live.base_url,
                                "--gemini-ca-file", live.ca_path, env={"NO_PROXY": "127.0.0.1,localhost"})
        live.wait_for(lambda: live.connections, 10)
        status = daemon.ctl("status", "--json").stdout
        daemon.stop()
    assert "websockets" in daemon.log() or "avatard" in daemon.log()
    for text in (status, daemon.log()):
        assert secret not in text and token not in text and key not in text
    env = dict(daemon.env, BITHUMAN_API_SECRET=secret, AVATARD_TOKEN=token)
    helptext = subprocess.run([sys.executable, "-m", "avatard", "--help"], capture_output=True, text=True, env=env).stdout
    assert secret not in helptext and token not in helptext and "--api-secret" in helptext

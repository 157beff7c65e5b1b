"""Shared fixtures: a real avatard subprocess, driven through its real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from janus_server import JanusServer, entered
from netns import Network

READY_TIMEOUT = 20.0


class ControlClient:
    """A raw JSON-lines connection to the control socket (for event streams in tests)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def request(self, cmd: str, **fields) -> dict:
        self.sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        return self.read()

    def read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("daemon closed the control connection")
        return json.loads(line)

    def events_until(self, predicate, timeout: float) -> list[dict]:
        """Read events until ``predicate(event)`` is true; return all of them (last one included)."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self.read()
            seen.append(event)
            if predicate(event):
                return seen
        raise TimeoutError(f"no matching event within {timeout} s; last: {seen[-3:]}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Daemon:
    def __init__(self, proc: subprocess.Popen, socket_path: str, stderr_path: Path, env: dict) -> None:
        self.proc = proc
        self.socket = socket_path
        self.stderr_path = stderr_path
        self.env = env

    def ctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "avatarctl", "--socket", self.socket, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def control(self, timeout: float = 10.0) -> ControlClient:
        return ControlClient(self.socket, timeout)

    def status(self) -> dict:
        client = self.control()
        try:
            return client.request("status")
        finally:
            client.close()

    @property
    def port(self) -> int:
        return int(self.status()["server"].rsplit(":", 1)[1].strip("/"))

    def log(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout} s")


SERVER_ARGS = ("--server", "--host", "127.0.0.1", "--port", "0")


def start_daemon(tmp: Path, *args: str, env: dict | None = None, wait_ready: bool = True, local: bool = False,
                 preexec_fn=None) -> Daemon:
    """Start ``python -m avatard`` with a private control socket; wait for sd_notify READY=1.

    Server mode on a free loopback port unless ``args`` say ``--server`` themselves or ``local`` is set
    (plain ``avatard`` is the seed's local mode, which needs a display and sound devices).
    """
    if "--server" not in args and not local:
        args = (*SERVER_ARGS, *args)
    own = Path(tempfile.mkdtemp(prefix="d", dir=tmp))  # one per daemon: a test may start several
    socket_path = str(own / "avatard.sock")
    notify_path = str(own / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(READY_TIMEOUT)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "BITHUMAN_", "AVATARD_"))}
    full_env.update({"NOTIFY_SOCKET": notify_path, "PYTHONUNBUFFERED": "1", **(env or {})})
    stderr_path = own / "avatard.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "avatard", "--control-socket", socket_path, *args],
                                stdout=subprocess.DEVNULL, stderr=err, env=full_env, cwd=tmp, preexec_fn=preexec_fn)
    daemon = Daemon(proc, socket_path, stderr_path, full_env)
    try:
        if wait_ready:
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    message = notify.recv(4096).decode()
                except socket.timeout:
                    break
                if "READY=1" in message:
                    return daemon
            daemon.stop(signal.SIGKILL)
            raise RuntimeError(f"avatard did not become ready:\n{daemon.log()}")
        return daemon
    finally:
        notify.close()


@pytest.fixture
def tmp(tmp_path_factory) -> Path:
    # Unix socket paths are limited to 108 bytes; pytest's tmp paths can be longer.
    return Path(tempfile.mkdtemp(prefix="avd-", dir="/tmp"))


@pytest.fixture
def daemon_factory(tmp):
    started: list[Daemon] = []

    def factory(*args: str, **kwargs) -> Daemon:
        daemon = start_daemon(tmp, *args, **kwargs)
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory()


# The fake microphone of the browser tests (Chromium loops the file): one phrase, then a pause long enough for
# the daemon's end-of-utterance detector.
MIC_PHRASE = "Hello avatar, can you hear me?"
MIC_PAUSE_S = 1.5


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    from avatard.brains import tts
    from avatard.constants import RATE
    voice = tts.synthesize(MIC_PHRASE)
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, np.concatenate([voice, np.zeros(int(MIC_PAUSE_S * RATE), np.int16)]), RATE, subtype="PCM_16")
    return path


# -- Janus (tests/janus_server.py): the Debian janus in a network namespace of the test's own ---------------

JANUS_ADMIN_KEY = "adm1n-k3y-not-for-logs"  # must appear in no status, log or Janus log


@pytest.fixture
def janus_net():
    """The server namespace (avatard and Janus) and one client namespace (viewers), 198.18.0.0/15."""
    with Network(clients=1, tag="avj") as network:
        yield network


@pytest.fixture
def janus(janus_net, tmp_path):
    """Janus with its HTTP API and RTP input on the server end of client 1's link, ICE on the server's veths."""
    server = JanusServer(tmp_path / "janus", janus_net.server, address=janus_net.clients[0].server_address,
                         interface="vs", admin_key=JANUS_ADMIN_KEY).start()
    yield server
    server.kill()


@pytest.fixture
def viewers(janus_net):
    """aiortc viewers of Janus in the client namespace (their thread is started there)."""
    from janus_viewer import ViewerPool  # aiortc: imported only by the tests that watch (Python >= 3.11)
    with entered(janus_net.clients[0]):
        pool = ViewerPool()
    yield pool
    pool.close()

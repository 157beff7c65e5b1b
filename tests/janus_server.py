"""The real Debian ``janus`` for tests: a generated configuration directory, started without systemd.

The configuration follows the samples Debian ships in /etc/janus (janus.jcfg, janus.transport.http.jcfg,
janus.plugin.streaming.jcfg): only the HTTP transport (on the test's own address) and the streaming plugin
are loaded, no STUN server, ICE gathers only on the test's veth interface (``ice_enforce_list``: "the only
interfaces to use for ICE gathering"), and the streaming plugin demands ``admin_key`` for ``create``.
Janus runs inside the test's server namespace (tests/netns.py): libnice gathers no loopback candidates.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
from netns import CLONE_NEWNET, Namespace

PLUGINS = Path("/usr/lib/x86_64-linux-gnu/janus/plugins")
TRANSPORTS = Path("/usr/lib/x86_64-linux-gnu/janus/transports")
START_TIMEOUT = 15.0


@contextlib.contextmanager
def entered(namespace: Namespace):
    """Run the body with the calling *thread* inside ``namespace`` (setns(2) changes only this thread), then
    return it to where it was. Sockets, subprocesses and threads made meanwhile stay in the namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        namespace.enter()
        try:
            yield
        finally:
            if ctypes.CDLL(None, use_errno=True).setns(home, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace failed")
    finally:
        os.close(home)


def _all_but(folder: Path, keep: str) -> str:
    """Janus's ``disable`` lists: every library in ``folder`` except ``keep`` (its file names, comma-separated)."""
    return ",".join(sorted(p.name for p in folder.glob("*.so") if p.name != keep))


def write_config(directory: Path, *, address: str, port: int, interface: str, admin_key: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "janus.jcfg").write_text(f"""
general: {{
    configs_folder = "{directory}"
    plugins_folder = "{PLUGINS}"
    transports_folder = "{TRANSPORTS}"
    debug_level = 4
    session_timeout = 60
}}
certificates: {{}}
media: {{
    rtp_port_range = "20000-40000"
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{interface}"
}}
plugins: {{
    disable = "{_all_but(PLUGINS, 'libjanus_streaming.so')}"
}}
transports: {{
    disable = "{_all_but(TRANSPORTS, 'libjanus_http.so')}"
}}
events: {{
    broadcast = false
}}
""")
    (directory / "janus.transport.http.jcfg").write_text(f"""
general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    ip = "{address}"
    port = {port}
    https = false
}}
admin: {{
    admin_http = false
}}
cors: {{}}
""")
    (directory / "janus.plugin.streaming.jcfg").write_text(f"""
general: {{
    admin_key = "{admin_key}"
    rtp_port_range = "41000-42000"
    events = false
}}
""")
    return directory / "janus.jcfg"


def free_port(namespace: Namespace, address: str) -> int:
    with entered(namespace), socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class JanusServer:
    """One janus process in ``namespace``, its HTTP API on ``address``, ICE on the interfaces ``interface``
    names (Janus takes partial names: "vs" is every server-side veth); ``kill()`` is a crash (SIGKILL)."""

    def __init__(self, directory: Path, namespace: Namespace, *, address: str, interface: str, admin_key: str) -> None:
        self.directory = directory
        self.namespace = namespace
        self.address = address
        self.port = free_port(namespace, address)
        self.config = write_config(directory, address=address, port=self.port, interface=interface,
                                   admin_key=admin_key)
        self.log_path = directory / "janus.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/janus"

    def start(self) -> JanusServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["janus", "-C", str(self.config), "-F", str(self.directory), "-o"],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=self.namespace.enter)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"janus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.request("/info").get("janus") == "server_info":
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"janus did not answer on {self.url}:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, path: str = "", body: dict | None = None) -> dict:
        """One Janus API call from the test (for checks only; avatard has its own client)."""
        with entered(self.namespace), httpx.Client(timeout=5.0, trust_env=False) as http:
            response = http.post(self.url + path, json=body) if body is not None else http.get(self.url + path)
            return response.json()

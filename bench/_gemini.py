"""What the Gemini benches (latency.py, soak.py) share: the Live test server, a daemon wired to it, /metrics.

These two benches need the test tree: the Gemini brain has to talk to something, and the only Gemini that
costs nothing, answers deterministically and records when each of its messages left is
``tests/gemini_live_server.py`` (a real TLS Live API server that the daemon's real google-genai client
connects to). It runs in a thread of the bench's own process, so its ``SessionRecord.sent_at``
(``time.perf_counter()`` after each send) is on the same clock as the bench's ``time.perf_counter()``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import urllib.request

import _common as c
import attrs
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(c.REPO / "tests"))
from gemini_live_server import GeminiLiveTestServer  # noqa: E402  (needs the path above)

__all__ = ["GeminiLiveTestServer", "ServerProcess", "start_gemini_daemon", "start_local_daemon", "Histogram",
           "scrape_metrics", "is_silent", "rss_kib", "fd_count", "connect"]

BRAIN_TIMEOUT = 20.0  # the first Live session (TLS + setup) takes ~1 s; far longer means it is broken
METRICS_TIMEOUT = 10.0
AUDIO_HEADER = 18  # bytes before the PCM of an audio chunk (docs/protocol.md)


class ServerProcess:
    """The Live test server in a child process of its own, with the same ``base_url``/``ca_path`` and snapshots.

    In-process, the server's thread competes with the bench's WebSocket clients for one GIL: a
    ``realtime=False`` answer is a burst of ~70 messages encoded at once, right when the clients should
    be timing the first audio. In a child process it competes only for a core. ``sent_at`` stays comparable
    with this process's ``time.perf_counter()``: on Linux that is CLOCK_MONOTONIC, one clock for the whole
    machine. Snapshots (``sessions``, ``conversations``, ...) are fetched over a pipe, by attribute name.
    """

    def __init__(self, **options) -> None:
        self._options = options
        self._pipe = None
        self._process = None
        self.base_url: str | None = None
        self.ca_path: str | None = None

    def __enter__(self) -> "ServerProcess":
        context = multiprocessing.get_context("spawn")  # no copy of this process's sockets or threads
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._options), daemon=True,
                                        name="gemini-live-test-server")
        self._process.start()
        child.close()
        if not self._pipe.poll(BRAIN_TIMEOUT):
            self.__exit__()
            raise RuntimeError("the Live test server process did not start")
        self.base_url, self.ca_path = self._pipe.recv()
        return self

    def snapshot(self, name: str):
        self._pipe.send(name)
        return self._pipe.recv()

    @property
    def sessions(self) -> list:
        return self.snapshot("sessions")

    @property
    def conversations(self) -> dict:
        return self.snapshot("conversations")

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        try:
            self._pipe.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()
        self._process = None


def _serve(pipe, options) -> None:
    with GeminiLiveTestServer(**options) as server:
        pipe.send((server.base_url, server.ca_path))
        while (name := pipe.recv()) is not None:
            pipe.send(getattr(server, name))


def server_args(max_clients: int) -> list[str]:
    return ["--server", "--host", "127.0.0.1", "--port", "0", "--max-clients", str(max_clients),
            "--max-clients-per-ip", str(max_clients), "--log-level", "warning"]  # every client is on loopback


def start_gemini_daemon(server: GeminiLiveTestServer | ServerProcess, max_clients: int) -> c.Daemon:
    """``avatard --server`` with the Gemini brain pointed at ``server``; returns once the brain is connected."""
    # The daemon inherits our environment (minus GEMINI_*/GOOGLE_*): never send 127.0.0.1 through a proxy.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    daemon = c.Daemon.start("--gemini-api-key", "test-key", "--gemini-base-url", server.base_url,
                            "--gemini-ca-file", server.ca_path, *server_args(max_clients))
    try:
        deadline = time.monotonic() + BRAIN_TIMEOUT
        while (state := daemon.status()["brain_state"]) != "connected":
            if time.monotonic() > deadline or state == "failed":
                raise RuntimeError(f"Gemini brain is {state}, not connected:\n{daemon.log()[-3000:]}")
            time.sleep(0.05)
    except BaseException:
        daemon.kill()
        raise
    return daemon


def start_local_daemon(max_clients: int) -> c.Daemon:
    return c.Daemon.start(*server_args(max_clients))


async def connect(nursery: trio.Nursery, port: int) -> trio_websocket.WebSocketConnection:
    return await trio_websocket.connect_websocket(nursery, "127.0.0.1", port, "/ws", use_ssl=False,
                                                  receive_buffer_size=c.BROWSER_READ_BYTES)


def is_silent(audio_message: bytes) -> bool:
    """An audio chunk whose samples are all exactly zero (what the daemon sends when nobody speaks)."""
    return not audio_message[AUDIO_HEADER:].strip(b"\0")


# -- the daemon's own numbers ---------------------------------------------------------------------------

@attrs.frozen
class Histogram:
    """One Prometheus histogram as scraped: cumulative (upper bound, count) pairs, +Inf last."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def minus(self, earlier: "Histogram | None") -> "Histogram":
        """The observations made since ``earlier`` (a scrape of the same histogram)."""
        if earlier is None:
            return self
        return Histogram(tuple((le, n - m) for (le, n), (_, m) in zip(self.buckets, earlier.buckets)),
                         self.sum - earlier.sum, self.count - earlier.count)

    def bound(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (what ``avatarctl status`` shows as p95)."""
        if not self.count:
            return float("nan")
        return next(le for le, cumulative in self.buckets if cumulative >= q * self.count)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else float("nan")

    def summary_ms(self) -> str:
        if not self.count:
            return "no observations"
        bound = self.bound(0.95)
        bound_text = f"<= {bound * 1e3:g}" if bound != float("inf") else "> top bucket"
        # Interpolated quantiles are not shown: inside a wide first bucket (0-50 ms) they say nothing.
        return f"p95 {bound_text} ms (bucket), mean {self.mean * 1e3:.1f} ms, n={self.count:.0f}"


def scrape_metrics(port: int) -> dict[str, Histogram]:
    """GET /metrics; returns every histogram by name (counters and gauges are in ``status`` too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=METRICS_TIMEOUT) as reply:
        text = reply.read().decode()
    histograms = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        buckets, total, count = [], 0.0, 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
        histograms[family.name] = Histogram(tuple(sorted(buckets)), total, count)
    return histograms


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))

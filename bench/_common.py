"""What the benches share: a real avatard subprocess, its control socket, /proc CPU time, the README table.

Deliberately independent of ``tests/`` (benches must run from a checkout without the test tree on the
path). Daemons are started the way systemd would: with ``$NOTIFY_SOCKET`` pointing at a datagram socket
we own, and "ready" means the ``READY=1`` datagram arrived -- not a port answering, not a log line.

Every daemon started here is stopped on the way out, including on Ctrl-C and SIGTERM (which is turned
into ``SystemExit`` so ``finally`` blocks run); an ``atexit`` hook kills any that a crash left behind.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
README = BENCH_DIR / "README.md"
TABLE_HEADER = "| bench | command | machine | date | result | goal |"
TABLE_RULE = "|---|---|---|---|---|---|"

READY_TIMEOUT = 20.0  # a cold start on a loaded box takes ~2 s; ten times that means it is broken
STOP_TIMEOUT = 5.0  # the daemon promises to exit within 2 s of SIGTERM; more than that is a failure to report
CONTROL_TIMEOUT = 10.0
# What a benchmark's WebSocket client asks of each read: a browser reads in large chunks (trio-websocket's 4 KiB
# default costs the bench CPU it then competes with the daemon for).
BROWSER_READ_BYTES = 64 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Keys that would switch the daemon to a networked brain or renderer, or override its flags.
FOREIGN_ENV_PREFIXES = ("GOOGLE_", "GEMINI_", "BITHUMAN_", "AVATARD_")

_live: list["Daemon"] = []


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_sigterm)


@atexit.register
def _kill_leftovers() -> None:
    for daemon in list(_live):
        daemon.kill()


def daemon_env(notify_path: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
    env.pop("NOTIFY_SOCKET", None)
    if notify_path is not None:
        env["NOTIFY_SOCKET"] = notify_path
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """A running ``python -m avatard``; use as a context manager so it is always stopped."""

    def __init__(self, proc: subprocess.Popen, workdir: Path, socket_path: str, spawn_to_ready: float) -> None:
        self.proc = proc
        self.workdir = workdir
        self.socket = socket_path
        self.spawn_to_ready = spawn_to_ready  # seconds from Popen to the READY=1 datagram
        self.pid = proc.pid

    @classmethod
    def start(cls, *args: str, preexec_fn=None) -> "Daemon":
        """``preexec_fn``: e.g. entering a network namespace (bench/webrtc.py)."""
        workdir = Path(tempfile.mkdtemp(prefix="avb-", dir="/tmp"))  # short: Unix socket paths max 108 bytes
        socket_path = str(workdir / "ctl.sock")
        notify_path = str(workdir / "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        log = open(workdir / "avatard.log", "wb")
        try:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "avatard", "--control-socket", socket_path, *args],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                    env=daemon_env(notify_path), cwd=workdir,  # cwd: no stray ./.env
                                    preexec_fn=preexec_fn)
        finally:
            log.close()
        daemon = cls(proc, workdir, socket_path, float("nan"))
        _live.append(daemon)
        try:
            deadline = t0 + READY_TIMEOUT
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or proc.poll() is not None:
                    raise RuntimeError(f"avatard did not become ready (exit {proc.poll()}):\n{daemon.log()[-3000:]}")
                notify.settimeout(min(remaining, 0.5))
                try:
                    message = notify.recv(4096).decode(errors="replace")
                except socket.timeout:
                    continue
                if "READY=1" in message.split("\n"):
                    daemon.spawn_to_ready = time.perf_counter() - t0
                    return daemon
        except BaseException:
            daemon.kill()
            raise
        finally:
            notify.close()

    def log(self) -> str:
        try:
            return (self.workdir / "avatard.log").read_text(errors="replace")
        except OSError:
            return ""

    def request(self, cmd: str, **fields) -> dict:
        """One control-socket request/reply (the JSON lines ``avatarctl`` speaks)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONTROL_TIMEOUT)
            sock.connect(self.socket)
            sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline()
        if not line:
            raise ConnectionError("avatard closed the control connection")
        return json.loads(line)

    @property
    def port(self) -> int:
        """The WebSocket server's port (``--port 0`` lets the kernel pick it)."""
        return int(self.status()["server"].rsplit(":", 1)[1].strip("/"))

    def status(self) -> dict:
        return self.request("status")

    def avatarctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "avatarctl", "--socket", self.socket, *args],
                              capture_output=True, text=True, timeout=timeout, env=daemon_env(None))

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not go within STOP_TIMEOUT. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"warning: avatard {self.pid} ignored SIGTERM for {STOP_TIMEOUT} s; killing it", file=sys.stderr)
                self.kill()
        self._forget()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._forget()

    def _forget(self) -> None:
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces and parentheses; the fields after the last ")" are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def self_cpu_seconds() -> float:
    return process_cpu_seconds(os.getpid())


def percentile(values, p: float) -> float:
    """Nearest-rank-interpolated percentile (statistics.quantiles' 'inclusive' method); NaN if empty."""
    values = sorted(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    k = (len(values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release().split('-')[0]}, Python {platform.python_version()}"


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join([str(script), *sys.argv[1:]])


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(f"{str(c):<{w}}" for c, w in zip(row, widths)))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def update_readme(prefix: str, figures: list[tuple[str, str, str]]) -> None:
    """Replace this bench's rows (bench cell starting with ``prefix``) in README's table with ``figures``.

    ``figures`` are (bench, result, goal); command, machine and date are filled in here. Rows of other
    benches, and all text around the table, are kept. A README without the table gets one appended.
    """
    stamp = datetime.date.today().isoformat()
    mach, cmd = machine(), f"`{command_line()}`"
    new_rows = [f"| {_cell(b)} | {_cell(cmd)} | {_cell(mach)} | {stamp} | {_cell(r)} | {_cell(g)} |" for b, r, g in figures]
    lines = README.read_text().splitlines() if README.exists() else ["# avatard benchmarks", ""]
    try:
        start = lines.index(TABLE_HEADER)
    except ValueError:
        lines += ["", "## Results", "", TABLE_HEADER, TABLE_RULE]
        start = len(lines) - 2
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    kept = [row for row in lines[start + 2:end] if not row.split("|")[1].strip().startswith(prefix)]
    lines[start + 2:end] = kept + new_rows
    README.write_text("\n".join(lines) + "\n")
    print(f"\nupdated {len(new_rows)} row(s) in {README.relative_to(REPO)}")


def run_main(main) -> None:
    """Call ``main``; Ctrl-C or SIGTERM (daemons already stopped by then) exits quietly with 130 / 143."""
    try:
        main()
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is None)
        if not interrupted:
            raise
        print("\ninterrupted; daemons stopped", file=sys.stderr)
        sys.exit(130)

"""The unit file is valid (systemd-analyze verify) and the daemon speaks sd_notify as the unit expects."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).parent.parent / "systemd" / "avatard.service"


def test_unit_file_verifies(tmp):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install the 'systemd' package (scripts/test does)"
    avatard = Path(sys.executable).parent / "avatard"
    assert avatard.exists(), "avatard is not installed in this environment (pip install -e .)"
    unit = tmp / "avatard.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/avatard", str(avatard)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_has_the_promised_settings():
    text = UNIT.read_text()
    for line in ("Type=notify", "RuntimeDirectory=avatard", "EnvironmentFile=-/etc/avatard/avatard.env",
                 "Restart=on-failure", "SupplementaryGroups=audio video", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "StateDirectory=avatard", "LimitNOFILE=65536"):
        assert line in text.splitlines(), line
    assert any(l.startswith("WatchdogSec=") for l in text.splitlines())


def test_notify_ready_watchdog_and_stopping(daemon_factory, tmp):
    """READY=1 once listening (the fixture waits for it), WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
    notify_path = str(tmp / "notify2.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(10)
    daemon = daemon_factory(wait_ready=False, env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
    messages = []
    while "READY=1" not in messages:
        messages.append(sock.recv(4096).decode())
    assert os.path.exists(daemon.socket), "READY=1 comes only once the control socket listens"
    while messages.count("WATCHDOG=1") < 2:
        messages.append(sock.recv(4096).decode())
    daemon.proc.terminate()
    while "STOPPING=1" not in messages:
        messages.append(sock.recv(4096).decode())
    assert daemon.proc.wait(5) == 0

"""systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1), without a libsystemd dependency.

The protocol is one datagram per message to ``$NOTIFY_SOCKET`` (a leading '@' means the abstract
namespace). Outside systemd the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

logger = logging.getLogger("avatard.sd_notify")


def notify(message: str, environ=os.environ) -> bool:
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        logger.warning("sd_notify %r failed: %s", message, exc)
        return False
    return True


def watchdog_interval(environ=os.environ) -> float | None:
    """Half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled recommends), if the watchdog is on for us."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


async def watchdog(is_healthy) -> None:
    """Ping the watchdog while ``is_healthy()`` holds; a stuck renderer stops the pings and systemd restarts us."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if is_healthy():
            notify("WATCHDOG=1")
        await trio.sleep(interval)

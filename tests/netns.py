"""A network namespace of the test's own, for WebRTC tests (Janus, aiortc, Chromium).

WebRTC stacks offer no loopback ICE candidates (libnice in Janus, aioice, Chromium), so a test on 127.0.0.1
never connects. Each test gets a fresh namespace (``ip netns add``) with loopback up and a veth pair whose
ends carry addresses from 198.18.0.0/15 (RFC 2544's benchmarking range, never routed): traffic stays
inside the namespace, which disappears with the test.

:meth:`Netns.entered` moves the *calling thread* into the namespace with setns(2) (Python 3.11 has no
``os.setns``, hence ctypes) and back afterwards. Everything that thread then creates lives there: sockets,
subprocesses (the daemon, Janus, Playwright's driver and its Chromium), and threads it starts (aiortc's
asyncio loop). setns(CLONE_NEWNET) is allowed in a multi-threaded process; it changes only this thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess

import attrs

CLONE_NEWNET = 0x40000000  # <sched.h>
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@attrs.frozen
class Netns:
    name: str
    interface: str  # the veth end whose address the test's servers use (Janus's ice_enforce_list)
    address: str  # on ``interface``
    peer_address: str  # on the other end of the pair

    @contextlib.contextmanager
    def entered(self):
        """Run the body (in this thread) inside the namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield self
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)


@contextlib.contextmanager
def network_namespace(prefix: str = "avt"):
    """A fresh namespace with ``lo`` up and a veth pair 198.18.0.1/30 <-> 198.18.0.2/30; removed afterwards."""
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        _ip("-n", name, "addr", "add", "198.18.0.1/30", "dev", "veth0")
        _ip("-n", name, "addr", "add", "198.18.0.2/30", "dev", "veth1")
        _ip("-n", name, "link", "set", "veth0", "up")
        _ip("-n", name, "link", "set", "veth1", "up")
        yield Netns(name, "veth0", "198.18.0.1", "198.18.0.2")
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

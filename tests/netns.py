"""Private networks for the tests that need real, non-loopback addresses (WebRTC, Janus).

aioice never offers a loopback address as an ICE candidate (``aioice.ice.get_host_addresses`` skips
127.0.0.1 and ::1), and Chromium hides host addresses behind mDNS names, so a WebRTC test on 127.0.0.1 gets no
candidate pair. The tests therefore build their own network: a *server* namespace, where the daemon runs, and
one namespace per *client* (a browser, an aiortc viewer), each joined to the server by its own veth pair with
addresses from 198.18.0.0/15 (RFC 2544's benchmarking range: never routed anywhere). Every namespace has ``lo``
up. Nothing leaves these namespaces; traffic between them never touches the host's interfaces.

::

    with Network(clients=2) as net:
        daemon = start_daemon(tmp, "--server", "--host", "0.0.0.0", ..., preexec_fn=net.server.enter)
        url = f"http://{net.clients[0].server_address}:{port}/"     # what client 0 opens
        chromium = net.clients[0].wrap("/usr/bin/chromium", tmpdir)  # an executable that runs inside it
        net.clients[1].down()                                       # client 1 loses its network

Client ``i`` (from 1) has the link 198.18.i.0/24: the server end is 198.18.i.1, the client end 198.18.i.2.
Leaving the ``with`` deletes the namespaces (which deletes their veths), whatever happened; a namespace left
behind by a killed run is deleted by the next run that picks the same name (names carry the pid).
Needs root (``ip netns add``) and iproute2.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
from pathlib import Path

CLONE_NEWNET = 0x40000000  # <sched.h>
NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts the namespaces
MAX_CLIENTS = 250  # one /24 of 198.18.0.0/15 each


def ip(*args: str) -> None:
    """Run ``ip ARGS``; raise with ip's own message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Namespace:
    """One network namespace made by ``ip netns add``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create(self) -> None:
        if (NETNS_DIR / self.name).exists():  # a leftover of a killed run with the same pid
            ip("netns", "delete", self.name)
        ip("netns", "add", self.name)
        # IPv4 only. With IPv6 on, each veth's link-local address finishes duplicate address detection ~1 s
        # after the link comes up; Chromium's address tracker sees that change and aborts every load in
        # flight with net::ERR_NETWORK_CHANGED (seen in CI: a page whose app.js never arrived). The tests
        # use 198.18.0.0/15 alone, so the namespaces have no IPv6 to settle. Set before any link exists:
        # links made later take the namespace's "default".
        # (/proc/sys, not sysctl(8): a bare Debian has no procps; a kernel without IPv6 has nothing to do.)
        done = subprocess.run([*self.prefix(), "sh", "-c", "[ ! -d /proc/sys/net/ipv6 ] || for c in all default; do "
                               "echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6 || exit 1; done"],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"disabling IPv6 in {self.name}: {done.stderr.strip()}")
        self.ip("link", "set", "lo", "up")

    def delete(self) -> None:
        if (NETNS_DIR / self.name).exists():
            ip("netns", "delete", self.name)

    def ip(self, *args: str) -> None:
        ip("-n", self.name, *args)

    def prefix(self) -> list[str]:
        """A command prefix that runs the rest inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def enter(self) -> None:
        """Move the calling process into this namespace: a ``preexec_fn`` for ``subprocess.Popen``."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(NETNS_DIR / self.name, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), f"setns into {self.name} failed")
        finally:
            os.close(fd)

    def wrap(self, executable: str, directory: Path) -> str:
        """Write an executable script into ``directory`` that runs ``executable`` (with its arguments) inside
        this namespace; for launchers that take a path and no preexec hook (Playwright's ``executable_path``)."""
        script = Path(directory) / f"{Path(executable).name}-in-{self.name}"
        script.write_text(f'#!/bin/sh\nexec {" ".join(self.prefix())} {executable} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return str(script)


class Client(Namespace):
    """A client namespace and its veth link to the server namespace."""

    def __init__(self, name: str, index: int, server: Namespace) -> None:
        super().__init__(name)
        self.index = index
        self.server = server
        self.server_address = f"198.18.{index}.1"
        self.address = f"198.18.{index}.2"
        self.server_veth = f"vs{index}"  # veth names: at most 15 characters, unique inside each namespace
        self.veth = f"vc{index}"

    def connect(self) -> None:
        self.server.ip("link", "add", self.server_veth, "type", "veth", "peer", "name", self.veth, "netns", self.name)
        self.server.ip("addr", "add", f"{self.server_address}/24", "dev", self.server_veth)
        self.ip("addr", "add", f"{self.address}/24", "dev", self.veth)
        self.server.ip("link", "set", self.server_veth, "up")
        self.ip("link", "set", self.veth, "up")

    def down(self) -> None:
        """Cut this client off (both ends of its link down): its packets go nowhere, the others' are untouched."""
        self.ip("link", "set", self.veth, "down")
        self.server.ip("link", "set", self.server_veth, "down")

    def up(self) -> None:
        self.server.ip("link", "set", self.server_veth, "up")
        self.ip("link", "set", self.veth, "up")


class Network:
    """A server namespace and ``clients`` client namespaces, each on its own veth link (see the module docstring)."""

    def __init__(self, clients: int = 1, tag: str = "avt") -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients must be 1..{MAX_CLIENTS}, got {clients}")
        base = f"{tag}-{os.getpid()}"
        self.server = Namespace(f"{base}-s")
        self.clients = [Client(f"{base}-c{i}", i, self.server) for i in range(1, clients + 1)]

    def __enter__(self) -> Network:
        try:
            self.server.create()
            for client in self.clients:
                client.create()
                client.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace (their veths go with them). Safe to call twice."""
        for namespace in (*self.clients, self.server):
            namespace.delete()

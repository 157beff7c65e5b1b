"""The names and addresses a browser may use to reach this host: what a self-signed certificate must cover.

Linux only, like the rest of the daemon (systemd, ``/proc``): IPv4 addresses come from the
``SIOCGIFADDR`` ioctl per interface (one primary address each; secondary addresses of one interface are
not listed), IPv6 addresses from ``/proc/net/if_inet6``. Link-local addresses are left out: a URL with
one needs a zone id, which browsers do not accept.

Rejected: ``socket.getfqdn()`` and resolving the host name, which ask DNS and can block for seconds on
an offline edge box; and connecting a UDP socket to learn the default route's address, which misses
every other interface and fails without a default route.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from ..constants import WILDCARD_HOSTS

SIOCGIFADDR = 0x8915  # <linux/sockios.h>: get an interface's (primary) IPv4 address
IF_INET6 = "/proc/net/if_inet6"  # one line per IPv6 address: hex address, index, prefix, scope, flags, name
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def interface_addresses() -> list[Address]:
    """Every non-link-local address configured on this host's interfaces, loopback included."""
    found: list[Address] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                # struct ifreq: 16 bytes of name, then the sockaddr_in (family, port, address at offset 20).
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            found.append(ipaddress.IPv4Address(reply[20:24]))
    try:
        with open(IF_INET6) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []  # IPv6 disabled
    for line in lines:
        found.append(ipaddress.IPv6Address(bytes.fromhex(line.split()[0])))
    return [address for address in dict.fromkeys(found) if not address.is_link_local]


def certificate_names(listen_host: str) -> tuple[list[str], list[Address]]:
    """(DNS names, IP addresses) for a server listening on ``listen_host``.

    Always ``localhost``, the loopback addresses, the host name and its mDNS ``.local`` name (what
    avahi announces on a LAN without DNS); then the listening address, or every interface's address
    when it listens on all of them.
    """
    names = ["localhost"]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(hostname)
        if "." not in hostname:
            names.append(f"{hostname}.local")
    addresses: list[Address] = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
    if listen_host in WILDCARD_HOSTS:
        addresses += interface_addresses()
    else:
        try:
            addresses.append(ipaddress.ip_address(listen_host))
        except ValueError:
            names.append(listen_host.lower())  # a host name given with --host
    return list(dict.fromkeys(names)), list(dict.fromkeys(addresses))

"""Who may hold a connection to the server port, and how many: the limits a stranger on the LAN meets first.

Every TCP connection registers here from accept to close, in one of two stages:

- *pending*: reading the request head, in the WebSocket handshake, or being answered (a page, /healthz).
  At most ``max_pending`` at once. A new connection past the cap closes the oldest pending connection
  of the address that holds the most of them, so a flood of idle sockets costs the flooder its own
  oldest sockets, never another address's, and the file-descriptor table stays bounded.
- *client*: a WebSocket session. At most ``max_per_address`` per remote address (the global
  ``--max-clients`` is the server's rule, checked beside this one).

Rejected: refusing the *new* connection when the pending table is full. The flooder, who renews idle
sockets faster than anyone else connects, would keep the table and lock out every legitimate request;
closing the oldest means a request that sends its head promptly is always served.
"""

from __future__ import annotations

import collections
import logging

import attrs
import trio

logger = logging.getLogger("avatard.guard")


@attrs.define(eq=False)
class Connection:
    """One TCP connection; cancelling ``scope`` closes it (its handler's ``finally`` closes the socket)."""

    address: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    is_client: bool = False


class Guard:
    def __init__(self, *, max_pending: int, max_per_address: int) -> None:
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        # address -> its pending connections, oldest first
        self._pending: dict[str, collections.deque[Connection]] = collections.defaultdict(collections.deque)
        self._pending_count = 0
        self._clients: collections.Counter[str] = collections.Counter()
        self.evicted = 0  # pending connections closed to make room

    @property
    def pending(self) -> int:
        return self._pending_count

    def enter(self, address: str) -> Connection:
        """Register a freshly accepted connection as pending; past the cap, close the oldest (see above)."""
        connection = Connection(address)
        self._pending[address].append(connection)
        self._pending_count += 1
        while self._pending_count > self.max_pending:
            self.evict_oldest()
        return connection

    def evict_oldest(self) -> bool:
        """Close the oldest pending connection of the address holding the most; False if none is pending."""
        if not self._pending_count:
            return False
        address = max(self._pending, key=lambda a: len(self._pending[a]))
        victim = self._pending[address].popleft()
        self._forget_address(address)
        self._pending_count -= 1
        self.evicted += 1
        victim.scope.cancel()
        return True

    def promote(self, connection: Connection) -> bool:
        """The connection becomes a WebSocket client; False (and it stays pending) if its address is full."""
        if self._clients[connection.address] >= self.max_per_address:
            return False
        self._drop_pending(connection)
        connection.is_client = True
        self._clients[connection.address] += 1
        return True

    def leave(self, connection: Connection) -> None:
        if connection.is_client:
            self._clients[connection.address] -= 1
            if not self._clients[connection.address]:
                del self._clients[connection.address]
            connection.is_client = False
        else:
            self._drop_pending(connection)

    def _drop_pending(self, connection: Connection) -> None:
        queue = self._pending.get(connection.address)
        if queue is not None and connection in queue:  # an evicted connection is already gone
            queue.remove(connection)
            self._pending_count -= 1
            self._forget_address(connection.address)

    def _forget_address(self, address: str) -> None:
        if not self._pending[address]:
            del self._pending[address]

"""Which Redis subscriptions are wanted, by whom, and what each connection has confirmed.

One model for classic and sharded pub/sub:

* :class:`Entry`: one Redis subscription (a channel, a pattern or a sharded channel) and
  the subscribers sharing it; ``confirmed`` is set once Redis acknowledged it on the
  connection that serves it.
* :class:`Registry`: the entries of one :class:`Kind`, reference counted: 1,000
  subscriptions to 50 channels are 50 entries. The first subscriber creates an entry, the
  last one out drops it.
* :class:`Ledger`: one connection's side. Which entries the connection serves, which are
  not sent yet, which must be unsubscribed, and the confirmations Redis owes. Redis
  answers subscription commands in command order, one ``[kind, name, count]`` per name, so
  :meth:`Ledger.confirm` matches each reply to the entry waiting for it; an error reply
  (MOVED) answers a whole command (:meth:`Ledger.reject`). A *marker* command sent last on
  a new connection (the liveness channel's SUBSCRIBE, or a PING) sets ``ready``: every
  resubscription before it was confirmed.

The classic connection's ledger serves the entries of two registries (channels and
patterns); each node's sharded connection serves the entries the router assigned to it,
and an entry moves from one ledger to another when its slot moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Iterable
from typing import Final, Generic, TypeVar

from redis.crc import key_slot

T = TypeVar("T")
Node = tuple[str, int] | None
"""A node's address; None outside cluster mode (the server, or Sentinel's primary)."""
BATCH: Final = 512
"""Names per subscription command, to keep single commands small."""


class ProtocolError(Exception):
    """A subscriber connection sent something we did not expect: drop and reconnect."""


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """One kind of Redis subscription: its commands and the prefix of its names on the wire.

    ``sharded`` entries are grouped by hash slot (Redis refuses a sharded command whose
    channels span several slots).
    """

    subscribe: str
    unsubscribe: str
    prefix: bytes
    sharded: bool = False

    def key(self, name: str) -> bytes:
        """``name`` as sent to Redis (prefix included)."""
        return self.prefix + name.encode()


class Entry(Generic[T]):
    """One Redis subscription, shared by all its subscribers (``subs``).

    ``key`` is the name as sent (prefix included); ``slot`` its hash slot for a sharded
    channel, else None. ``confirmed`` is set once Redis acknowledged it on its connection
    (and when it is dropped, so no waiter is left behind); it is cleared whenever it stops
    being subscribed. ``ledger`` is the connection serving it (None once dropped), ``node``
    that connection's node (sharded). ``lost`` is set while a confirmed entry is not
    subscribed anywhere (connection lost, slot moved); ``error`` is the server's reason
    when it refused the entry for good (NOPERM, or no sharded pub/sub before Redis 7).
    """

    __slots__ = (
        "confirmed",
        "error",
        "key",
        "kind",
        "ledger",
        "lost",
        "name",
        "node",
        "slot",
        "subs",
    )

    def __init__(self, kind: Kind, name: str, key: bytes) -> None:
        self.kind = kind
        self.name = name
        self.key = key
        self.subs: set[T] = set()
        self.confirmed = asyncio.Event()
        self.slot: int | None = key_slot(key) if kind.sharded else None
        self.ledger: Ledger[T] | None = None
        self.node: Node = None
        self.lost = False
        self.error: str | None = None


class Registry(Generic[T]):
    """The wanted entries of one :class:`Kind`, keyed by their name on the wire."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.entries: dict[bytes, Entry[T]] = {}

    def key(self, name: str) -> bytes:
        """``name`` as sent to Redis."""
        return self.kind.prefix + name.encode()

    def acquire(self, name: str, owner: T) -> tuple[Entry[T], bool]:
        """Add ``owner`` to the entry for ``name``; the entry, and whether it is new."""
        key = self.kind.prefix + name.encode()
        entry = self.entries.get(key)
        created = entry is None
        if entry is None:
            entry = self.entries[key] = Entry(self.kind, name, key)
        entry.subs.add(owner)
        return entry, created

    def release(self, key: bytes, owner: T) -> Entry[T] | None:
        """Remove ``owner``; returns the entry when that was its last subscriber (dropped)."""
        entry = self.entries.get(key)
        if entry is None or owner not in entry.subs:
            return None
        entry.subs.discard(owner)
        if entry.subs or not self.discard(entry):
            return None
        return entry

    def discard(self, entry: Entry[T]) -> bool:
        """Drop ``entry`` whoever holds it, waking its waiters; False if it was not here.

        The caller removes it from its ledger.
        """
        if self.entries.get(entry.key) is not entry:
            return False
        del self.entries[entry.key]
        entry.confirmed.set()
        return True

    def close(self) -> None:
        """Forget every entry, waking any waiter."""
        for entry in self.entries.values():
            entry.confirmed.set()
        self.entries.clear()


class _Sent(Generic[T]):
    """One command in flight: the replies it will get (one per name), or one error."""

    __slots__ = ("kind", "marker", "names")

    def __init__(
        self, kind: bytes, names: Iterable[tuple[bytes, Entry[T] | None]], marker: bool = False
    ) -> None:
        self.kind = kind
        self.names = deque(names)
        self.marker = marker


class Ledger(Generic[T]):
    """One subscriber connection's entries and the replies Redis owes it (module docstring).

    ``marker`` is the command sent last on every new connection (after the
    resubscription); its reply, ``[marker_reply, marker[-1], ...]``, sets ``ready``.
    """

    def __init__(self, marker: tuple[str | bytes, ...], marker_reply: bytes) -> None:
        self.served: dict[Entry[T], None] = {}  # insertion-ordered set
        self.ready = asyncio.Event()
        self.regained = False
        """Set when a lost entry was confirmed again; the reader clears it."""
        self._unsent: dict[Entry[T], None] = {}
        self._gone: dict[Entry[T], None] = {}
        self._marker = marker
        self._marker_reply = marker_reply
        self._marker_sent = False
        self._ping: bytes | None = None
        self._expect: deque[_Sent[T]] = deque()

    def add(self, entry: Entry[T]) -> None:
        """Serve ``entry`` on this connection (subscribed by the next command batch)."""
        entry.ledger = self
        self.served[entry] = None
        self._unsent[entry] = None
        self._gone.pop(entry, None)

    def remove(self, entry: Entry[T]) -> None:
        """Stop serving ``entry``; unsubscribes it if it was sent."""
        if entry.ledger is not self:
            return
        entry.ledger = None
        del self.served[entry]
        if self._unsent.pop(entry, False) is False:
            self._gone[entry] = None

    def resend(self, entry: Entry[T]) -> None:
        """``entry`` is no longer subscribed here (Redis dropped or refused it): subscribe
        it again with the next batch, unless it moved away meanwhile."""
        if entry.ledger is self:
            self._unsent[entry] = None

    def ping(self, token: bytes) -> None:
        """Send ``PING token`` with the next batch; its reply is ``[b"pong", token]``."""
        self._ping = token

    def reset(self) -> None:
        """A new (or lost) connection: nothing is subscribed or confirmed on it."""
        self._unsent = dict(self.served)
        self._gone.clear()
        self._ping = None
        self._marker_sent = False
        self._expect.clear()
        self.ready.clear()
        for entry in self.served:
            entry.confirmed.clear()

    def close(self) -> None:
        """Drop everything and wake every waiter."""
        for entry in self.served:
            entry.confirmed.set()
            entry.ledger = None
        self.served.clear()
        self._unsent.clear()
        self._gone.clear()
        self._expect.clear()
        self.ready.set()

    def pending_commands(self) -> list[tuple[str | bytes, ...]]:
        """Commands that bring the connection up to date (unsubscribes first)."""
        commands: list[tuple[str | bytes, ...]] = []
        if self._gone:
            self._add(commands, self._gone, subscribe=False)
            self._gone.clear()
        if self._unsent:
            self._add(commands, self._unsent, subscribe=True)
            self._unsent.clear()
        if not self._marker_sent:
            self._marker_sent = True
            commands.append(self._marker)
            name = self._marker[-1]
            assert isinstance(name, bytes)
            self._expect.append(_Sent(self._marker_reply, [(name, None)], marker=True))
        if self._ping is not None:
            commands.append(("PING", self._ping))
            self._expect.append(_Sent(b"pong", [(self._ping, None)]))
            self._ping = None
        return commands

    def _add(
        self, commands: list[tuple[str | bytes, ...]], entries: Iterable[Entry[T]], subscribe: bool
    ) -> None:
        groups: dict[tuple[str, int | None], list[tuple[bytes, Entry[T] | None]]] = {}
        for entry in entries:
            command = entry.kind.subscribe if subscribe else entry.kind.unsubscribe
            groups.setdefault((command, entry.slot), []).append(
                (entry.key, entry if subscribe else None)
            )
        for (command, _), names in groups.items():
            reply = command.lower().encode()
            for start in range(0, len(names), BATCH):
                chunk = names[start : start + BATCH]
                commands.append((command, *(key for key, _ in chunk)))
                self._expect.append(_Sent(reply, chunk))

    def confirm(self, kind: bytes, name: bytes) -> bool:
        """Match a ``[kind, name, ...]`` reply to what waits for it.

        False for an unsolicited ``sunsubscribe`` (the node gave the slot away); raises
        :class:`ProtocolError` for any other reply nothing waits for.
        """
        # A push for a channel whose own SUNSUBSCRIBE is in flight is taken for its reply;
        # the real reply then comes as an error (MOVED) and is matched to the next command:
        # a ProtocolError a little later, and a reconnect. Rare, and safe.
        head = self._expect[0] if self._expect else None
        if head is None or head.kind != kind or head.names[0][0] != name:
            if kind == b"sunsubscribe":
                return False
            raise ProtocolError(f"unexpected {kind!r} reply on a subscriber connection")
        _, entry = head.names.popleft()
        if not head.names:
            self._expect.popleft()
            if head.marker:
                self.ready.set()
        # Only for an entry still served here: one moved away meanwhile is not subscribed
        # where it now lives.
        if entry is not None and entry.ledger is self:
            entry.confirmed.set()
            if entry.lost:
                entry.lost = False
                self.regained = True
        return True

    def reject(self) -> tuple[bytes, list[Entry[T]]]:
        """An error reply: the kind of the command it answers, and its entries still
        served here. Raises :class:`ProtocolError` when no command is waiting."""
        if not self._expect:
            raise ProtocolError("unexpected error reply on a subscriber connection")
        sent = self._expect.popleft()
        return sent.kind, [e for _, e in sent.names if e is not None and e.ledger is self]

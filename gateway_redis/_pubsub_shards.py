"""Sharded pub/sub (SPUBLISH/SSUBSCRIBE): one supervised connection per node that owns
subscribed sharded channels. Private to :mod:`gateway_redis.pubsub`.

A sharded channel lives in the hash slot of its name (the name on the wire, channel prefix
included, ``{hash tags}`` honoured), like a key: SPUBLISH goes to the slot's primary, which
delivers to its own subscribers only (and its replicas), never over the cluster bus. So
each channel is subscribed on a connection to the node that owns its slot:

* :class:`Shards` keeps every sharded channel wanted by the hub (:class:`ShardEntry`,
  reference counted like classic ones) and assigns each to a node: the node already
  serving that slot, else the owner in the cluster client's slot map. Outside cluster
  mode there is one "node": the server (Sentinel: the current primary).
* :class:`ShardListener` drives one node's connection with the machinery of the classic
  one (:class:`~gateway_redis._pubsub_conn.Supervisor`: confirmed subscriptions, reconnect
  with backoff, health votes). SSUBSCRIBE goes out one command per slot (Redis refuses
  channels of several slots in one command); a ``PING`` sent last marks the end of a
  resubscription, and later PINGs on the same connection check liveness.
* Following the slot: Redis answers SSUBSCRIBE for a slot the node does not own with
  ``MOVED slot host:port`` (the channels move there at once), and pushes an unsolicited
  ``sunsubscribe`` when the node loses a slot (resharding, or demotion to replica after a
  failover): those channels are subscribed again on the same connection, which answers
  MOVED to the new owner. When a node's connection fails, the router asks a live node for
  ``CLUSTER SLOTS`` (on connections of its own: the command client is left alone) and
  moves the channels of slots that changed owner, a few times a second until every
  listener is up again (a failover takes ``cluster-node-timeout`` and then some).

Every subscription that was confirmed and then lost this way is reported to the hub
(``on_lost``: gap marks, disconnect listeners) and, once subscribed again wherever it now
lives, ``on_regained`` runs (reconnect listeners: the WebSocket bridge sends ``resync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from redis import exceptions as rexc
from redis.crc import key_slot

from gateway_redis import _driver
from gateway_redis._pubsub_conn import (
    _BATCH,
    _YIELD_EVERY,
    Deliver,
    Entry,
    ProtocolError,
    Supervisor,
)
from gateway_redis.support import cancel_and_wait, describe_error, log_fields

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from gateway_redis.client import RedisClient

T = TypeVar("T")
Node = tuple[str, int] | None
"""A node's address; None outside cluster mode (the server, or Sentinel's primary)."""

_log = logging.getLogger("gateway_redis.pubsub")
_MARKER: Final = b"ready"  # the PING argument that ends a resubscription
_REFRESH_EVERY: Final = 0.2  # seconds between slot-map lookups while a node is failing
_MAX_HOPS: Final = 5  # MOVED replies followed for one slot within a second before backing off
# Errors that say the cluster is changing, not that the channel is refused: reconnect.
_TRANSIENT: Final = (rexc.AskError, rexc.TryAgainError, rexc.ClusterDownError)


class ShardedNames:
    """Which channels are sharded: exact names and prefixes (entries ending in ``*``)."""

    __slots__ = ("_exact", "_prefixes", "entries")

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = entries
        self._exact = frozenset(e for e in entries if not e.endswith("*"))
        self._prefixes = tuple(e[:-1] for e in entries if e.endswith("*"))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, name: str) -> bool:
        """True if ``name`` (as the caller writes it) is a sharded channel."""
        return name in self._exact or name.startswith(self._prefixes)

    def pattern_overlap(self, pattern: str) -> str | None:
        """``"all"`` if every channel ``pattern`` can match is sharded, ``"some"`` if some
        may be, None if none can be. Judged on the pattern's literal start (up to its
        first ``*``, ``?``, ``[`` or ``\\``), so ``"some"`` may be a false alarm."""
        literal, exact = pattern, True
        for i, char in enumerate(pattern):
            if char in "*?[\\":
                literal, exact = pattern[:i], False
                break
        some = False
        for entry in self.entries:
            if entry.endswith("*"):
                stem = entry[:-1]
                if literal.startswith(stem):
                    return "all"
                some = some or (not exact and stem.startswith(literal))
            elif exact:
                if entry == pattern:
                    return "all"
            else:
                some = some or entry.startswith(literal)
        return "some" if some else None


class ShardEntry(Entry[T]):
    """A sharded channel: an :class:`Entry` with its hash slot and the node serving it.

    ``lost`` is set when it was confirmed and then stopped being subscribed (connection
    lost, slot moved), until it is confirmed again. ``error`` is the server's reason when
    it refused the channel for good (NOPERM, or no sharded pub/sub before Redis 7).
    """

    __slots__ = ("error", "lost", "node", "slot")

    def __init__(self, name: str, wire: bytes) -> None:
        super().__init__(name, wire)
        self.slot = key_slot(wire)
        self.node: Node = None
        self.lost = False
        self.error: str | None = None


class _Sent(Generic[T]):
    """One command in flight: the replies it will get, one per name, or one error."""

    __slots__ = ("kind", "names")

    def __init__(self, kind: bytes, names: list[tuple[bytes, ShardEntry[T] | Entry[T] | None]]):
        self.kind = kind
        self.names = deque(names)


class ShardWire(Generic[T]):
    """The sharded channels assigned to one node's connection, and what it was told.

    Redis answers each SSUBSCRIBE/SUNSUBSCRIBE with one confirmation per channel, or one
    error for the whole command (MOVED), so expectations are kept per command. A ``PING``
    sent last on a new connection confirms ``liveness`` (everything before it answered);
    later PINGs (``ping``) are the liveness check.
    """

    def __init__(self) -> None:
        self.entries: dict[bytes, ShardEntry[T]] = {}
        self.unsent: dict[bytes, ShardEntry[T]] = {}
        self.gone: dict[bytes, int] = {}  # wire name -> slot, to SUNSUBSCRIBE
        self.liveness: Entry[T] = Entry("", _MARKER)
        self.ping: bytes | None = None
        self.regained = False  # a lost entry was confirmed again (read by the listener)
        self._marker_sent = False
        self._expect: deque[_Sent[T]] = deque()

    @property
    def wanted(self) -> bool:
        """A connection is needed while channels are assigned here."""
        return bool(self.entries)

    def summary(self) -> str:
        """What is subscribed, for logs."""
        return f"{len(self.entries)} sharded channels"

    def add(self, entry: ShardEntry[T]) -> None:
        """Serve ``entry`` here (subscribed by the next command batch)."""
        self.entries[entry.wire] = entry
        self.unsent[entry.wire] = entry
        self.gone.pop(entry.wire, None)

    def remove(self, key: bytes) -> None:
        """Stop serving ``key``; unsubscribes it if it was sent."""
        entry = self.entries.pop(key, None)
        if entry is not None and self.unsent.pop(key, None) is None:
            self.gone[key] = entry.slot

    def resend(self, key: bytes) -> None:
        """``key`` is no longer subscribed on this connection (Redis dropped or refused
        it): subscribe again with the next batch, or drop silently if it moves away."""
        entry = self.entries.get(key)
        if entry is not None:
            self.unsent[key] = entry

    def reset(self) -> None:
        """A new (or lost) connection: nothing is subscribed or confirmed on it."""
        self.unsent = dict(self.entries)
        self.gone.clear()
        self.ping = None
        self._marker_sent = False
        self._expect.clear()
        self.liveness.confirmed.clear()
        for entry in self.entries.values():
            entry.confirmed.clear()

    def pending_commands(self) -> list[tuple[str | bytes, ...]]:
        """Commands that bring the connection up to date (unsubscribes first)."""
        commands: list[tuple[str | bytes, ...]] = []
        if self.gone:
            gone = [(key, slot, None) for key, slot in self.gone.items()]
            self._add(commands, "SUNSUBSCRIBE", gone)
            self.gone.clear()
        if self.unsent:
            unsent = [(key, entry.slot, entry) for key, entry in self.unsent.items()]
            self._add(commands, "SSUBSCRIBE", unsent)
            self.unsent.clear()
        if not self._marker_sent:
            self._marker_sent = True
            commands.append(("PING", _MARKER))
            self._expect.append(_Sent(b"pong", [(_MARKER, self.liveness)]))
        if self.ping is not None:
            commands.append(("PING", self.ping))
            self._expect.append(_Sent(b"pong", [(self.ping, None)]))
            self.ping = None
        return commands

    def _add(
        self,
        commands: list[tuple[str | bytes, ...]],
        command: str,
        items: Sequence[tuple[bytes, int, ShardEntry[T] | None]],
    ) -> None:
        by_slot: dict[int, list[tuple[bytes, ShardEntry[T] | None]]] = {}
        for key, slot, entry in items:
            by_slot.setdefault(slot, []).append((key, entry))
        reply = command.lower().encode()
        for names in by_slot.values():
            for start in range(0, len(names), _BATCH):
                chunk = names[start : start + _BATCH]
                commands.append((command, *(key for key, _ in chunk)))
                self._expect.append(_Sent(reply, list(chunk)))

    def confirm(self, kind: bytes, name: bytes) -> bool:
        """Match a ``[kind, name, ...]`` reply. False for an unsolicited ``sunsubscribe``
        (the node gave the slot away); raises :class:`ProtocolError` if unexpected."""
        # A push for a channel whose own SUNSUBSCRIBE is in flight is taken for its reply;
        # the real reply then comes as an error (MOVED) and is matched to the next command:
        # a ProtocolError a little later, and a reconnect. Rare, and safe.
        head = self._expect[0] if self._expect else None
        if head is None or head.kind != kind or head.names[0][0] != name:
            if kind == b"sunsubscribe":
                return False
            raise ProtocolError(f"unexpected {kind!r} reply on a sharded subscriber connection")
        _, entry = head.names.popleft()
        if not head.names:
            self._expect.popleft()
        # Only for an entry still served here: one moved away meanwhile is not subscribed
        # where it now lives.
        if entry is self.liveness or (entry is not None and self.entries.get(name) is entry):
            assert entry is not None
            entry.confirmed.set()
            if isinstance(entry, ShardEntry) and entry.lost:
                entry.lost = False
                self.regained = True
        return True

    def reject(self) -> tuple[bytes, list[ShardEntry[T]]]:
        """An error reply: the command it answers, and its entries still served here."""
        if not self._expect:
            raise ProtocolError("unexpected error reply on a sharded subscriber connection")
        sent = self._expect.popleft()
        entries = [
            entry
            for key, entry in sent.names
            if isinstance(entry, ShardEntry) and self.entries.get(key) is entry
        ]
        return sent.kind, entries

    def close(self) -> None:
        """Drop everything and wake every waiter."""
        for entry in self.entries.values():
            entry.confirmed.set()
        self.entries.clear()
        self.unsent.clear()
        self.gone.clear()
        self.liveness.confirmed.set()
        self._expect.clear()


class ShardListener(Supervisor[T]):
    """One node's sharded subscriber connection (see the module docstring).

    Liveness: after ``liveness_interval`` seconds of silence a ``PING`` goes out on the
    connection itself; no answer within ``liveness_timeout`` means it is dead. A sharded
    channel's messages come only from this node's shard, so the connection answering in
    order is what matters; that the node still serves the slots is for Redis to say, and
    it does (``sunsubscribe``, MOVED).

    Health: in cluster mode a node that cannot be reached or stopped answering is one
    node, not Redis: it is marked unreachable in the client's per-node health (calls
    routed to it fail fast; the health probe clears the mark when it answers), and the
    hub reports itself not ``connected``, but the client stays up. Outside cluster mode
    the node is the server, and the listener holds the client down like the classic one.
    """

    _task_name = "gateway-redis-pubsub-shard"

    def __init__(self, shards: Shards[T], node: Node) -> None:
        self.wire: ShardWire[T] = ShardWire()
        super().__init__(
            shards.client,
            self.wire,
            deliver=shards.deliver,
            on_lost=_nothing,
            on_reconnect=_nothing,
            on_failed=shards.on_failed,
            liveness_interval=shards.liveness_interval,
            liveness_timeout=shards.liveness_timeout,
        )
        self.node = node
        self._shards = shards
        self._source = "pubsub shard" if node is None else f"pubsub shard {node[0]}:{node[1]}"
        self._token: tuple[bytes, asyncio.Future[None]] | None = None
        self._token_seq = 0

    def _open_connection(self) -> AbstractConnection:
        config = self._client.config
        return node_connection(
            self._client,
            self.node,
            socket_timeout=None,
            socket_connect_timeout=config.dial_timeout,
            retry=None,
            health_check_interval=0,
            client_name="gateway-redis-pubsub-shard",
            protocol=2,
        )

    def _vote_down(self, reason: str) -> None:
        nodes = self._node_health()
        if nodes is None:
            super()._vote_down(reason)
        else:
            assert self.node is not None
            nodes.mark(f"{self.node[0]}:{self.node[1]}", f"{self._source}: {reason}")

    def _vote_up(self, *, answered: bool) -> None:
        nodes = self._node_health()
        if nodes is None:
            super()._vote_up(answered=answered)
        elif answered:
            assert self.node is not None
            nodes.answered(f"{self.node[0]}:{self.node[1]}", self._source)

    def _node_health(self) -> _driver.NodeHealth | None:
        # The cluster client's record of unreachable nodes (None outside cluster mode).
        return self._client.backend.nodes if self.node is not None else None

    def _session_ended(self, was_live: bool) -> None:
        self._token = None
        wire = self.wire
        self._shards.lost([e for e in wire.entries.values() if e.confirmed.is_set()])
        if wire.wanted:
            self._shards.request_refresh()

    async def _read(self, conn: AbstractConnection) -> str:
        wire, deliver = self.wire, self._deliver
        count = 0
        while True:
            try:
                reply = await conn.read_response()
            except rexc.ResponseError as exc:
                self._last_rx = time.monotonic()
                self._rejected(exc)
                continue
            self._last_rx = time.monotonic()
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"smessage":
                entry = wire.entries.get(reply[1])
                if entry is not None and entry.subs:
                    deliver(entry.subs, entry.name, None, reply[2])
            else:
                self._reply(reply)
            count += 1
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a flood must not starve the consumers

    def _reply(self, reply: object) -> None:
        # PING is answered ["pong", arg] while subscribed, and with the bare arg when the
        # connection has no subscription left (Redis dropped them all).
        if isinstance(reply, bytes):
            kind, name = b"pong", reply
        elif isinstance(reply, list) and len(reply) >= 2 and isinstance(reply[1], bytes):
            kind, name = reply[0], reply[1]
        else:
            raise ProtocolError(f"unexpected reply {type(reply).__name__}")
        wire = self.wire
        if not wire.confirm(kind, name):
            self._shards.dropped(self, name)
        elif kind == b"pong":
            token = self._token
            if token is not None and name == token[0] and not token[1].done():
                token[1].set_result(None)
        if wire.regained:
            wire.regained = False
            self._shards.regained()

    def _rejected(self, exc: rexc.ResponseError) -> None:
        kind, entries = self.wire.reject()
        if kind != b"ssubscribe" or not entries:
            return  # a SUNSUBSCRIBE of a slot that moved away: nothing to undo
        for entry in entries:
            self.wire.resend(entry.wire)  # not subscribed here
        if isinstance(exc, rexc.MovedError):
            target = (str(exc.host), int(exc.port))
            if (
                self.node is not None
                and target != self.node
                and self._shards.moved(entries[0].slot, target)
            ):
                return
            raise ProtocolError(f"cannot follow MOVED for slot {exc.slot_id} to {target}")
        if isinstance(exc, _TRANSIENT):
            raise exc  # the session ends; the router looks the slots up again
        self._shards.refused(entries, exc)

    async def _check_liveness(self) -> str | None:
        self._token_seq += 1
        token = b"%d" % self._token_seq
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._token = (token, seen)
        self.wire.ping = token
        self.kick()
        try:
            async with _driver.deadline(self._timeout):
                await seen
        except asyncio.TimeoutError:
            return f"PING not answered within {self._timeout}s"
        finally:
            self._token = None
        return None


def _nothing() -> None:
    pass


def node_connection(client: RedisClient, node: Node, **overrides: Any) -> AbstractConnection:
    """A new, unconnected lone connection (``overrides`` as for
    :meth:`~gateway_redis._driver.Backend.lone_connection`) to ``node``; outside cluster
    mode (``node`` None) to the server, or Sentinel's current primary."""
    conn = client.backend.lone_connection(**overrides)
    if node is not None:
        assert isinstance(conn, _driver.ClusterSeedConnection)
        conn.pin(node)
    return conn


class Shards(Generic[T]):
    """Every sharded channel of a hub, assigned to per-node listeners (module docstring).

    Callbacks: ``on_lost(entries)`` when confirmed channels stop being subscribed,
    ``on_regained()`` (batched per loop iteration) when such channels are subscribed again,
    ``on_refused(entry)`` when Redis refused a channel for good, ``on_failed()`` when a
    listener died of a bug.
    """

    def __init__(
        self,
        client: RedisClient,
        channel_prefix: str,
        *,
        deliver: Deliver[T],
        on_lost: Callable[[list[ShardEntry[T]]], None],
        on_regained: Callable[[], None],
        on_refused: Callable[[ShardEntry[T]], None],
        on_failed: Callable[[], None],
        liveness_interval: float,
        liveness_timeout: float,
    ) -> None:
        self.client = client
        self.deliver = deliver
        self.on_failed = on_failed
        self.liveness_interval = liveness_interval
        self.liveness_timeout = liveness_timeout
        self._on_lost = on_lost
        self._on_regained = on_regained
        self._on_refused = on_refused
        self._prefix = channel_prefix.encode()
        self._cluster = client.backend.cluster
        self.entries: dict[bytes, ShardEntry[T]] = {}
        self._by_slot: dict[int, dict[bytes, ShardEntry[T]]] = {}
        self.listeners: dict[Node, ShardListener[T]] = {}
        self._hops: dict[int, tuple[int, float]] = {}  # slot -> MOVED followed, since
        self._refresh = asyncio.Event()
        self._router: asyncio.Task[None] | None = None
        self._regain_pending = False
        self._closed = False
        self.regains = 0
        """Times lost sharded channels were subscribed again."""

    # -- the hub's side -------------------------------------------------------------------

    def key(self, name: str) -> bytes:
        """The wire name of ``name``."""
        return self._prefix + name.encode()

    def acquire(self, name: str, owner: T) -> ShardEntry[T]:
        """Add ``owner`` to the entry for ``name``, creating (and assigning) it if needed."""
        key = self.key(name)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = ShardEntry(name, key)
            same_slot = self._by_slot.setdefault(entry.slot, {})
            # Channels of one slot always share a node: the one serving the slot now.
            node = next(iter(same_slot.values())).node if same_slot else self._owner(entry)
            same_slot[key] = entry
            self._assign(entry, node)
        entry.subs.add(owner)
        return entry

    def release(self, key: bytes, owner: T) -> None:
        """Remove ``owner``; the last one out drops the entry (and unsubscribes it)."""
        entry = self.entries.get(key)
        if entry is None or owner not in entry.subs:
            return
        entry.subs.discard(owner)
        if not entry.subs:
            self._drop(entry)

    def failing(self, entry: ShardEntry[T]) -> bool:
        """True while the node serving ``entry`` cannot be reached."""
        listener = self.listeners.get(entry.node)
        return listener is not None and listener.failing and not listener.live

    @property
    def live(self) -> bool:
        """True while every node serving sharded channels is connected and subscribed."""
        return all(lsn.live for lsn in self.listeners.values() if lsn.wire.wanted)

    @property
    def connections(self) -> int:
        """Live shard connections."""
        return sum(1 for lsn in self.listeners.values() if lsn.live)

    def close(self) -> None:
        """Forget every entry, waking any waiter (the listeners are stopped by aclose)."""
        for listener in self.listeners.values():
            listener.wire.close()
        for entry in self.entries.values():
            entry.confirmed.set()
        self.entries.clear()
        self._by_slot.clear()

    async def aclose(self) -> None:
        """Stop the router and every listener; close their connections."""
        self._closed = True
        router, self._router = self._router, None
        if router is not None:
            await cancel_and_wait(router)
        for listener in list(self.listeners.values()):
            await listener.aclose()
        self.close()

    # -- the listeners' side --------------------------------------------------------------

    def lost(self, entries: list[ShardEntry[T]]) -> None:
        """``entries`` were confirmed and are no longer subscribed anywhere."""
        for entry in entries:
            entry.lost = True
            entry.confirmed.clear()
        if entries:
            self._on_lost(entries)

    def regained(self) -> None:
        """Lost entries were confirmed again; the hub hears it once per loop iteration."""
        if not self._regain_pending:
            self._regain_pending = True
            asyncio.get_running_loop().call_soon(self._fire_regained)

    def _fire_regained(self) -> None:
        self._regain_pending = False
        if not self._closed:
            self.regains += 1
            self._on_regained()

    def dropped(self, listener: ShardListener[T], key: bytes) -> None:
        """Redis unsubscribed ``key`` by itself: its node gave the slot away. Subscribing
        again on the same connection gets MOVED to the new owner (or, if the node took the
        slot back, the subscription)."""
        entry = listener.wire.entries.get(key)
        if entry is None or not entry.confirmed.is_set():
            return  # the reply to our own SUNSUBSCRIBE, after Redis dropped it anyway
        _log.debug(
            "pubsub sharded channel %r dropped by its node (slot %d moved)",
            entry.name,
            entry.slot,
            extra=log_fields("pubsub", "pubsub_shard_dropped", "slot moved", slot=entry.slot),
        )
        self.lost([entry])
        listener.wire.resend(key)
        listener.kick()

    def moved(self, slot: int, node: Node) -> bool:
        """MOVED: ``slot`` lives on ``node``; move its channels there. False (nothing
        moved) after too many hops in a row for one slot, to back off instead."""
        now = time.monotonic()
        hops, since = self._hops.get(slot, (0, now))
        if now - since > 1.0:
            hops, since = 0, now
        if hops >= _MAX_HOPS:  # nodes disagree (a failover in progress): reconnect later
            return False
        self._hops[slot] = (hops + 1, since)
        self._move(list(self._by_slot.get(slot, {}).values()), node)
        return True

    def refused(self, entries: list[ShardEntry[T]], exc: rexc.ResponseError) -> None:
        """Redis refused ``entries`` for good: drop them and tell their subscribers."""
        _log.error(
            "pubsub: Redis refused SSUBSCRIBE of %d sharded channels (%r...): %s",
            len(entries),
            entries[0].name,
            exc,
            extra={"component": "pubsub", "event": "pubsub_shard_refused"},
        )
        for entry in entries:
            entry.error = str(exc)
            self._drop(entry)
            entry.confirmed.set()
            self._on_refused(entry)

    def request_refresh(self) -> None:
        """Look the slot owners up again soon (cluster mode; a node's connection failed)."""
        if self._cluster is None or self._closed:
            return
        self._refresh.set()
        if self._router is None:
            self._router = asyncio.get_running_loop().create_task(
                self._route(), name="gateway-redis-pubsub-router"
            )

    # -- internals ------------------------------------------------------------------------

    def _owner(self, entry: ShardEntry[T]) -> Node:
        cluster = self._cluster
        if cluster is None:
            return None
        try:
            node = cluster.get_node_from_key(entry.wire)  # type: ignore[arg-type]
        except Exception:  # no slot map yet (the cluster was unreachable at start)
            node = None
        if node is None:
            # Any node will do: it answers MOVED with the owner.
            host, port = self.client.config.topology.nodes[0]
            return (host, port)
        return (node.host, int(node.port))

    def _assign(self, entry: ShardEntry[T], node: Node) -> None:
        entry.node = node
        listener = self.listeners.get(node)
        if listener is None:
            listener = self.listeners[node] = ShardListener(self, node)
        listener.wire.add(entry)
        listener.start()
        listener.kick()

    def _move(self, entries: list[ShardEntry[T]], node: Node) -> None:
        entries = [entry for entry in entries if entry.node != node]
        self.lost([entry for entry in entries if entry.confirmed.is_set()])
        for entry in entries:
            old = self.listeners.get(entry.node)
            if old is not None:
                old.wire.remove(entry.wire)
                old.kick()
            self._assign(entry, node)

    def _drop(self, entry: ShardEntry[T]) -> None:
        key = entry.wire
        if self.entries.get(key) is not entry:
            return
        del self.entries[key]
        same_slot = self._by_slot.get(entry.slot)
        if same_slot is not None:
            same_slot.pop(key, None)
            if not same_slot:
                del self._by_slot[entry.slot]
                self._hops.pop(entry.slot, None)
        listener = self.listeners.get(entry.node)
        if listener is not None:
            listener.wire.remove(key)
            listener.kick()

    async def _route(self) -> None:
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            try:
                self._apply(await self._lookup())
            except asyncio.CancelledError:
                raise
            except (rexc.RedisError, OSError, asyncio.TimeoutError) as exc:
                _log.debug(
                    "pubsub slot lookup failed (%s); retrying",
                    describe_error(exc),
                    extra=log_fields("pubsub", "pubsub_slot_lookup_failed", describe_error(exc)),
                )
            except Exception:  # a bug: keep routing, the next lookup may do better
                _log.exception(
                    "pubsub slot lookup failed",
                    extra=log_fields("pubsub", "pubsub_slot_lookup_failed", "bug"),
                )
            await asyncio.sleep(_REFRESH_EVERY)
            if any(lsn.failing and lsn.wire.wanted for lsn in self.listeners.values()):
                self._refresh.set()

    async def _lookup(self) -> dict[int, Node]:
        """The owner of every slot we serve, from the first node that answers CLUSTER SLOTS."""
        assert self._cluster is not None
        failing = {node for node, lsn in self.listeners.items() if lsn.failing}
        candidates: dict[tuple[str, int], None] = {}
        for node in self._cluster.get_nodes():
            candidates[(node.host, int(node.port))] = None
        for address in self.client.config.topology.nodes:
            candidates[address] = None
        order = sorted(candidates, key=lambda address: address in failing)  # failing ones last
        config = self.client.config
        last: BaseException | None = None
        async with _driver.deadline(config.dial_timeout + config.read_timeout):
            for address in order:
                try:
                    reply = await self._cluster_slots(address)
                except (rexc.RedisError, OSError) as exc:
                    last = exc
                    continue
                return self._owners(reply, address)
        raise last or RuntimeError("no cluster node known")

    async def _cluster_slots(self, address: tuple[str, int]) -> list[list[object]]:
        config = self.client.config
        conn = node_connection(
            self.client,
            address,
            socket_timeout=config.read_timeout,
            socket_connect_timeout=config.dial_timeout,
            retry=None,
            health_check_interval=0,
            client_name="gateway-redis-pubsub-router",
            protocol=2,
        )
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("CLUSTER", "SLOTS", check_health=False)
            reply = await conn.read_response()
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        if not isinstance(reply, list):
            raise ProtocolError(f"unexpected CLUSTER SLOTS reply {type(reply).__name__}")
        return reply

    def _owners(self, reply: list[list[object]], asked: tuple[str, int]) -> dict[int, Node]:
        ranges: list[tuple[int, int, Node]] = []
        for item in reply:
            start, end, primary = item[0], item[1], item[2]
            if not (isinstance(start, int) and isinstance(end, int) and isinstance(primary, list)):
                raise ProtocolError("unexpected CLUSTER SLOTS reply")
            raw_host, port = primary[0], primary[1]
            host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
            ranges.append((start, end, (host or asked[0], int(port))))
        owners: dict[int, Node] = {}
        for slot in self._by_slot:
            for start, end, node in ranges:
                if start <= slot <= end:
                    owners[slot] = node
                    break
        return owners

    def _apply(self, owners: dict[int, Node]) -> None:
        moving: dict[Node, list[ShardEntry[T]]] = {}
        for slot, node in owners.items():
            same_slot = self._by_slot.get(slot, {}).values()
            moving.setdefault(node, []).extend(e for e in same_slot if e.node != node)
        # All the confirmed ones are reported lost at once (one notification).
        self.lost([e for entries in moving.values() for e in entries if e.confirmed.is_set()])
        for node, entries in moving.items():
            if not entries:
                continue
            self._move(entries, node)
            count = len(entries)
            _log.info(
                "pubsub: %d sharded channels follow their slots to %s",
                count,
                "?" if node is None else f"{node[0]}:{node[1]}",
                extra={"component": "pubsub", "event": "pubsub_shard_moved", "channels": count},
            )

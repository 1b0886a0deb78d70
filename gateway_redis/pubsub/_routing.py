"""Which node serves each sharded channel, and following slots when they move.

:class:`Router` keeps every sharded channel the hub wants (a reference-counted
:class:`~gateway_redis.pubsub._registry.Registry`) and assigns each to a per-node
:class:`~gateway_redis.pubsub._sharded.ShardListener`: the node already serving that slot,
else the owner in the cluster client's slot map. Outside cluster mode there is one "node":
the server (Sentinel: the current primary).

Following the slot: a MOVED reply moves the slot's channels to the named owner at once; an
unsolicited ``sunsubscribe`` (the node gave the slot away) subscribes the channel again on
the same connection, which answers MOVED. When a node's connection fails, the router asks a
live node for ``CLUSTER SLOTS`` (on connections of its own: the command client is left
alone) and moves the channels of slots that changed owner, a few times a second until every
listener is up again (a failover takes ``cluster-node-timeout`` and then some).

Every subscription that was confirmed and then lost this way is reported to the hub
(``on_shard_lost``: gap marks, disconnect listeners) and, once subscribed again wherever it
now lives, ``on_regained`` runs (reconnect listeners: the WebSocket bridge sends
``resync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from redis import exceptions as rexc

from gateway_redis import _driver
from gateway_redis.pubsub._connection import open_connection
from gateway_redis.pubsub._registry import Entry, Kind, Node, ProtocolError, Registry
from gateway_redis.pubsub._sharded import ShardListener
from gateway_redis.pubsub._supervisor import ListenerSettings
from gateway_redis.support import cancel_and_wait, describe_error, log_fields

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

T = TypeVar("T")
_log = logging.getLogger(__name__)
_REFRESH_EVERY: Final = 0.2  # seconds between slot-map lookups while a node is failing
_MAX_HOPS: Final = 5  # MOVED replies followed for one slot within a second before backing off


class Router(Generic[T]):
    """Every sharded channel of a hub, assigned to per-node listeners (module docstring)."""

    def __init__(self, client: RedisClient, settings: ListenerSettings[T]) -> None:
        self.client = client
        self._settings = settings
        prefix = client.config.channel_prefix.encode()
        self.registry: Registry[T] = Registry(Kind("SSUBSCRIBE", "SUNSUBSCRIBE", prefix, True))
        self._cluster = client.backend.cluster
        self._by_slot: dict[int, dict[bytes, Entry[T]]] = {}
        self.listeners: dict[Node, ShardListener[T]] = {}
        self._hops: dict[int, tuple[int, float]] = {}  # slot -> MOVED followed, since
        self._refresh = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._regain_pending = False
        self._closed = False
        self.regains = 0
        """Times lost sharded channels were subscribed again."""

    # -- the hub's side -------------------------------------------------------------------

    def acquire(self, name: str, owner: T) -> Entry[T]:
        """Add ``owner`` to the entry for ``name``, creating (and assigning) it if needed."""
        entry, created = self.registry.acquire(name, owner)
        if created:
            assert entry.slot is not None
            same_slot = self._by_slot.setdefault(entry.slot, {})
            # Channels of one slot always share a node: the one serving the slot now.
            node = next(iter(same_slot.values())).node if same_slot else self._owner(entry)
            same_slot[entry.key] = entry
            self._assign(entry, node)
        return entry

    def release(self, key: bytes, owner: T) -> None:
        """Remove ``owner``; the last one out drops the entry (and unsubscribes it)."""
        dropped = self.registry.release(key, owner)
        if dropped is not None:
            self._unassign(dropped)

    def failing(self, entry: Entry[T]) -> bool:
        """True while the node serving ``entry`` cannot be reached."""
        listener = self.listeners.get(entry.node)
        return listener is not None and listener.failing and not listener.live

    @property
    def live(self) -> bool:
        """True while every node serving sharded channels is connected and subscribed."""
        return all(lsn.live for lsn in self.listeners.values() if lsn.wanted)

    @property
    def connections(self) -> int:
        """Live shard connections."""
        return sum(1 for lsn in self.listeners.values() if lsn.live)

    def forget(self) -> None:
        """Forget every entry, waking any waiter (the listeners are stopped by aclose)."""
        for listener in self.listeners.values():
            listener.ledger.close()
        self.registry.close()
        self._by_slot.clear()

    async def aclose(self) -> None:
        """Stop the router and every listener; close their connections."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for listener in list(self.listeners.values()):
            await listener.aclose()
        self.forget()

    # -- the listeners' side (SlotRouter) -------------------------------------------------

    def lost(self, entries: list[Entry[T]]) -> None:
        """``entries`` were confirmed and are no longer subscribed anywhere."""
        for entry in entries:
            entry.lost = True
            entry.confirmed.clear()
        if entries:
            self._settings.on_shard_lost(entries)

    def regained(self) -> None:
        """Lost entries were confirmed again; the hub hears it once per loop iteration."""
        if not self._regain_pending:
            self._regain_pending = True
            asyncio.get_running_loop().call_soon(self._fire_regained)

    def _fire_regained(self) -> None:
        self._regain_pending = False
        if not self._closed:
            self.regains += 1
            self._settings.on_regained()

    def dropped(self, listener: ShardListener[T], entry: Entry[T]) -> None:
        """Redis unsubscribed ``entry`` by itself: its node gave the slot away. Subscribing
        again on the same connection gets MOVED to the new owner (or, if the node took the
        slot back, the subscription)."""
        _log.debug(
            "pubsub sharded channel %r dropped by its node (slot %d moved)",
            entry.name,
            entry.slot,
            extra=log_fields("pubsub", "pubsub_shard_dropped", "slot moved", slot=entry.slot),
        )
        self.lost([entry])
        listener.ledger.resend(entry)
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

    def refused(self, entries: list[Entry[T]], exc: rexc.ResponseError) -> None:
        """Redis refused ``entries`` for good: drop them and tell their subscribers."""
        _log.error(
            "pubsub: Redis refused SSUBSCRIBE of %d sharded channels (%r...): %s",
            len(entries),
            entries[0].name,
            exc,
            extra=log_fields("pubsub", "pubsub_shard_refused"),
        )
        for entry in entries:
            entry.error = str(exc)
            if self.registry.discard(entry):
                self._unassign(entry)
            entry.confirmed.set()
            self._settings.on_refused(entry)

    def request_refresh(self) -> None:
        """Look the slot owners up again soon (cluster mode; a node's connection failed)."""
        if self._cluster is None or self._closed:
            return
        self._refresh.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._route(), name="gateway-redis-pubsub-router"
            )

    # -- internals ------------------------------------------------------------------------

    def _owner(self, entry: Entry[T]) -> Node:
        cluster = self._cluster
        if cluster is None:
            return None
        try:
            node = cluster.get_node_from_key(entry.key)  # type: ignore[arg-type]
        except Exception:  # no slot map yet (the cluster was unreachable at start)
            node = None
        if node is None:
            # Any node will do: it answers MOVED with the owner.
            host, port = self.client.config.topology.nodes[0]
            return (host, port)
        return (node.host, int(node.port))

    def _assign(self, entry: Entry[T], node: Node) -> None:
        entry.node = node
        listener = self.listeners.get(node)
        if listener is None:
            listener = self.listeners[node] = ShardListener(
                self.client, self._settings, self, self.registry.entries, node
            )
        listener.ledger.add(entry)
        listener.start()
        listener.kick()

    def _move(self, entries: list[Entry[T]], node: Node) -> None:
        entries = [entry for entry in entries if entry.node != node]
        self.lost([entry for entry in entries if entry.confirmed.is_set()])
        for entry in entries:
            self._leave_node(entry)
            self._assign(entry, node)

    def _unassign(self, entry: Entry[T]) -> None:
        # ``entry`` left the registry: forget its slot and unsubscribe it on its node.
        assert entry.slot is not None
        same_slot = self._by_slot.get(entry.slot)
        if same_slot is not None:
            same_slot.pop(entry.key, None)
            if not same_slot:
                del self._by_slot[entry.slot]
                self._hops.pop(entry.slot, None)
        self._leave_node(entry)

    def _leave_node(self, entry: Entry[T]) -> None:
        # Unsubscribed on the connection of the node serving it (if it was sent there).
        listener = self.listeners.get(entry.node)
        if listener is not None:
            listener.ledger.remove(entry)
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
            if any(lsn.failing and lsn.wanted for lsn in self.listeners.values()):
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
        async with _driver.Deadline(config.dial_timeout + config.read_timeout):
            for address in order:
                try:
                    reply = await self._cluster_slots(address)
                except (rexc.RedisError, OSError) as exc:
                    last = exc
                    continue
                return self._owners(reply, address)
        raise last or RuntimeError("no cluster node known")

    async def _cluster_slots(self, address: tuple[str, int]) -> list[list[object]]:
        conn = open_connection(
            self.client,
            name="gateway-redis-pubsub-router",
            read_timeout=self.client.config.read_timeout,
            node=address,
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
        moving: dict[Node, list[Entry[T]]] = {}
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
                extra=log_fields("pubsub", "pubsub_shard_moved", channels=count),
            )

"""Sharded pub/sub (SPUBLISH/SSUBSCRIBE): which channels are sharded, and one node's
subscriber connection.

A sharded channel lives in the hash slot of its name (the name on the wire, channel prefix
included, ``{hash tags}`` honoured), like a key: SPUBLISH goes to the slot's primary, which
delivers to its own subscribers only (and its replicas), never over the cluster bus. So
each channel is subscribed on a connection to the node that owns its slot; the router
(:mod:`~gateway_redis.pubsub._routing`) decides which, and :class:`ShardListener` drives
that node's connection with the machinery of the classic one. SSUBSCRIBE goes out one
command per slot (Redis refuses channels of several slots in one command); a ``PING``
sent last marks the end of a resubscription, and later PINGs on the same connection check
liveness. Redis answers SSUBSCRIBE for a slot the node does not own with ``MOVED slot
host:port``, and pushes an unsolicited ``sunsubscribe`` when the node loses a slot
(resharding, or demotion to replica after a failover): the listener hands both to the
router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from redis import exceptions as rexc

from gateway_redis import _driver
from gateway_redis.pubsub._connection import open_connection
from gateway_redis.pubsub._registry import Entry, Ledger, Node, ProtocolError
from gateway_redis.pubsub._supervisor import YIELD_EVERY, ListenerSettings, Supervisor
from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from gateway_redis.client import RedisClient

T = TypeVar("T")
# The hub's logger: pattern warnings are about its psubscribe().
_log = logging.getLogger("gateway_redis.pubsub.hub")
_MARKER: Final = b"ready"  # the PING argument that ends a resubscription
# Errors that say the cluster is changing, not that the channel is refused: reconnect.
_TRANSIENT: Final = (rexc.AskError, rexc.TryAgainError, rexc.ClusterDownError)


class ShardedNames:
    """Which channels are sharded: exact names and prefixes (entries ending in ``*``)."""

    __slots__ = ("_exact", "_prefixes", "_warned", "entries")

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = entries
        self._warned: set[str] = set()  # patterns warned about (once each)
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

    def check_pattern(self, pattern: str) -> None:
        """Raise :class:`ValueError` for a pattern subscription that can only match
        sharded channels (their messages never reach pattern subscriptions); log a warning,
        once per pattern, for one that may match some."""
        overlap = self.pattern_overlap(pattern)
        if overlap == "all":
            raise ValueError(
                f"pattern {pattern!r} only matches sharded channels "
                f"(sharded_channels={self.entries!r}), and sharded messages "
                "never reach pattern subscriptions: subscribe to the channels by name"
            )
        if overlap == "some" and pattern not in self._warned:
            self._warned.add(pattern)
            _log.warning(
                "pubsub pattern %r may match sharded channels (%s); their messages "
                "are published with SPUBLISH and never reach pattern subscriptions",
                pattern,
                ", ".join(self.entries),
                extra=log_fields("pubsub", "pubsub_pattern_sharded"),
            )


class SlotRouter(Protocol[T]):
    """What a :class:`ShardListener` reports to the router that assigned its channels."""

    def lost(self, entries: list[Entry[T]]) -> None:
        """``entries`` were confirmed and are no longer subscribed anywhere."""

    def regained(self) -> None:
        """Lost entries were confirmed again."""

    def dropped(self, listener: ShardListener[T], entry: Entry[T]) -> None:
        """Redis unsubscribed ``entry`` by itself on ``listener``'s node."""

    def moved(self, slot: int, node: Node) -> bool:
        """MOVED: ``slot`` lives on ``node``; False to back off instead of following."""

    def refused(self, entries: list[Entry[T]], exc: rexc.ResponseError) -> None:
        """Redis refused ``entries`` for good."""

    def request_refresh(self) -> None:
        """Look the slot owners up again soon."""


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
    ``entries`` is the router's registry (every sharded entry, by key).
    """

    _task_name = "gateway-redis-pubsub-shard"

    def __init__(
        self,
        client: RedisClient,
        settings: ListenerSettings[T],
        router: SlotRouter[T],
        entries: dict[bytes, Entry[T]],
        node: Node,
    ) -> None:
        super().__init__(client, Ledger(("PING", _MARKER), b"pong"), settings)
        self.node = node
        self._router = router
        self._entries = entries
        self._source = "pubsub shard" if node is None else f"pubsub shard {node[0]}:{node[1]}"

    @property
    def wanted(self) -> bool:
        """A connection is needed while channels are assigned here."""
        return bool(self.ledger.served)

    def _summary(self) -> str:
        return f"{len(self.ledger.served)} sharded channels"

    def _open_connection(self) -> AbstractConnection:
        return open_connection(self._client, name="gateway-redis-pubsub-shard", node=self.node)

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
        self._router.lost([e for e in self.ledger.served if e.confirmed.is_set()])
        if self.wanted:
            self._router.request_refresh()

    async def _read(self, conn: AbstractConnection) -> str:
        entries, ledger, deliver = self._entries, self.ledger, self._settings.deliver
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
                entry = entries.get(reply[1])
                if entry is not None and entry.ledger is ledger and entry.subs:
                    deliver(entry.subs, entry.name, None, reply[2])
            else:
                self._reply(reply)
            count += 1
            if count % YIELD_EVERY == 0:
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
        ledger = self.ledger
        if not ledger.confirm(kind, name):
            self._unsubscribed(name)
        elif kind == b"pong":
            self._token_seen(name)
        if ledger.regained:
            ledger.regained = False
            self._router.regained()

    def _unsubscribed(self, key: bytes) -> None:
        entry = self._entries.get(key)
        # Not served here, or not confirmed: the reply to our own SUNSUBSCRIBE, after
        # Redis dropped it anyway.
        if entry is not None and entry.ledger is self.ledger and entry.confirmed.is_set():
            self._router.dropped(self, entry)

    def _rejected(self, exc: rexc.ResponseError) -> None:
        kind, entries = self.ledger.reject()
        if kind != b"ssubscribe" or not entries:
            return  # a SUNSUBSCRIBE of a slot that moved away: nothing to undo
        for entry in entries:
            self.ledger.resend(entry)  # not subscribed here
        if isinstance(exc, rexc.MovedError):
            target = (str(exc.host), int(exc.port))
            slot = entries[0].slot
            assert slot is not None
            if self.node is not None and target != self.node and self._router.moved(slot, target):
                return
            raise ProtocolError(f"cannot follow MOVED for slot {exc.slot_id} to {target}")
        if isinstance(exc, _TRANSIENT):
            raise exc  # the session ends; the router looks the slots up again
        self._router.refused(entries, exc)

    async def _check_liveness(self) -> str | None:
        token, seen = self._issue_token()
        self.ledger.ping(token)
        self.kick()
        try:  # the loop's attention: a PONG unread while our loop was busy is no verdict
            await _driver.wait_attentively(seen, self._timeout)
        except asyncio.TimeoutError:
            return f"PING not answered within {self._timeout}s"
        finally:
            self._token = None
        return None

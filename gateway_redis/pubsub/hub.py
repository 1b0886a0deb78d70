"""The process's pub/sub hub: publishing, subscribing, and the connections behind them.

:class:`PubSubHub` owns the classic subscriber connection
(:mod:`~gateway_redis.pubsub._classic`), the per-node sharded ones
(:mod:`~gateway_redis.pubsub._routing`) and, with Sentinel, the ``+switch-master`` watch
(:mod:`~gateway_redis.pubsub._sentinel`). It decodes each message once
(:mod:`~gateway_redis.pubsub.envelope`) and hands it to every matching
:class:`~gateway_redis.pubsub.subscription.Subscription`. Publishing: ``_publisher``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway_redis import telemetry
from gateway_redis._driver import Deadline
from gateway_redis.errors import RedisUnavailable
from gateway_redis.health import ClientState
from gateway_redis.pubsub import envelope
from gateway_redis.pubsub._classic import Listener
from gateway_redis.pubsub._publisher import Publisher
from gateway_redis.pubsub._registry import Entry
from gateway_redis.pubsub._routing import Router
from gateway_redis.pubsub._sentinel import SwitchWatch
from gateway_redis.pubsub._sharded import ShardedNames
from gateway_redis.pubsub._supervisor import ListenerSettings
from gateway_redis.pubsub.subscription import (
    End,
    MessageCallback,
    PubSubStats,
    Subscription,
    fan_out,
)
from gateway_redis.support import add_listener, call_listeners

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

__all__ = ["PubSubHub", "ReconnectListener"]

_log = logging.getLogger(__name__)
_notify = functools.partial(
    call_listeners,
    logger=_log,
    message="pubsub connection listener failed",
    fields=("pubsub", "pubsub_listener_callback_failed"),
)

ReconnectListener = Callable[[], None]
"""Called with no arguments when the subscriber connection is lost or restored."""


class PubSubHub:
    """The process's pub/sub: publishing, and one subscriber connection for every subscription
    (plus one per node serving sharded channels, when some are configured).

    Reached as ``client.pubsub`` (the client creates it lazily and closes it with itself).
    ``liveness_interval`` (seconds, default 0.5) is how long a subscriber connection may
    stay silent before the hub checks it; ``liveness_timeout`` (seconds, default 0.8) is
    how long the check may take before the connection counts as dead (time our event loop
    was free to read the answer: a busy loop does not make a healthy server look dead).
    With the defaults a frozen server is noticed within about 1.6 s. Channels listed in
    the configuration's ``sharded_channels`` use sharded pub/sub (see the package
    docstring). Raises
    :class:`ValueError` for a liveness time that is not > 0.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        liveness_interval: float = 0.5,
        liveness_timeout: float = 0.8,
    ) -> None:
        settings: ListenerSettings[Subscription] = ListenerSettings(
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
            deliver=fan_out,
            on_lost=self._on_lost,
            on_regained=self._on_reconnect,
            on_shard_lost=self._on_shard_lost,
            on_refused=self._on_refused,
            on_failed=self._on_failed,
        )
        config = client.config
        self._client = client
        liveness = f"{envelope.RESERVED}liveness:{secrets.token_hex(8)}"
        self._classic: Listener[Subscription] = Listener(client, settings, liveness)
        self._sharded = ShardedNames(config.sharded_channels)
        self._router: Router[Subscription] = Router(client, settings)
        self._publisher = Publisher(client, self._classic.channels.key, self._sharded)
        self._switch = SwitchWatch(client, self._on_switch) if config.mode == "sentinel" else None
        self._subscribe_timeout = config.operation_timeout  # every call's one deadline
        self._subs: set[Subscription] = set()  # open and not released
        self._on_reconnected: list[ReconnectListener] = []
        self._on_disconnected: list[ReconnectListener] = []
        self._closed = self._failed = False
        self._dropped_total = 0
        self._metrics = telemetry.instruments()

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, channel: str, message: Any) -> int:
        """Publish ``message`` as compact JSON on ``channel``; returns the receiver count.

        The count is Redis's: connections that received it (a hub counts once however many
        subscriptions it serves). Serialized before anything is sent: a value that is not
        JSON (or contains NaN) raises :class:`SerializationError` and nothing is published.
        When the caller has an active OpenTelemetry span, the JSON travels in a small
        envelope carrying the trace context (:mod:`gateway_redis.pubsub.envelope`); without
        one it goes out as is. Sent at most once (never retried). A sharded channel is
        published with SPUBLISH (in Cluster mode to the primary owning its slot; the count
        is then that shard's subscribers). Raises :class:`RedisUnavailable` (at once while
        Redis is known to be down), :class:`TypeError`/:class:`ValueError` for a bad
        channel name.
        """
        return await self._publisher.publish(channel, message)

    # -- subscribing ----------------------------------------------------------------------

    async def subscribe(
        self, *channels: str, buffer_size: int = 100, on_message: MessageCallback | None = None
    ) -> Subscription:
        """A subscription to ``channels``, returned once Redis confirmed every one of them.

        ``buffer_size`` (messages, >= 1) bounds its buffer. With ``on_message`` it is a
        callback subscription instead (see :class:`Subscription`): no buffer, no queueing,
        the callback runs in the reader for every message, one call per message however
        many channels the subscription has. Raises :class:`RedisUnavailable` at once when
        Redis is known to be unreachable (the hub's last connection attempt failed, or the
        client is down before the hub ever connected). While the hub is merely reconnecting
        after a drop the subscription is registered and confirmed on the new connection.
        Redis not confirming within ``operation_timeout`` (a frozen or unreachable server,
        the deadline of every call) raises ``RedisUnavailable(reason="timeout")``. Sharded
        channels are subscribed on their node's connection (raises at once while that node
        is known unreachable); one Redis refuses for good (ACL ``NOPERM``, or a server
        without sharded pub/sub) raises ``RedisUnavailable(reason="misconfigured")``.
        Raises :class:`TypeError` / :class:`ValueError` for bad names (empty, over 1 KiB,
        reserved) or sizes.
        """
        names = envelope.check_names(channels, "channel")
        if on_message is not None and not callable(on_message):
            raise TypeError("on_message must be callable")
        return await self._open(names, [], buffer_size, on_message)

    async def psubscribe(self, *patterns: str, buffer_size: int = 100) -> Subscription:
        """Like :meth:`subscribe`, for glob ``patterns``; for trusted, fixed patterns only.

        Never pass user input here (a pattern like ``*`` would receive every channel).
        Messages carry the matching channel and the pattern. Patterns are classic pub/sub:
        Redis never delivers sharded (SPUBLISH) messages to them. A pattern that can only
        match sharded channels (``"orders:*"`` when ``"orders:*"`` is sharded) raises
        :class:`ValueError`; one that may match some (``"*"``) is subscribed, with a
        warning logged once: it receives the classic channels only.
        """
        names = envelope.check_names(patterns, "pattern")
        for name in names:
            self._sharded.check_pattern(name)
        return await self._open([], names, buffer_size)

    async def unsubscribe(self, *channels: str) -> None:
        """End every subscription of this process to ``channels``.

        The channels are removed from each subscription; one left with nothing ends its
        iteration after its buffered messages. Redis is told without waiting for its reply.
        """
        for name in envelope.check_names(channels, "channel"):
            sharded = self._sharded.match(name)
            registry = self._router.registry if sharded else self._classic.channels
            key = registry.key(name)
            entry = registry.entries.get(key)
            for sub in list(entry.subs) if entry is not None else ():
                if sharded:
                    self._router.release(key, sub)
                else:
                    self._classic.release(registry, key, sub)
                if sub.remove_channel(key):
                    self._subs.discard(sub)
        self._classic.kick()

    def start(self) -> None:
        """Open the subscriber connection now, without waiting for it (idempotent).

        ``subscribe()`` does this by itself; an application calls it at startup when it
        wants the liveness check (readiness within ~2 s of a frozen server) from the start.
        Needs a running event loop. With Sentinel it also starts listening for the
        sentinels' ``+switch-master``, so the subscriber connections retry at once after a
        failover instead of at their next backoff step.
        """
        if not self._closed:
            self._classic.start()
            if self._switch is not None:
                self._switch.start()

    def add_reconnect_listener(self, listener: ReconnectListener) -> Callable[[], None]:
        """Call ``listener()`` after every resubscription following a lost connection.

        Every subscription that existed then is marked with a gap (messages may have been
        missed: time to resync). Listeners run on the event loop and must not block;
        exceptions are logged. Returns a function that removes the listener.
        """
        return add_listener(self._on_reconnected, listener)

    def add_disconnect_listener(self, listener: ReconnectListener) -> Callable[[], None]:
        """Call ``listener()`` as soon as the subscriber connection is lost.

        Until the reconnect listeners run, messages are being missed (an L1 cache fed by
        invalidations should be bypassed). Same rules as :meth:`add_reconnect_listener`.
        """
        return add_listener(self._on_disconnected, listener)

    @property
    def connected(self) -> bool:
        """True while the subscriber connection is up and fully subscribed (and so is every
        node's connection for sharded channels)."""
        return self._classic.live and self._router.live

    def stats(self) -> PubSubStats:
        """Counts for metrics: subscriptions, Redis channels and patterns, reconnects, drops."""
        classic, router = self._classic, self._router
        sharded = len(router.registry.entries)
        return PubSubStats(
            subscriptions=len(self._subs),
            channels=len(classic.channels.entries) + sharded,
            patterns=len(classic.patterns.entries),
            reconnects=classic.reconnects + router.regains,
            dropped=self._dropped_total,
            connected=self.connected,
            sharded_channels=sharded,
            shard_connections=router.connections,
        )

    async def aclose(self) -> None:
        """Stop the hub: tasks cancelled and awaited, connections closed. Idempotent.

        Subscriptions end: after their buffered messages, iteration raises
        ``SubscriptionClosed(reason="closed")``; pending ``subscribe()`` calls raise
        ``RedisUnavailable(reason="closed")``.
        """
        if self._closed:
            return
        self._closed = True
        if self._switch is not None:
            await self._switch.aclose()
        await self._classic.aclose()
        await self._router.aclose()
        for sub in self._subs:
            sub.end(End.HUB_CLOSED)
        self._subs.clear()
        self._classic.forget()
        self._client.monitor.release_down("pubsub")

    def __repr__(self) -> str:
        live = self._classic.live
        state = "closed" if self._closed else ("connected" if live else "disconnected")
        return f"<PubSubHub {state} subscriptions={len(self._subs)}>"

    def _check_usable(self) -> None:
        state = self._client.state
        if self._closed or state is ClientState.CLOSED:
            raise RedisUnavailable("pubsub: the client is closed", reason="closed")
        if state is not ClientState.CONNECTED:
            raise RedisUnavailable("pubsub: the client is not connected", reason="not_connected")
        listener = self._classic
        if self._failed:
            raise RedisUnavailable("pubsub: the listener failed", reason="down")
        if not listener.live and (
            listener.failing or (not listener.started and not self._client.available)
        ):
            raise RedisUnavailable(
                f"pubsub: Redis is unavailable ({self._client.health_reason})", reason="down"
            )

    async def _open(
        self,
        channels: list[str],
        patterns: list[str],
        size: int,
        on_message: MessageCallback | None = None,
    ) -> Subscription:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"buffer_size must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {size}")
        self._check_usable()
        self.start()
        classic, router, is_sharded = self._classic, self._router, self._sharded.match
        sub = Subscription(
            size,
            on_message,
            channels={
                (router.registry if is_sharded(n) else classic.channels).key(n): n for n in channels
            },
            patterns={classic.patterns.key(name): name for name in patterns},
            release=self._release,
            on_drop=self._count_drop,
        )
        entries: list[Entry[Subscription]] = []
        sharded: list[Entry[Subscription]] = []
        for name in channels:
            if is_sharded(name):
                sharded.append(router.acquire(name, sub))
            else:
                entries.append(classic.acquire(classic.channels, name, sub))
        entries.extend(classic.acquire(classic.patterns, name, sub) for name in patterns)
        entries.extend(sharded)
        self._subs.add(sub)
        classic.kick()
        if any(router.failing(entry) for entry in sharded):
            await sub.close()
            raise RedisUnavailable(
                "pubsub: the node serving a sharded channel is unreachable", reason="down"
            )
        try:
            async with Deadline(self._subscribe_timeout):
                for entry in entries:
                    await entry.confirmed.wait()
        except asyncio.TimeoutError as exc:
            await sub.close()
            raise RedisUnavailable(
                f"subscribe: Redis did not confirm within {self._subscribe_timeout}s",
                reason="timeout",
            ) from exc
        except BaseException:
            await sub.close()
            raise
        if self._closed or self._failed:
            reason = "closed" if self._closed else "down"
            raise RedisUnavailable("pubsub: the hub stopped while subscribing", reason=reason)
        refused = next((entry for entry in sharded if entry.error is not None), None)
        if refused is not None:
            await sub.close()
            raise RedisUnavailable(
                f"subscribe: Redis refused sharded channel {refused.name!r}: {refused.error}",
                reason="misconfigured",
            )
        sub.activate()
        return sub

    def _release(self, sub: Subscription) -> None:
        if sub not in self._subs:  # released already, or the hub closed
            return
        self._subs.discard(sub)
        classic, router = self._classic, self._router
        channels, patterns = sub.held
        for key, name in channels.items():
            if self._sharded.match(name):
                router.release(key, sub)
            else:
                classic.release(classic.channels, key, sub)
        for key in patterns:
            classic.release(classic.patterns, key, sub)
        classic.kick()

    # -- called by the connections --------------------------------------------------------

    def _on_lost(self) -> None:
        for sub in self._subs:
            sub.connection_lost()
        _notify(self._on_disconnected)

    def _count_drop(self) -> None:
        self._dropped_total += 1
        self._metrics.dropped.add(1)

    def _on_reconnect(self) -> None:
        self._metrics.reconnects.add(1)
        _notify(self._on_reconnected)

    def _on_switch(self) -> None:
        self._classic.wake()
        for listener in self._router.listeners.values():
            listener.wake()
        self._client.monitor.check_now()

    def _on_shard_lost(self, entries: list[Entry[Subscription]]) -> None:
        for entry in entries:
            for sub in entry.subs:
                sub.connection_lost()
        _notify(self._on_disconnected)

    def _on_refused(self, entry: Entry[Subscription]) -> None:
        # Subscribers still waiting in subscribe() raise; established ones end.
        for sub in list(entry.subs):
            if sub.active:
                sub.end(End.FAILED)
                self._release(sub)

    def _on_failed(self) -> None:
        self._failed = True
        for sub in self._subs:
            sub.end(End.FAILED)
        self._classic.forget()
        self._router.forget()

"""One invalidation channel per process: keeps every L1 cache coherent across instances.

Components (the JWT cache, the RBAC cache, the session cache and store) register their
:class:`~gateway_redis.localcache.LocalCache` instances, event handlers and resync hooks on
the client's one :class:`InvalidationBus` (``client.invalidation``). A change made through
the library is applied locally at once and published as a small JSON event on the bus
channel; every other instance applies it on receipt (well under 100 ms on a LAN).

L1 is only trusted while the bus knows it hears every event. Whenever that may not hold
(the client's health leaves ``up``, the subscriber connection drops and resubscribes, the
subscription buffer overflowed, a handler failed, or the bus is not started yet) every
registered cache is flushed and bypassed, and the resync hooks (reload the revocation list,
re-read the policy version) must run successfully before L1 is used again.

Event wire format (the channel is ``<key prefix>invalidate`` unless configured)::

    {"ns": "<namespace>", "src": "<instance id>", ...fields of the event}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway_redis import telemetry
from gateway_redis.errors import GatewayRedisError, RedisUnavailable, SubscriptionClosed
from gateway_redis.health import HealthState
from gateway_redis.localcache import LocalCache
from gateway_redis.support import cancel_and_wait, log_fields

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient
    from gateway_redis.pubsub import Subscription

__all__ = ["EventHandler", "InvalidationBus", "ResyncHook"]

_log = logging.getLogger(__name__)
_COMPONENT = "invalidation"

EventHandler = Callable[[Mapping[str, Any]], None]
"""``handler(event)`` for one namespace; runs on the event loop and must not block."""
ResyncHook = Callable[[], Awaitable[None]]
"""Reloads what a component mirrors from Redis; raising keeps L1 off and retries later."""

_RETRY_DELAY = 0.2  # seconds between attempts to subscribe or resync while Redis is away


class InvalidationBus:
    """The process's invalidation channel on top of ``client.publish``/``client.subscribe``.

    Applications and components use the client's own bus, :attr:`RedisClient.invalidation
    <gateway_redis.RedisClient.invalidation>`: the client builds it once, starts it when it
    connects and closes it with itself. Constructing another one is for tests of the bus.

    ``client`` is the shared :class:`~gateway_redis.RedisClient` (not owned: the bus never
    closes it). ``channel`` defaults to the client's key prefix + ``"invalidate"`` so that
    applications with different prefixes on one Redis do not hear each other.
    ``buffer_size`` bounds the subscription buffer (an overflow counts as a gap).

    Lifecycle (done by the client for its own bus): ``async with bus:`` or :meth:`start` /
    :meth:`aclose`. Until it is started
    and in sync the registered caches stay bypassed: everything still works, from Redis.
    """

    def __init__(
        self, client: RedisClient, *, channel: str | None = None, buffer_size: int = 10_000
    ) -> None:
        if channel is not None and (not isinstance(channel, str) or not channel):
            raise ValueError("channel must be a non-empty string")
        if type(buffer_size) is not int or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive int, got {buffer_size!r}")
        self._client = client
        self._channel = channel if channel is not None else client.key("invalidate")
        self._buffer_size = buffer_size
        self._id = secrets.token_hex(8)
        self._caches: list[LocalCache[Any, Any]] = []
        self._handlers: dict[str, list[EventHandler]] = {}
        self._hooks: list[ResyncHook] = []
        self._synced = False
        self._in_sync = asyncio.Event()
        self._subscribed = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._removers: list[Callable[[], None]] = []
        self._closed = False
        self._resyncs = 0

    # -- registration -------------------------------------------------------------------

    @property
    def client(self) -> RedisClient:
        """The Redis client the bus runs on."""
        return self._client

    @property
    def channel(self) -> str:
        """The pub/sub channel of the bus."""
        return self._channel

    @property
    def healthy(self) -> bool:
        """True while L1 caches may be used: started, subscribed, in sync, Redis up."""
        return self._synced and self._client.available

    @property
    def resyncs(self) -> int:
        """How many times the bus (re)gained sync; the first start counts as one."""
        return self._resyncs

    def local_cache(
        self, name: str, *, maxsize: int, ttl: float, max_bytes: int | None = None
    ) -> LocalCache[Any, Any]:
        """A new :class:`LocalCache` that the bus flushes and bypasses while out of sync
        (``max_bytes``: see :class:`LocalCache`)."""
        cache: LocalCache[Any, Any] = LocalCache(
            maxsize=maxsize, ttl=ttl, name=name, max_bytes=max_bytes
        )
        if not self._synced:
            cache.disable()
        self._caches.append(cache)
        return cache

    def on_event(self, namespace: str, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for each event of ``namespace``, local or remote.

        Returns a function that removes the handler (idempotent).
        """
        handlers = self._handlers.setdefault(namespace, [])
        handlers.append(handler)

        def remove() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def on_resync(self, hook: ResyncHook) -> Callable[[], None]:
        """Await ``hook()`` each time the bus regains sync, before L1 is used again.

        Registering on a bus that is already in sync starts a resync at once (L1 is off
        for the few milliseconds it takes), so the new component's mirror gets loaded.
        Returns a function that removes the hook (idempotent).
        """
        self._hooks.append(hook)
        if self._synced:
            self._out_of_sync("a component joined")

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return remove

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Apply ``event`` here at once, then send it to every other instance.

        ``event`` must be a JSON object without the keys ``ns`` and ``src``. The local
        application never fails; sending raises :class:`RedisUnavailable` when Redis is
        down (other instances then have L1 off anyway, since their health is not ``up``).
        """
        if "ns" in event or "src" in event:
            raise ValueError("event must not contain the keys 'ns' or 'src'")
        self._dispatch(namespace, event)
        await self._client.publish(self._channel, {**event, "ns": namespace, "src": self._id})
        self._count(namespace, "sent")

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (idempotent); returns without waiting for Redis."""
        self.start_nowait()

    def start_nowait(self) -> None:
        """:meth:`start` without the ``await``: creates the listening tasks on the running
        loop (``RuntimeError`` when there is none). Idempotent; a closed bus stays closed."""
        if self._tasks or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._removers.append(self._client.add_state_listener(self._on_state))
        self._removers.append(self._client.pubsub.add_reconnect_listener(self._on_reconnect))
        self._tasks = [
            loop.create_task(self._listen(), name="gateway-redis-invalidation-listen"),
            loop.create_task(self._sync(), name="gateway-redis-invalidation-sync"),
        ]

    async def wait_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the bus to be healthy; returns whether it is."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._in_sync.wait(), timeout)
        return self.healthy

    async def aclose(self) -> None:
        """Stop listening and leave every cache bypassed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._out_of_sync("closed")
        for remove in self._removers:
            remove()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                _log.warning(
                    "invalidation task ended with %r",
                    task.exception(),
                    extra=log_fields(_COMPONENT, "invalidation_task_failed"),
                )

    async def __aenter__(self) -> InvalidationBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "bypassed"
        return f"<InvalidationBus {self._channel!r} {state} caches={len(self._caches)}>"

    # -- internals -----------------------------------------------------------------------

    def _out_of_sync(self, why: str) -> None:
        if self._synced:
            _log.info(
                "L1 caches bypassed until the invalidation channel is back (%s)",
                why,
                extra=log_fields(_COMPONENT, "l1_bypassed", why),
            )
        self._synced = False
        self._in_sync.clear()
        for cache in self._caches:
            cache.disable()
        self._wake.set()

    def _on_state(self, state: HealthState, reason: str) -> None:
        if state is not HealthState.UP:
            self._out_of_sync(f"redis {state.value}")
        else:
            self._wake.set()

    def _on_reconnect(self) -> None:
        self._out_of_sync("pub/sub reconnected")

    def _count(self, namespace: str, direction: str) -> None:
        # Namespaces are the library's own few names (jwt, rbac, session): low cardinality.
        telemetry.instruments().invalidations.add(
            1, {"gateway.invalidation.kind": namespace, "gateway.invalidation.direction": direction}
        )

    def _dispatch(self, namespace: str, event: Mapping[str, Any]) -> None:
        for handler in self._handlers.get(namespace, ()):
            try:
                handler(event)
            except Exception:
                _log.exception(
                    "invalidation handler for %r failed",
                    namespace,
                    extra=log_fields(_COMPONENT, "invalidation_handler_failed", kind=namespace),
                )
                self._out_of_sync("handler failed")

    async def _listen(self) -> None:
        while not self._closed:
            try:
                subscription = await self._client.subscribe(
                    self._channel, buffer_size=self._buffer_size
                )
            except RedisUnavailable:
                await asyncio.sleep(_RETRY_DELAY)
                continue
            try:
                async with subscription:
                    self._subscribed = True
                    self._wake.set()
                    await self._consume(subscription)
            except SubscriptionClosed as exc:
                _log.warning(
                    "invalidation subscription ended (%s); resubscribing",
                    exc.reason,
                    extra=log_fields(_COMPONENT, "invalidation_resubscribing", exc.reason),
                )
            finally:
                self._subscribed = False
                self._out_of_sync("subscription ended")
            await asyncio.sleep(_RETRY_DELAY)

    async def _consume(self, subscription: Subscription) -> None:
        async for message in subscription:
            if message.gap_before:
                self._out_of_sync("messages may have been lost")
            data = message.data
            if not isinstance(data, dict) or data.get("src") == self._id:
                continue
            namespace = data.get("ns")
            if isinstance(namespace, str) and namespace in self._handlers:
                self._count(namespace, "received")
                self._dispatch(namespace, data)

    async def _sync(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._synced or not self._subscribed or not self._client.available:
                continue
            try:
                for hook in self._hooks:
                    await hook()
            except (GatewayRedisError, OSError) as exc:
                _log.info(
                    "invalidation resync failed (%s); retrying",
                    type(exc).__name__,
                    extra=log_fields(_COMPONENT, "invalidation_resync_failed", type(exc).__name__),
                )
                await asyncio.sleep(_RETRY_DELAY)
                self._wake.set()
                continue
            except Exception:
                _log.exception(
                    "invalidation resync hook failed; retrying",
                    extra=log_fields(_COMPONENT, "invalidation_resync_failed", "hook raised"),
                )
                await asyncio.sleep(_RETRY_DELAY)
                self._wake.set()
                continue
            # Anything that went wrong while the hooks ran re-armed the wake-up event and
            # cleared _synced; only a clean run, with nothing pending, enables L1.
            if self._wake.is_set() or not self._subscribed or not self._client.available:
                continue
            for cache in self._caches:
                cache.enable()
            self._synced = True
            self._in_sync.set()
            self._resyncs += 1
            _log.debug(
                "invalidation channel in sync; L1 caches enabled",
                extra=log_fields(_COMPONENT, "l1_enabled"),
            )

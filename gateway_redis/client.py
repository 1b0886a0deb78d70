"""The shared async Redis client: lifecycle, availability and the cache API.

(Over 400 lines: it is the library's one facade; the work is done in the modules it calls.)

One :class:`RedisClient` per process, connected in the application's lifespan and handed
to every middleware. It owns the process's shared things, each built once on first use
and closed with it: the pub/sub hub (:mod:`gateway_redis.pubsub`), the invalidation bus
(:mod:`gateway_redis.invalidation`) and the session store (:mod:`gateway_redis.sessions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from redis.asyncio import Redis

from gateway_redis import telemetry
from gateway_redis._confirm import confirmed_write
from gateway_redis._driver import (
    Backend,
    Deadline,
    disable_retries,
    make_backend,
    restore_retries,
)
from gateway_redis._translate import Outage, is_auth_error, is_outage_error, translate
from gateway_redis.config import RedisConfig
from gateway_redis.errors import (
    CacheKeyNotFound,
    CacheUnavailable,
    ConfigurationError,
    GatewayRedisError,
    RedisUnavailable,
)
from gateway_redis.health import ClientState, HealthMonitor, HealthState, StateListener
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.pubsub import PubSubHub, Subscription
from gateway_redis.sessions import Session, SessionStore
from gateway_redis.support import log_fields, ttl_milliseconds

__all__ = ["ClientState", "RedisClient"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


_CONNECTED = ClientState.CONNECTED  # read on every call: a global, not an enum lookup


def _available_gauge(client: RedisClient) -> float | None:
    if client._state is ClientState.CLOSED:
        return None
    return 1.0 if client.available else 0.0


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _encode_value(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"value must be bytes or str, got {type(value).__name__}")


class RedisClient:
    """A Redis client for gateways: bounded pool, retries, fast failure, health state.

    ``config`` says where Redis is (:class:`RedisConfig`); ``logger`` defaults to this
    module's logger. Use ``async with RedisClient(config) as client:`` or call
    :meth:`connect` and :meth:`aclose` yourself. Whoever creates the client closes it.

    Every call has a hard deadline (``config.operation_timeout``). When Redis is known to
    be unavailable calls fail at once with :class:`RedisUnavailable` (a cache ``get``
    raises :class:`CacheUnavailable`, which is also a :class:`CacheKeyNotFound`); a probe
    runs about once a second until Redis answers again.
    """

    def __init__(self, config: RedisConfig | None = None, *, logger: logging.Logger | None = None):
        self._config = config if config is not None else RedisConfig()
        self._logger = logger if logger is not None else _log
        self._state = ClientState.NEW
        self._backend = make_backend(
            self._config,
            probe_timeout=min(self._config.dial_timeout, self._config.probe_interval, 1.0),
        )
        self._redis: Redis = self._backend.redis
        self._run = self._backend.run  # bound once: execute calls it on every call
        self._health = HealthMonitor(
            self._probe,
            interval=self._config.health_check_interval,
            probe_interval=self._config.probe_interval,
            is_misconfigured=is_auth_error,
            logger=self._logger,
            on_recover=self._on_recover,
        )
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._pubsub: PubSubHub | None = None
        self._invalidation: InvalidationBus | None = None
        self._sessions: SessionStore | None = None
        metrics = telemetry.instruments()
        self._backend.set_wait_observer(metrics.pool_wait.record)
        self._health.add_listener(
            lambda state, _reason: metrics.state_changes.add(
                1, {"gateway.redis.state": state.value}
            )
        )
        # A closed client reports nothing (it is gone, not down) until it is collected.
        telemetry.register_gauge_source("available", self, _available_gauge)
        telemetry.register_gauge_source(
            "pool_in_use", self, lambda c: None if c._state is ClientState.CLOSED else c.pool_in_use
        )

    # -- lifecycle -------------------------------------------------------------------

    @property
    def config(self) -> RedisConfig:
        """The configuration this client was built with."""
        return self._config

    @property
    def state(self) -> ClientState:
        """``new``, ``connected`` or ``closed``."""
        return self._state

    async def connect(self) -> None:
        """Open ``min_idle_conns`` connections and start health monitoring.

        An unreachable Redis does not make this fail: the client starts ``down`` and
        recovers by itself (a gateway keeps serving what it can). Credentials that Redis
        rejects raise :class:`ConfigurationError`. Calling it twice is harmless; calling it
        on a closed client raises :class:`RedisUnavailable`.
        """
        if self._state is ClientState.CONNECTED:
            return
        if self._state is ClientState.CLOSED:
            raise RedisUnavailable("client is closed", reason="closed")
        try:
            async with Deadline(self._config.dial_timeout + self._config.operation_timeout):
                await self._warm()
                await self._probe()
        except Exception as exc:
            if is_auth_error(exc):
                await self._backend.aclose()
                raise ConfigurationError(
                    f"Redis at {self._config.redacted_url} rejected the credentials: "
                    f"{type(exc).__name__}"
                ) from exc
            if not is_outage_error(exc):
                raise
            self._health.report_failure(exc, f"connect failed: {type(exc).__name__}")
        self._state = ClientState.CONNECTED
        self._health.start()
        if self._invalidation is not None:
            self._invalidation.start_nowait()

    async def aclose(self) -> None:
        """Stop background work and close every connection. Idempotent."""
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                self._logger.exception(
                    "error while closing a component",
                    extra=log_fields("client", "close_failed"),
                )
        self._closers.clear()
        await self._health.aclose()
        await self._backend.aclose()

    async def __aenter__(self) -> RedisClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Components built on this client register their ``aclose`` here."""
        self._closers.append(closer)

    # -- availability ----------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True when Redis is believed reachable and calls go through."""
        return self._state is ClientState.CONNECTED and self._health.available

    @property
    def health(self) -> HealthState:
        """``up``, ``down`` or ``misconfigured``."""
        return self._health.state

    @property
    def health_reason(self) -> str:
        """Why the health state is what it is; never contains secrets."""
        return self._health.reason

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(state, reason)`` on each change of availability.

        Returns a function that removes the listener. Listeners run on the event loop and
        must not block; an exception in one is logged and ignored.
        """
        return self._health.add_listener(listener)

    @property
    def backend(self) -> Backend:
        """The driver-facing side (pool, cluster, lone connections); internal use."""
        return self._backend

    @property
    def monitor(self) -> HealthMonitor:
        """The availability state machine (for components that feed it)."""
        return self._health

    @property
    def pool_in_use(self) -> int:
        """Pooled connections currently lent out."""
        return self._backend.in_use

    @property
    def pool_idle(self) -> int:
        """Open pooled connections waiting for work."""
        return self._backend.idle

    async def _probe(self) -> None:
        # Cluster: a node that stopped answering fails only the calls routed to it; probe
        # often until it answers again.
        self._health.probe_often(await self._backend.probe())
        if self._health.available and self._backend.idle + self._backend.in_use < (
            self._config.min_idle_conns
        ):
            async with Deadline(self._config.operation_timeout):
                await self._warm()

    async def _on_recover(self) -> None:
        # Idle connections may point at a server that has since restarted: drop them and
        # open fresh ones (cluster: reload the slot map), so the first calls after
        # recovery do not trip over them.
        async with Deadline(self._config.operation_timeout):
            await self._backend.drop_idle()
            await self._warm()

    async def _warm(self) -> None:
        await self._backend.warm(self._config.min_idle_conns)

    # -- where calls go out (redis-py errors are translated by gateway_redis._translate)

    def _unavailable(self, miss: bool, message: str, reason: str) -> RedisUnavailable:
        cls = CacheUnavailable if miss else RedisUnavailable
        return cls(message, reason=reason)

    async def execute(
        self,
        operation: str,
        call: Callable[[Redis], Awaitable[T]],
        *,
        retry: bool = True,
        miss: bool = False,
    ) -> T:
        """Run ``call(redis)`` under the client's rules; the building block of every method.

        ``operation`` names the call in errors and logs. ``retry=False`` sends commands at
        most once (for non-idempotent ones). ``miss=True`` makes outage errors
        :class:`CacheUnavailable`. Writes that protect security go through
        :meth:`confirmed` instead.

        Raises :class:`RedisUnavailable` (fast, when Redis is known to be down; after the
        deadline, when it does not answer; ``reason="misconfigured"`` when the credentials
        are refused) and :class:`CommandError` for an error reply from Redis.
        """
        if self._state is not _CONNECTED:
            reason = "closed" if self._state is ClientState.CLOSED else "not_connected"
            raise self._unavailable(miss, f"{operation}: client is {self._state.value}", reason)
        if not self._health.available:
            raise self._unavailable(
                miss,
                f"{operation}: Redis is {self._health.state.value} ({self._health.reason})",
                self._health.state.value,
            )
        try:
            # Deadline's start()/end() rather than `async with`: no two coroutines per call.
            timer = Deadline(self._config.operation_timeout).start()
            try:
                if retry:
                    result = await self._run(call)
                else:
                    token = disable_retries()
                    try:
                        result = await self._run(call)
                    finally:
                        restore_retries(token)
            except BaseException as exc:
                timer.end(exc)  # raises TimeoutError when the deadline has passed
                raise
            timer.end(None)
            return result
        except GatewayRedisError:
            raise
        except Exception as exc:
            translated = translate(
                exc, operation, miss=miss, deadline=self._config.operation_timeout
            )
            if translated is None:
                raise
            if translated.outage is not Outage.NONE:
                if self._backend.call_failed(translated.outage):
                    self._health.report_failure(exc, translated.detail)
                else:
                    self._health.check_now()  # the probe decides (cluster)
            raise translated.error from exc

    async def confirmed(
        self,
        operation: str,
        key: str,
        call: Callable[[Redis], Awaitable[T]],
        *,
        retry: bool = True,
    ) -> T:
        """Run a write that protects security (logout, revocation, permission removal) and
        confirm it: :meth:`execute`'s rules, on pinned connections.

        ``call(r)`` gets a ``Redis`` bound to one connection to the primary (on Cluster:
        the primary that owns ``key``, a full key as :meth:`key` returns; ``call`` may only
        touch keys of that slot); its commands, pipelines and ``MULTI`` all run there. Then
        ``ROLE`` on that connection says whether the primary has replicas now, and if it
        has, ``WAIT 1`` on that same connection must see one acknowledge within half the
        operation deadline or of the read timeout, whichever is shorter (a longer ``WAIT``
        would outlast the socket), since a failover could otherwise silently undo the
        write (replication is asynchronous). Raises ``RedisUnavailable(reason="unconfirmed")``
        when none did (the write may still have been applied on the primary), and what
        :meth:`execute` raises.
        """
        config = self._config
        wait_ms = max(1, int(min(config.operation_timeout, config.read_timeout) * 500))
        return await self.execute(
            operation, lambda r: confirmed_write(r, key, call, wait_ms), retry=retry
        )

    def key(self, name: str) -> str:
        """``name`` with the configured key prefix."""
        if not isinstance(name, str):
            raise TypeError(f"key must be str, got {type(name).__name__}")
        return self._config.key_prefix + name

    # -- cache API ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """The value stored at ``key``.

        Raises :class:`CacheKeyNotFound` on a miss and :class:`CacheUnavailable` (both a
        miss and a :class:`RedisUnavailable`) when Redis cannot be reached.
        """
        full = self.key(key)
        value: Any = await self.execute("get", lambda r: r.get(full), miss=True)
        if value is None:
            raise CacheKeyNotFound(key)
        return value if type(value) is bytes else bytes(value)

    async def set(self, key: str, value: bytes | str, ttl: float | timedelta | None = None) -> None:
        """Store ``value`` at ``key``, expiring after ``ttl`` (seconds or timedelta).

        ``ttl=None`` stores without expiry. Raises :class:`RedisUnavailable`.
        """
        full, data = self.key(key), _encode_value(value)
        px = None if ttl is None else ttl_milliseconds(ttl)
        await self.execute("set", lambda r: r.set(full, data, px=px))

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error if it does not exist. Raises :class:`RedisUnavailable`."""
        full = self.key(key)
        await self.execute("delete", lambda r: r.delete(full))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists. Raises :class:`RedisUnavailable`."""
        full = self.key(key)
        count: int = await self.execute("exists", lambda r: r.exists(full))
        return count > 0

    async def set_nx(self, key: str, value: bytes | str, ttl: float | timedelta) -> bool:
        """Store ``value`` only if ``key`` does not exist; True if it was stored.

        The TTL is required: a lock or marker without expiry outlives its owner.
        Raises :class:`RedisUnavailable`.
        """
        full, data, px = self.key(key), _encode_value(value), ttl_milliseconds(ttl)
        stored: Any = await self.execute("set_nx", lambda r: r.set(full, data, px=px, nx=True))
        return bool(stored)

    async def increment(self, key: str) -> int:
        """Add 1 to the integer at ``key`` (created as 0) and return the new value.

        Sent at most once: a lost reply is reported as :class:`RedisUnavailable`, never
        retried into a double increment.
        """
        full = self.key(key)
        value: Any = await self.execute("increment", lambda r: r.incr(full), retry=False)
        return int(value)

    async def expire(self, key: str, ttl: float | timedelta) -> bool:
        """Set a TTL on an existing key; False if the key does not exist."""
        full, px = self.key(key), ttl_milliseconds(ttl)
        done: bool = await self.execute("expire", lambda r: r.pexpire(full, px))
        return bool(done)

    async def ping(self) -> None:
        """Round-trip to Redis through the pool. Raises :class:`RedisUnavailable`."""
        await self.execute("ping", lambda r: r.ping())

    # -- pub/sub (gateway_redis.pubsub) ---------------------------------------------------

    @property
    def pubsub(self) -> PubSubHub:
        """The process's pub/sub hub: one subscriber connection shared by every subscription."""
        if self._pubsub is None:
            self._pubsub = PubSubHub(self)
            self._on_close(self._pubsub.aclose)
        return self._pubsub

    async def publish(self, channel: str, message: Any) -> int:
        """Publish ``message`` as JSON on ``channel``; returns the number of receivers.

        See :meth:`gateway_redis.pubsub.PubSubHub.publish`.
        """
        return await self.pubsub.publish(channel, message)

    async def subscribe(self, *channels: str, buffer_size: int = 100) -> Subscription:
        """Subscribe to ``channels``; see :meth:`gateway_redis.pubsub.PubSubHub.subscribe`."""
        return await self.pubsub.subscribe(*channels, buffer_size=buffer_size)

    async def psubscribe(self, *patterns: str, buffer_size: int = 100) -> Subscription:
        """Subscribe to glob ``patterns``; never pass user input here."""
        return await self.pubsub.psubscribe(*patterns, buffer_size=buffer_size)

    async def unsubscribe(self, *channels: str) -> None:
        """End every subscription of this process to ``channels``, whoever made it; see
        :meth:`gateway_redis.pubsub.PubSubHub.unsubscribe`."""
        await self.pubsub.unsubscribe(*channels)

    # -- invalidation (gateway_redis.invalidation) --------------------------------------

    @property
    def invalidation(self) -> InvalidationBus:
        """The process's invalidation bus, on which every L1 cache and the session store
        register and publish; built on first use, closed with the client.

        It starts listening when the client connects, or at once if it is first asked for
        on a connected client with an event loop running. Never construct a second one for
        the same client: each would flush and resync on its own.
        """
        if self._invalidation is None:
            # The hub first: closers run in reverse order, so the bus closes before it.
            _ = self.pubsub
            bus = InvalidationBus(self)
            self._invalidation = bus
            self._on_close(bus.aclose)
            if self._state is _CONNECTED and _loop_running():
                bus.start_nowait()
        return self._invalidation

    # -- sessions (gateway_redis.sessions) ------------------------------------------------

    @property
    def sessions(self) -> SessionStore:
        """The client's session store (24 h default TTL, no idle timeout, unless set by
        :meth:`configure_sessions` before first use); built on first use."""
        if self._sessions is None:
            self._sessions = SessionStore(self)
        return self._sessions

    def configure_sessions(
        self,
        *,
        default_ttl: float | timedelta = 86400,
        idle_timeout: float | timedelta | None = None,
    ) -> SessionStore:
        """Build the client's one session store with these settings and return it (see
        :class:`~gateway_redis.sessions.SessionStore` for their meaning).

        Call it once, before anything uses :attr:`sessions` (typically right after
        building the client). Calling it again with the same settings returns the same
        store. Raises ``ValueError`` for invalid settings, and
        :class:`ConfigurationError` when the store already exists with other settings.
        """
        store = SessionStore(self, default_ttl=default_ttl, idle_timeout=idle_timeout)
        current = self._sessions
        if current is None:
            self._sessions = store
            return store
        if (current.default_ttl, current.idle_timeout) != (store.default_ttl, store.idle_timeout):
            raise ConfigurationError(
                "the session store is already in use with other settings; call "
                "configure_sessions() once, before the first use of client.sessions"
            )
        return current

    async def create_session(
        self,
        user_id: str,
        metadata: dict[str, Any] | None = None,
        ttl: float | timedelta | None = None,
    ) -> str:
        """Create a session for ``user_id``; returns its new ID (see :mod:`.sessions`)."""
        return await self.sessions.create(user_id, metadata, ttl=ttl)

    async def get_session(self, session_id: str) -> Session:
        """The session; raises :class:`SessionNotFound`."""
        return await self.sessions.get(session_id)

    async def update_session(self, session_id: str, metadata: dict[str, Any]) -> Session:
        """Merge ``metadata`` into the session; raises :class:`SessionNotFound`."""
        return await self.sessions.update(session_id, metadata)

    async def delete_session(self, session_id: str) -> None:
        """Delete the session; no error if it is already gone."""
        await self.sessions.delete(session_id)

    async def get_user_sessions(self, user_id: str) -> list[Session]:
        """Every live session of ``user_id``."""
        return await self.sessions.get_user_sessions(user_id)

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of ``user_id`` (log out everywhere); returns how many."""
        return await self.sessions.delete_user_sessions(user_id)

    def __repr__(self) -> str:
        return (
            f"<RedisClient {self._config.redacted_url} state={self._state.value} "
            f"health={self._health.state.value}>"
        )

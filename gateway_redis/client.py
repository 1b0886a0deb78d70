"""The shared async Redis client: lifecycle, availability, the call boundary (``execute``)
and the shared things it owns. Confirmed writes, the cache API and the pub/sub and session
shortcuts are in :mod:`gateway_redis._commands`.

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
from typing import TypeVar

from redis.asyncio import Redis

from gateway_redis import telemetry
from gateway_redis._availability import Availability
from gateway_redis._commands import Commands, WindowHits
from gateway_redis._driver import (
    Deadline,
    disable_retries,
    make_backend,
    restore_retries,
)
from gateway_redis._eviction import EvictionWatch
from gateway_redis._translate import (
    Outage,
    is_auth_error,
    is_connection_lost,
    is_outage_error,
    translate,
)
from gateway_redis.config import RedisConfig
from gateway_redis.errors import (
    CacheUnavailable,
    ConfigurationError,
    GatewayRedisError,
    RedisUnavailable,
)
from gateway_redis.health import ClientState, HealthMonitor
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.pubsub import PubSubHub
from gateway_redis.sessions.store import MAX_PER_USER, SessionStore
from gateway_redis.support import log_fields

__all__ = ["ClientState", "RedisClient", "WindowHits"]

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


class RedisClient(Commands, Availability):
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
            is_inconclusive=is_connection_lost,
            logger=self._logger,
            on_recover=self._on_recover,
        )
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._pubsub: PubSubHub | None = None
        self._invalidation: InvalidationBus | None = None
        self._sessions: SessionStore | None = None
        self._eviction = EvictionWatch(self._logger)
        metrics = telemetry.instruments()
        self._backend.set_wait_observer(metrics.pool_wait.record)
        self._backend.set_lost_observer(self._connection_lost)
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
        telemetry.register_gauge_source(
            "eviction_unsafe",
            self,
            lambda c: None if c._state is ClientState.CLOSED else c._eviction.gauge(),
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
            if self._health.judging:  # a broken connection is being judged: Redis answers
                self._health.answered()
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
                # A deadline that passed while our own loop was stalled is no verdict on
                # Redis (nor on a cluster node): the probe decides.
                if timer.stalled:
                    self._health.check_now()
                elif self._backend.call_failed(translated.outage):
                    self._health.report_failure(exc, translated.detail)
                else:  # the probe decides (a broken connection; cluster)
                    self._health.check_now(translated.outage is Outage.LOST)
            raise translated.error from exc

    def key(self, name: str) -> str:
        """``name`` with the configured key prefix."""
        if not isinstance(name, str):
            raise TypeError(f"key must be str, got {type(name).__name__}")
        return self._config.key_prefix + name

    # -- pub/sub (gateway_redis.pubsub) ---------------------------------------------------

    @property
    def pubsub(self) -> PubSubHub:
        """The process's pub/sub hub: one subscriber connection shared by every subscription."""
        if self._pubsub is None:
            self._pubsub = PubSubHub(self)
            self._on_close(self._pubsub.aclose)
        return self._pubsub

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
        """The client's session store (24 h default TTL, no idle timeout, 100 sessions per
        user, unless set by :meth:`configure_sessions` before first use); built on first use."""
        if self._sessions is None:
            self._sessions = SessionStore(self)
        return self._sessions

    def configure_sessions(
        self,
        *,
        default_ttl: float | timedelta = 86400,
        idle_timeout: float | timedelta | None = None,
        max_per_user: int = MAX_PER_USER,
        tag_key: str | bytes | None = None,
    ) -> SessionStore:
        """Build the client's one session store (see :class:`~gateway_redis.sessions.SessionStore`)
        before anything uses :attr:`sessions`; the same settings again return it, others
        raise :class:`ConfigurationError` (bad values: ``ValueError``)."""
        store = SessionStore(
            self,
            default_ttl=default_ttl,
            idle_timeout=idle_timeout,
            tag_key=tag_key,
            max_per_user=max_per_user,
        )
        if self._sessions is None:
            self._sessions = store
        elif self._sessions.settings != store.settings:
            once = "call configure_sessions() once, before the first use of client.sessions"
            raise ConfigurationError(f"the session store exists with other settings; {once}")
        return self._sessions

    def __repr__(self) -> str:
        return (
            f"<RedisClient {self._config.redacted_url} state={self._state.value} "
            f"health={self._health.state.value}>"
        )

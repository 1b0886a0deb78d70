"""Everything that touches redis-py's connection machinery: pool, retry, error translation.

Kept in one private module so the rest of the library speaks only our own types.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from gateway_redis.config import RedisConfig

_RECANCEL = 0.05  # seconds between cancellations once a deadline has passed


class deadline:
    """``async with deadline(seconds):`` -- like :func:`asyncio.timeout`, but insistent.

    redis-py sometimes swallows a cancellation (``asyncio.wait_for`` on Python 3.11 drops
    one that arrives as its inner operation completes, and connection cleanup can catch
    it), after which the call carries on through further socket timeouts and retries:
    measured, a 0.5 s deadline ended after 3.6 s. This one keeps cancelling every 50 ms
    until the block has exited, then raises :class:`asyncio.TimeoutError`. A cancellation
    from outside that arrives meanwhile is passed on, not turned into a timeout. It is
    also cheaper than ``asyncio.timeout`` (one timer handle, no state machine).
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_loop", "_seconds", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._fired = 0

    async def __aenter__(self) -> deadline:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task
            raise RuntimeError("deadline() must be used inside a task")
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._cancelling = 0
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        self._handle: asyncio.TimerHandle | asyncio.Handle = self._loop.call_at(
            self._loop.time() + self._seconds, self._fire
        )
        return self

    def _fire(self) -> None:
        self._fired += 1
        self._task.cancel()
        self._handle = self._loop.call_at(self._loop.time() + _RECANCEL, self._fire)

    @property
    def expired(self) -> bool:
        """Whether the deadline passed while the block ran."""
        return self._fired > 0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        self._handle.cancel()
        if not self._fired:
            return
        if sys.version_info >= (3, 11):
            for _ in range(self._fired):
                self._task.uncancel()
            if self._task.cancelling() > self._cancelling:
                return  # someone else cancelled too: let their CancelledError through
        raise asyncio.TimeoutError(f"deadline of {self._seconds}s exceeded") from exc

__all__ = [
    "Backend",
    "ClusterSeedConnection",
    "GatewayPool",
    "GatewaySentinelPool",
    "GatewayRetry",
    "PoolExhausted",
    "deadline",
    "is_auth_error",
    "is_outage_error",
    "no_retry",
    "open_probe_connection",
]

T = TypeVar("T")

# Set while a call must not be retried (INCR, PUBLISH: a lost reply would apply them twice).
_NO_RETRY: ContextVar[bool] = ContextVar("gateway_redis_no_retry", default=False)
# Set while an outer retry loop runs, so a nested one (reconnect inside a command) makes one
# attempt only: retries must not multiply.
_IN_RETRY: ContextVar[bool] = ContextVar("gateway_redis_in_retry", default=False)


@contextlib.contextmanager
def no_retry() -> Iterator[None]:
    """Within this block, commands are sent at most once."""
    token = _NO_RETRY.set(True)
    try:
        yield
    finally:
        _NO_RETRY.reset(token)


class PoolExhausted(rexc.ConnectionError):
    """Every pooled connection stayed busy for the whole pool timeout."""


class GatewayRetry(Retry):
    """redis-py's :class:`Retry`, with three rules of ours on top.

    Credentials errors are never retried (a wrong password must not become a storm),
    commands inside :func:`no_retry` are never retried, and a retry loop nested in another
    (the reconnect inside a retried command) makes a single attempt.
    """

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        self._backoff.reset()
        nested = _IN_RETRY.get()
        token = _IN_RETRY.set(True)
        try:
            failures = 0
            while True:
                try:
                    return await do()
                except self._supported_errors as error:
                    failures += 1
                    if with_failure_count:
                        await fail(error, failures)
                    else:
                        await fail(error)
                    if (
                        nested
                        or _NO_RETRY.get()
                        or is_auth_error(error)
                        or _refused(error)
                        or isinstance(error, (PoolExhausted, rexc.MaxConnectionsError))
                        or (is_retryable is not None and not is_retryable(error))
                        or failures > self._retries
                    ):
                        raise
                    delay = self._backoff.compute(failures)
                    if delay > 0:
                        await asyncio.sleep(delay)
        finally:
            _IN_RETRY.reset(token)


class GatewayPool(BlockingConnectionPool):
    """A blocking pool: ``max_connections`` is a hard cap and callers wait their turn.

    A wait longer than ``timeout`` raises :class:`PoolExhausted` (redis-py raises a bare
    ``ConnectionError``, which would look like an outage). Wait times are measured.
    """

    wait_observer: Callable[[float], None] | None = None

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            conn = await super().get_connection(*args, **options)
        except rexc.ConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(
                    f"no connection free within {self.timeout}s (pool of {self.max_connections})"
                ) from exc
            raise
        observer = self.wait_observer
        if observer is not None:
            observer(time.perf_counter() - started)
        return conn

    @property
    def in_use(self) -> int:
        """Connections currently lent out."""
        return len(self._in_use_connections)

    @property
    def idle(self) -> int:
        """Connected connections waiting in the pool."""
        return sum(1 for c in self._available_connections if c.is_connected)


def _connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    retry = GatewayRetry(
        ExponentialWithJitterBackoff(base=config.retry_backoff_base, cap=config.retry_backoff_cap),
        config.retry_attempts,
        supported_errors=(rexc.ConnectionError, rexc.TimeoutError),
    )
    kwargs: dict[str, Any] = {
        # redis-py has a single socket timeout for reads and writes.
        "socket_timeout": max(config.read_timeout, config.write_timeout),
        "socket_connect_timeout": config.dial_timeout,
        "socket_keepalive": True,
        "retry": retry,
        "health_check_interval": config.health_check_interval,
        "client_name": "gateway-redis",
    }
    if config.username is not None:
        kwargs["username"] = config.username
    if config.password is not None:
        kwargs["password"] = config.password
    return kwargs


def _tls_kwargs(config: RedisConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if config.tls_ca_file:
        kwargs["ssl_ca_certs"] = config.tls_ca_file
    if config.tls_cert_file:
        kwargs["ssl_certfile"] = config.tls_cert_file
        kwargs["ssl_keyfile"] = config.tls_key_file
    kwargs["ssl_cert_reqs"] = "required" if config.tls_verify else "none"
    if not config.tls_verify:
        kwargs["ssl_check_hostname"] = False
    return kwargs


class GatewaySentinelPool(SentinelConnectionPool, GatewayPool):
    """A Sentinel-managed pool with the blocking, capped behaviour of :class:`GatewayPool`.

    Connections ask the sentinels for the current primary whenever they (re)connect, and
    a primary that turned replica (READONLY) makes them reconnect: a failover is followed
    without a restart.
    """


class ClusterSeedConnection(Connection):
    """A lone connection to whichever of a cluster's seed nodes answers first.

    Classic pub/sub and probes need one connection to any node; when that node dies the
    next connect moves on to the others.
    """

    def __init__(self, *, seeds: tuple[tuple[str, int], ...], **kwargs: Any) -> None:
        super().__init__(host=seeds[0][0], port=seeds[0][1], **kwargs)
        self._seeds = list(seeds)

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        last: BaseException | None = None
        for _ in range(len(self._seeds)):
            self.host, self.port = self._seeds[0]
            try:
                await super().connect_check_health(check_health, retry_socket_connect=False)
                return
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                last = exc
                self._seeds.append(self._seeds.pop(0))
        assert last is not None
        raise last


class Backend:
    """The Redis side of one client: the command pool (or cluster), and lone connections.

    Standalone and Sentinel share one shape (a capped blocking pool behind a ``Redis``
    facade); Cluster uses redis-py's ``RedisCluster``, whose per-node pools cannot wait
    for a free connection (redis-py #3135), so a full node pool fails at once with
    ``pool_exhausted``. The Sentinel client is created once and shared (redis-py #3259).
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.topology = config.topology
        self.mode = self.topology.mode
        self._sentinel: Sentinel | None = None
        self.pool: GatewayPool | None = None
        self.cluster: RedisCluster | None = None
        # Cluster node pools cannot wait for a free connection (redis-py #3135): cap
        # concurrent calls ourselves, so callers queue instead of failing.
        self.limiter: asyncio.Semaphore | None = None
        self._wait_observer: Callable[[float], None] | None = None
        if self.mode == "sentinel":
            self._sentinel = self._make_sentinel()
        if self.mode == "cluster":
            self.cluster = self._make_cluster()
            self.limiter = asyncio.Semaphore(config.pool_size)
            self.redis: Any = self.cluster
        else:
            self.pool = self._make_pool(
                config.pool_size, timeout=config.pool_timeout, **_connection_kwargs(config)
            )
            self.redis = Redis(connection_pool=self.pool)

    def _make_sentinel(self) -> Sentinel:
        topo, config = self.topology, self.config
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": config.dial_timeout,
            "socket_connect_timeout": config.dial_timeout,
            # Ask each sentinel once; the caller's deadline and our probe handle the rest.
            "retry": Retry(NoBackoff(), 0),
        }
        if config.sentinel_username:
            sentinel_kwargs["username"] = config.sentinel_username
        if config.sentinel_password:
            sentinel_kwargs["password"] = config.sentinel_password
        return Sentinel(list(topo.nodes), sentinel_kwargs=sentinel_kwargs)

    def _make_cluster(self) -> RedisCluster:
        from redis.asyncio.cluster import ClusterNode

        topo, config = self.topology, self.config
        kwargs = _connection_kwargs(config)
        kwargs.pop("health_check_interval", None)
        if topo.username:
            kwargs["username"] = topo.username
        if topo.password:
            kwargs["password"] = topo.password
        if topo.tls:
            kwargs["ssl"] = True
            kwargs.update(_tls_kwargs(config))
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topo.nodes],
            max_connections=config.pool_size,
            require_full_coverage=True,
            # redis-py's periodic full reset on MOVED closes connections that concurrent
            # commands are using ("Connection closed", AttributeError). The slot map is
            # still patched on every MOVED without it.
            reinitialize_steps=0,
            **kwargs,
        )

    def _make_pool(self, size: int, *, timeout: float, **kwargs: Any) -> GatewayPool:
        config, topo = self.config, self.topology
        kwargs["max_connections"] = size
        kwargs["timeout"] = timeout
        # With maintenance notifications in "auto" mode redis-py skips its check that a
        # pooled connection is still alive when lending it out, so the first command after
        # a server restart hits a dead socket (fatal for a command sent at most once).
        kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        if self.mode == "sentinel":
            assert self._sentinel is not None
            kwargs["db"] = topo.db
            if topo.username:
                kwargs["username"] = topo.username
            if topo.password:
                kwargs["password"] = topo.password
            if topo.tls:
                kwargs["ssl"] = True
                kwargs.update(_tls_kwargs(config))
            return GatewaySentinelPool(topo.master_name, self._sentinel, **kwargs)
        if config.url is not None:
            if config.url.startswith("rediss://"):
                kwargs.update(_tls_kwargs(config))
            pool = GatewayPool.from_url(config.url, **kwargs)
            assert isinstance(pool, GatewayPool)
            return pool
        kwargs.update(host=config.host, port=config.port, db=config.db)
        if config.tls:
            from redis.asyncio.connection import SSLConnection

            kwargs["connection_class"] = SSLConnection
            kwargs.update(_tls_kwargs(config))
        return GatewayPool(**kwargs)

    def lone_connection(self, **overrides: Any) -> AbstractConnection:
        """A new, unconnected connection outside the pool, to the primary (or any node).

        ``overrides`` replace connection settings (timeouts, ``retry``, ``client_name``,
        ``protocol``...). Used for health probes and the pub/sub subscriber.
        """
        kwargs = _connection_kwargs(self.config)
        kwargs.update(overrides)
        if self.mode == "cluster":
            topo = self.topology
            kwargs.pop("health_check_interval", None)
            if topo.username:
                kwargs["username"] = topo.username
            if topo.password:
                kwargs["password"] = topo.password
            return ClusterSeedConnection(seeds=topo.nodes, **kwargs)
        pool = self._make_pool(1, timeout=self.config.pool_timeout, **kwargs)
        conn = pool.make_connection()
        # A Sentinel-managed connection holds only a weak proxy to its pool: keep it alive.
        conn._gateway_pool = pool
        return conn  # type: ignore[no-any-return]

    @property
    def in_use(self) -> int:
        """Connections lent out (all nodes together in cluster mode)."""
        if self.pool is not None:
            return self.pool.in_use
        assert self.cluster is not None
        return sum(len(node._connections) - len(node._free) for node in self.cluster.get_nodes())

    @property
    def idle(self) -> int:
        """Open connections waiting for work."""
        if self.pool is not None:
            return self.pool.idle
        assert self.cluster is not None
        return sum(
            sum(1 for c in node._free if c.is_connected) for node in self.cluster.get_nodes()
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait (at most ``pool_timeout``) for a free call slot in cluster mode."""
        limiter = self.limiter
        if limiter is None:
            yield
            return
        started = time.perf_counter()
        try:
            async with deadline(self.config.pool_timeout):
                await limiter.acquire()
        except asyncio.TimeoutError:
            raise PoolExhausted(
                f"no connection free within {self.config.pool_timeout}s "
                f"({self.config.pool_size} per client)"
            ) from None
        if self._wait_observer is not None:
            self._wait_observer(time.perf_counter() - started)
        try:
            yield
        finally:
            limiter.release()

    def set_wait_observer(self, observer: Callable[[float], None]) -> None:
        """Report pool wait times to ``observer`` (standalone and Sentinel)."""
        self._wait_observer = observer
        if self.pool is not None:
            self.pool.wait_observer = observer

    async def warm(self, count: int) -> None:
        """Open connections until ``count`` are idle (cluster: discover the nodes)."""
        if self.cluster is not None:
            await self.cluster.initialize()
            return
        assert self.pool is not None
        conns = []
        try:
            for _ in range(count - self.pool.idle):
                conns.append(await self.pool.get_connection())
        finally:
            for conn in conns:
                await self.pool.release(conn)

    async def drop_idle(self) -> None:
        """Close idle connections (they may point at a restarted or demoted server)."""
        if self.pool is not None:
            await self.pool.disconnect(inuse_connections=False)
        # Cluster nodes re-check themselves through MOVED/connection errors.

    async def aclose(self) -> None:
        """Close every connection this backend opened."""
        if self.cluster is not None:
            await self.cluster.aclose()
        else:
            await self.redis.aclose()
            assert self.pool is not None
            await self.pool.disconnect()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def open_probe_connection(backend: Backend, timeout: float) -> AbstractConnection:
    """A lone connection for health probes: no retries, short timeouts.

    Probes go over the raw connection, not ``Redis.execute_command``, so they never show
    up as command spans in OpenTelemetry's redis instrumentation.
    """
    return backend.lone_connection(
        retry=None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        client_name="gateway-redis-probe",
    )


def _refused(error: BaseException) -> bool:
    # Nothing listens at the address: another attempt a few ms later will not differ, and
    # failing now lets the client switch to fail-fast sooner.
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_auth_error(error: BaseException) -> bool:
    """True for errors that mean our credentials are wrong or not allowed."""
    if isinstance(error, (rexc.AuthenticationError, rexc.AuthorizationError)):
        return True
    if isinstance(error, rexc.ResponseError):
        text = str(error)
        return text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    return False


def is_outage_error(error: BaseException) -> bool:
    """True for errors that mean Redis could not be reached or did not answer in time."""
    return isinstance(
        error,
        (
            rexc.ConnectionError,
            rexc.TimeoutError,
            asyncio.TimeoutError,
            OSError,
            EOFError,
            # Cluster-wide trouble: redirections exhausted, slots down, TRYAGAIN.
            rexc.ClusterError,
            rexc.ClusterDownError,
            rexc.TryAgainError,
        ),
    )

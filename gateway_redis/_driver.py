"""Everything that touches redis-py's connection machinery: pool, retry, error translation.

Kept in one private module so the rest of the library speaks only our own types.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from gateway_redis.config import RedisConfig

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout as deadline  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = [
    "GatewayPool",
    "GatewayRetry",
    "PoolExhausted",
    "build_pool",
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
        self._backoff.reset()  # type: ignore[no-untyped-call]
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
                        or isinstance(error, PoolExhausted)
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
            conn = await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]
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


def build_pool(config: RedisConfig) -> GatewayPool:
    """The command pool for ``config``: blocking, capped at ``pool_size``."""
    kwargs = _connection_kwargs(config)
    kwargs["max_connections"] = config.pool_size
    kwargs["timeout"] = config.pool_timeout
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


def open_probe_connection(config: RedisConfig, timeout: float) -> Connection:
    """A lone, unpooled connection for health probes: no retries, short timeouts.

    Probes go over the raw connection, not ``Redis.execute_command``, so they never show
    up as command spans in OpenTelemetry's redis instrumentation.
    """
    kwargs = _connection_kwargs(config)
    kwargs["retry"] = None
    kwargs["socket_timeout"] = timeout
    kwargs["socket_connect_timeout"] = timeout
    kwargs["health_check_interval"] = 0
    kwargs["client_name"] = "gateway-redis-probe"
    pool = build_pool(config.replace(pool_size=1, min_idle_conns=0))
    connection_kwargs = dict(pool.connection_kwargs)
    connection_kwargs.update(kwargs)
    connection_kwargs.pop("max_connections", None)
    connection_kwargs.pop("timeout", None)
    conn = pool.connection_class(**connection_kwargs)
    assert isinstance(conn, Connection)
    return conn


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
        (rexc.ConnectionError, rexc.TimeoutError, asyncio.TimeoutError, OSError, EOFError),
    )


def make_redis(pool: GatewayPool) -> Redis:
    """A ``Redis`` facade over ``pool`` that does not own it."""
    # An explicitly given pool is never closed by the facade: the client owns it.
    return Redis(connection_pool=pool)

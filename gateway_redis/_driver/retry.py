"""The retry policy of every pooled connection, and the at-most-once switch that overrides it.

A command is retried (on a fresh connection, with jittered exponential backoff) when its
connection failed or timed out, except inside :class:`no_retry` (or between
:func:`disable_retries` and :func:`restore_retries`): INCR, PUBLISH and other commands that a
lost reply would apply twice are sent at most once. The switch is a ``ContextVar`` because
the caller (the client) and the reader (:class:`GatewayRetry`, called by redis-py deep inside a
command) never call each other; this module is the only one that touches it.

Health probes have a policy of their own (:func:`probe_until_conclusive`): they decide
whether Redis is down, so a single broken connection must not be their verdict.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from gateway_redis._translate import is_auth_error, is_connection_lost, is_refused
from gateway_redis.config import RedisConfig

__all__ = [
    "GatewayRetry",
    "command_retry",
    "disable_retries",
    "no_retry",
    "probe_until_conclusive",
    "restore_retries",
    "retries_disabled",
]

T = TypeVar("T")

# A probe that meets only broken connections (reset, closed mid-reply) tries again on a
# fresh connection for this long before it reports Redis down: long enough that a network
# resetting a quarter of all replies never fails it (~20 attempts on loopback), short
# enough that a proxy in front of a dead server is still noticed well within 100 ms.
_PROBE_PATIENCE = 0.05
_PROBE_PAUSE = 0.001

# Set while a call must not be retried (INCR, PUBLISH: a lost reply would apply them twice).
_NO_RETRY: ContextVar[bool] = ContextVar("gateway_redis_no_retry", default=False)
# Set while an outer retry loop runs, so a nested one (reconnect inside a command) makes one
# attempt only: retries must not multiply.
_IN_RETRY: ContextVar[bool] = ContextVar("gateway_redis_in_retry", default=False)


# ``token = disable_retries()`` ... ``restore_retries(token)``: what ``with no_retry():``
# does, for the one per-call path (RedisClient.execute) that avoids the context manager's
# calls. Bound C methods, not Python functions wrapping them: this runs on every INCR.
disable_retries: Callable[[], Token[bool]] = functools.partial(_NO_RETRY.set, True)
"""Send commands at most once in this context, until :func:`restore_retries` is called
with the token returned here."""
restore_retries: Callable[[Token[bool]], None] = _NO_RETRY.reset
"""Undo the :func:`disable_retries` call that returned the token."""


def retries_disabled() -> bool:
    """Whether commands in this context are sent at most once."""
    return _NO_RETRY.get()


class no_retry:
    """``with no_retry():`` -- within this block, commands are sent at most once.

    A class rather than a ``@contextmanager`` generator: it runs on every INCR and
    PUBLISH, and this costs a fifth as much (0.15 vs 0.8 us).
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _NO_RETRY.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _NO_RETRY.reset(self._token)


class GatewayRetry(Retry):
    """redis-py's :class:`Retry`, with three rules of ours on top.

    Credentials errors are never retried (a wrong password must not become a storm), nor is
    a refused connection (nothing listens; failing now lets the client fail fast sooner) or
    an exhausted pool; commands inside :class:`no_retry` are never retried, and a retry loop
    nested in another (the reconnect inside a retried command) makes a single attempt.
    """

    def get_retries(self) -> int:
        # RedisCluster (execute_command, ClusterPipeline.execute) runs its own loop of
        # get_retries() attempts instead of call_with_retry: report none inside no_retry,
        # so a lost INCR/PUBLISH reply is not resent there either. MOVED/ASK are followed
        # in an inner loop that does not read this. Elsewhere redis-py reads it only to
        # label metrics.
        return 0 if _NO_RETRY.get() else self._retries

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        self._backoff.reset()
        token = _IN_RETRY.set(True)
        nested = token.old_value is True  # an outer retry loop is running
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
                        or is_refused(error)
                        # PoolExhausted is one: the pool already waited its full timeout.
                        or isinstance(error, rexc.MaxConnectionsError)
                        or (is_retryable is not None and not is_retryable(error))
                        or failures > self._retries
                    ):
                        raise
                    delay = self._backoff.compute(failures)
                    if delay > 0:
                        await asyncio.sleep(delay)
        finally:
            _IN_RETRY.reset(token)


def command_retry(config: RedisConfig) -> GatewayRetry:
    """The retry policy of pooled (command) connections: ``config.retry_attempts`` retries
    after the first attempt, on connection errors and socket timeouts, with jittered
    exponential backoff between ``retry_backoff_base`` and ``retry_backoff_cap`` seconds."""
    return GatewayRetry(
        ExponentialWithJitterBackoff(base=config.retry_backoff_base, cap=config.retry_backoff_cap),
        config.retry_attempts,
        supported_errors=(rexc.ConnectionError, rexc.TimeoutError),
    )


async def probe_until_conclusive(
    attempt: Callable[[], Awaitable[T]], *, patience: float = _PROBE_PATIENCE
) -> T:
    """``await attempt()``; while it fails with a broken connection (:func:`is_connection_lost`),
    again (it must reconnect), for up to ``patience`` seconds and at least three attempts.

    Any other failure (refused, timeout, refused credentials, an error reply) is conclusive
    and raised at once, as is the last broken connection when patience runs out. The
    caller bounds the whole with its own deadline.
    """
    give_up = time.monotonic() + patience
    attempts = 0
    while True:
        attempts += 1
        try:
            return await attempt()
        except Exception as error:
            if not is_connection_lost(error) or (attempts >= 3 and time.monotonic() >= give_up):
                raise
        await asyncio.sleep(_PROBE_PAUSE)

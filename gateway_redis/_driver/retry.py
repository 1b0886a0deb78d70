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
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff

from gateway_redis._translate import is_auth_error, is_connection_lost, is_refused
from gateway_redis.config import RedisConfig

__all__ = [
    "GatewayRetry",
    "LostConnectionHook",
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
# A call whose connection broke is tried again past its retry budget for a quarter of its
# deadline, at most this long (see GatewayRetry), pausing at most _LOST_PAUSE in between.
_LOST_PATIENCE_CAP = 0.25
_LOST_PAUSE = 0.01

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


class LostConnectionHook:
    """Where every copy of one retry policy reports a broken connection.

    redis-py deep-copies the policy into each connection; all the copies share this object
    (a deep copy of it is itself). ``callback()``, set by the client, is told that a
    connection broke (the client runs a probe at once) and answers whether Redis is still
    believed available: if not, the call stops retrying and fails now.
    """

    __slots__ = ("callback",)

    def __init__(self) -> None:
        self.callback: Callable[[], bool] | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> LostConnectionHook:
        return self

    def __call__(self) -> bool:
        callback = self.callback
        return True if callback is None else callback()


class GatewayRetry(Retry):
    """redis-py's :class:`Retry`, with four rules of ours on top.

    Credentials errors are never retried (a wrong password must not become a storm), nor is
    a refused connection (nothing listens; failing now lets the client fail fast sooner) or
    an exhausted pool; commands inside :class:`no_retry` are never retried, and a retry loop
    nested in another (the reconnect inside a retried command) makes a single attempt.

    A broken connection (:func:`~gateway_redis._translate.is_connection_lost`: reset,
    closed mid-reply) is tried again on a fresh connection past the ``retries`` budget for
    up to ``lost_patience`` seconds after the first failure, with pauses of at most
    ``_LOST_PAUSE``: a flaky network or middlebox must not fail a call that a fresh
    connection can serve, while a dead server refuses the reconnect and ends the loop.
    Every broken connection is reported to :attr:`on_lost` at once, and retrying stops
    when it answers that Redis is down.
    """

    def __init__(
        self,
        backoff: AbstractBackoff,
        retries: int,
        supported_errors: tuple[type[rexc.RedisError], ...] = (
            rexc.ConnectionError,
            rexc.TimeoutError,
        ),
        *,
        lost_patience: float = 0.0,
    ) -> None:
        super().__init__(backoff, retries, supported_errors)
        self.lost_patience = lost_patience
        self.on_lost = LostConnectionHook()

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
            first_failure = 0.0
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
                    ):
                        raise
                    lost = is_connection_lost(error)
                    if lost and not self.on_lost():
                        raise  # Redis is known down: fail fast
                    if failures == 1:
                        first_failure = time.monotonic()
                    delay = self._backoff.compute(failures)
                    if failures > self._retries:
                        # Past the budget: only a broken connection, within patience.
                        if not (
                            lost
                            and self.lost_patience
                            and time.monotonic() - first_failure < self.lost_patience
                        ):
                            raise
                        delay = min(delay, _LOST_PAUSE)
                    if delay > 0:
                        await asyncio.sleep(delay)
        finally:
            _IN_RETRY.reset(token)


def command_retry(config: RedisConfig) -> GatewayRetry:
    """The retry policy of pooled (command) connections: ``config.retry_attempts`` retries
    after the first attempt, on connection errors and socket timeouts, with jittered
    exponential backoff between ``retry_backoff_base`` and ``retry_backoff_cap`` seconds;
    a broken connection is tried again past that for a quarter of ``operation_timeout`` (at
    most 0.25 s; never when ``retry_attempts`` is 0)."""
    patience = min(config.operation_timeout / 4, _LOST_PATIENCE_CAP)
    return GatewayRetry(
        ExponentialWithJitterBackoff(base=config.retry_backoff_base, cap=config.retry_backoff_cap),
        config.retry_attempts,
        supported_errors=(rexc.ConnectionError, rexc.TimeoutError),
        lost_patience=patience if config.retry_attempts else 0.0,
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

"""The one boundary where redis-py's exceptions become :mod:`gateway_redis.errors`.

:func:`translate` turns what a call raised into the error its caller sees and says what the
failure tells about Redis's availability (:class:`Outage`); the predicates below classify
redis-py errors for the retry policy, the health monitor and the pub/sub listeners. Nothing
here raises or logs: the client decides what to do with the verdict.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket
from typing import NamedTuple

from redis import exceptions as rexc

from gateway_redis.errors import (
    CacheUnavailable,
    CommandError,
    GatewayRedisError,
    RedisUnavailable,
)

__all__ = [
    "Outage",
    "Translated",
    "is_auth_error",
    "is_connection_lost",
    "is_outage_error",
    "is_refused",
    "is_wrong_type",
    "translate",
]

_OUTAGE_ERRORS = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    asyncio.TimeoutError,
    OSError,
    EOFError,
    # Cluster-wide trouble: redirections exhausted, slots down, TRYAGAIN.
    rexc.ClusterError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
)


class Outage(enum.Enum):
    """What a failed call says about Redis's availability."""

    NONE = "none"
    """Nothing: Redis answered (an error reply), or our own pool was full."""
    DEADLINE = "deadline"
    """The call's deadline passed while it waited on Redis."""
    CREDENTIALS = "credentials"
    """Redis refused our credentials (``misconfigured``)."""
    UNREACHABLE = "unreachable"
    """Nothing listens (connection refused), a socket timed out, or the cluster reported
    trouble: evidence enough that Redis is unavailable."""
    LOST = "lost"
    """An open connection broke (reset, closed mid-reply): that connection, or the server;
    only a probe can tell (:func:`is_connection_lost`)."""


class Translated(NamedTuple):
    """The verdict of :func:`translate`: ``error`` is what to raise (``from`` the original),
    ``outage`` what to tell the health monitor, ``detail`` the reason to log there."""

    error: GatewayRedisError
    outage: Outage
    detail: str


def translate(exc: Exception, operation: str, *, miss: bool, deadline: float) -> Translated | None:
    """Translate ``exc``, raised by the call named ``operation``, into our error tree.

    ``miss=True`` turns outages into :class:`CacheUnavailable` (a cache read: also a miss);
    ``deadline`` is the call's time limit in seconds, for the message. Returns None for an
    exception that is not redis-py's (nor a timeout or socket error): a bug in the caller's
    callable, which the client lets through unchanged. Our own errors are not passed here.

    * an exhausted pool -> ``RedisUnavailable(reason="pool_exhausted")``, no outage;
    * the deadline passed -> ``reason="timeout"``, :attr:`Outage.DEADLINE`;
    * credentials refused -> ``reason="misconfigured"``, :attr:`Outage.CREDENTIALS`;
    * a broken connection -> ``"down"``, :attr:`Outage.LOST`;
    * refused, socket timeout, cluster down -> ``"down"``/``"timeout"``,
      :attr:`Outage.UNREACHABLE`;
    * any other error reply -> :class:`CommandError` (Redis is fine).
    """
    unavailable = CacheUnavailable if miss else RedisUnavailable
    if isinstance(exc, rexc.MaxConnectionsError):  # our PoolExhausted too
        return Translated(
            unavailable(f"{operation}: {exc}", reason="pool_exhausted"), Outage.NONE, ""
        )
    if isinstance(exc, asyncio.TimeoutError):
        return Translated(
            unavailable(f"{operation}: no answer within {deadline}s", reason="timeout"),
            Outage.DEADLINE,
            "timeout",
        )
    if is_auth_error(exc):
        return Translated(
            unavailable(f"{operation}: Redis rejected the credentials", reason="misconfigured"),
            Outage.CREDENTIALS,
            "credentials rejected",
        )
    if is_outage_error(exc):
        detail = f"{type(exc).__name__}: {exc}"
        reason = "timeout" if isinstance(exc, rexc.TimeoutError) else "down"
        outage = Outage.LOST if is_connection_lost(exc) else Outage.UNREACHABLE
        return Translated(unavailable(f"{operation}: {detail}", reason=reason), outage, detail)
    if isinstance(exc, rexc.ResponseError):
        return Translated(CommandError(f"{operation}: {exc}"), Outage.NONE, "")
    return None


def is_refused(error: BaseException) -> bool:
    """True when nothing listens at the address (``ConnectionRefusedError`` in the chain of
    causes): another attempt a few ms later will not differ, and failing now lets the client
    switch to fail-fast sooner."""
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Errors that reached no server at all: nothing listens, no route, no such host.
_UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)
# Connection errors that are a verdict of the server, not a broken connection.
_SERVER_VERDICTS = (
    rexc.AuthenticationError,
    rexc.AuthorizationError,
    rexc.BusyLoadingError,
    rexc.MaxConnectionsError,
)


def is_connection_lost(error: BaseException) -> bool:
    """True when an open connection broke (reset by the peer, closed in the middle of a
    reply, a broken pipe): the failure of one connection, which a healthy server behind a
    flaky network or middlebox also produces, so not by itself evidence of an outage.

    False for timeouts, a refused connection or another failure to reach the host (see
    :func:`is_refused`), refused credentials, ``LOADING`` and an exhausted pool.
    """
    if isinstance(error, (TimeoutError, asyncio.TimeoutError, rexc.TimeoutError)):
        return False
    if not isinstance(error, (rexc.ConnectionError, OSError, EOFError)):
        return False
    if isinstance(error, _SERVER_VERDICTS) or is_auth_error(error):
        return False
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, (TimeoutError, socket.gaierror)) or (
            isinstance(seen, OSError) and seen.errno in _UNREACHABLE_ERRNOS
        ):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


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
    return isinstance(error, _OUTAGE_ERRORS)


def is_wrong_type(error: CommandError) -> bool:
    """True when Redis refused the command because a key holds another type (``WRONGTYPE``),
    also when a script's ``redis.call`` got that reply."""
    cause = error.__cause__
    return "WRONGTYPE" in str(error if cause is None else cause)

"""Small shared helpers of ``gateway_redis``, public so ``middleware`` may use them too.

- :func:`log_fields`: the structured fields every library log record carries. Each record
  of ``gateway_redis`` and ``middleware`` passes ``extra=log_fields(...)``: an ``event``
  (a stable snake_case name to filter on), the ``component`` that logged it and, where
  there is one, the ``reason``. Handlers that emit JSON (the example gateway's
  ``JSONFormatter``, structlog's stdlib bridge, python-json-logger) show them as fields;
  plain text handlers ignore them. Values are never secrets: no token, session ID, key or
  password is ever passed here.
- :func:`cancel_and_wait`: ending background tasks for sure.
- :func:`describe_error`: a short, secret-free description of an exception.
- :func:`check_seconds` and :func:`ttl_milliseconds`: the one validator of durations given
  as seconds or :class:`~datetime.timedelta` (timeouts, TTLs, intervals).
- :func:`add_listener` and :func:`call_listeners`: lists of callbacks (state listeners,
  connection listeners), where one that raises never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

__all__ = [
    "add_listener",
    "call_listeners",
    "cancel_and_wait",
    "check_seconds",
    "describe_error",
    "log_fields",
    "ttl_milliseconds",
]

L = TypeVar("L", bound=Callable[..., object])

_EXACT_INT_SECONDS = 2**53 // 1000  # up to here an int TTL gives the same result as a float

# Attribute names a LogRecord already has: ``extra`` may not reuse them (logging raises).
_RESERVED = frozenset(
    {
        "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName",
        "levelname", "levelno", "lineno", "message", "module", "msecs", "msg", "name",
        "pathname", "process", "processName", "relativeCreated", "stack_info", "taskName",
        "thread", "threadName",
    }
)  # fmt: skip


def log_fields(
    component: str, event: str, reason: str | None = None, **more: object
) -> dict[str, object]:
    """The ``extra`` mapping for one log call: ``event``, ``component``, ``reason``, more.

    Raises :class:`ValueError` for a field name that would overwrite a LogRecord attribute.
    """
    fields: dict[str, object] = {"event": event, "component": component}
    if reason is not None:
        fields["reason"] = reason
    for name, value in more.items():
        if name in _RESERVED:
            raise ValueError(f"log field {name!r} would overwrite a LogRecord attribute")
        fields[name] = value
    return fields


async def cancel_and_wait(*tasks: asyncio.Task[Any], interval: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    A task is cancelled again every ``interval`` seconds while it runs: redis-py can
    swallow a cancellation that lands inside a call (``asyncio.wait_for`` on Python 3.11,
    connection cleanup), and a single ``cancel()`` then leaves ``await task`` hanging.
    The tasks' own exceptions are not raised here; read them with ``task.exception()``.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=interval)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of ``exc`` for logs and health reasons."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    name = type(exc).__name__
    return f"{name}: {exc}" if str(exc) else name


def check_seconds(
    name: str,
    value: float | timedelta,
    *,
    allow_zero: bool = False,
    maximum: float | None = None,
) -> float:
    """Validate a duration given as seconds (int or float) or a timedelta; return seconds.

    ``name`` opens the error message (``"<name> must be ..."``). Raises :class:`TypeError`
    for any other type (bool included) and :class:`ValueError` for NaN, infinity, a
    negative value, zero unless ``allow_zero``, or more than ``maximum`` seconds.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{name} must be seconds (int/float) or timedelta, got {type(value).__name__}"
        )
    if allow_zero:
        if not 0 <= seconds < float("inf"):  # False for NaN too
            raise ValueError(f"{name} must be a finite duration >= 0 s, got {value!r}")
    elif not 0 < seconds < float("inf"):
        raise ValueError(f"{name} must be a positive, finite duration (> 0 s), got {value!r}")
    if maximum is not None and seconds > maximum:
        raise ValueError(f"{name} must be at most {maximum:g} s, got {value!r}")
    return seconds


def ttl_milliseconds(ttl: float | timedelta) -> int:
    """Validate a TTL (seconds or timedelta) and return whole milliseconds (at least 1).

    Raises :class:`ValueError` for zero, negative or non-finite values and
    :class:`TypeError` for other types (see :func:`check_seconds`).
    """
    if type(ttl) is int and 0 < ttl <= _EXACT_INT_SECONDS:  # the common case, cheaply
        return ttl * 1000
    return max(1, round(check_seconds("ttl", ttl) * 1000))


def add_listener(listeners: list[L], listener: L) -> Callable[[], None]:
    """Append ``listener`` to ``listeners``; returns a function that removes it again
    (calling that a second time does nothing)."""
    listeners.append(listener)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(listener)

    return remove


def call_listeners(
    listeners: Sequence[Callable[..., object]],
    *args: object,
    logger: logging.Logger,
    message: str,
    fields: tuple[str, str],
) -> None:
    """Call every one of ``listeners`` with ``args`` (over a copy: a listener may remove
    itself). One that raises is logged (``message``, ``extra=log_fields(*fields)``: the
    component and the event) and the others still run."""
    for listener in list(listeners):
        try:
            listener(*args)
        except Exception:  # a listener can never break its caller
            logger.exception(message, extra=log_fields(*fields))

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
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "describe_error", "log_fields"]

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

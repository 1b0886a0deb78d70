"""The structured fields every library log record carries.

Each record of ``gateway_redis`` and ``middleware`` passes ``extra=log_fields(...)``: an
``event`` (a stable snake_case name to filter on), the ``component`` that logged it and,
where there is one, the ``reason``. Handlers that emit JSON (the example gateway's
``JSONFormatter``, structlog's stdlib bridge, python-json-logger) show them as fields;
plain text handlers ignore them. Values are never secrets: no token, session ID, key or
password is ever passed here.
"""

from __future__ import annotations

__all__ = ["log_fields"]

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
    """The ``extra`` mapping for one log call: ``event``, ``component``, ``reason``, more."""
    fields: dict[str, object] = {"event": event, "component": component}
    if reason is not None:
        fields["reason"] = reason
    for name, value in more.items():
        if name in _RESERVED:
            raise ValueError(f"log field {name!r} would overwrite a LogRecord attribute")
        fields[name] = value
    return fields

"""Validation of single :class:`~gateway_redis.RedisConfig` fields, and the error that
names the field.

Each check here is the only place its rule is written. A failure raises
:class:`FieldError`, a :class:`~gateway_redis.ConfigurationError` that carries the field's
name and the problem separately, so ``from_env`` can name the environment variable instead
of the field without parsing the message.
"""

from __future__ import annotations

from datetime import timedelta

from gateway_redis.errors import ConfigurationError
from gateway_redis.support import check_seconds

__all__ = ["FieldError", "check_integer", "check_sharded_channels", "seconds"]

_SHARDED_GLOB = ("?", "[", "]")
_RESERVED_PREFIX = "__gateway_redis__:"


class FieldError(ConfigurationError):
    """One field is invalid: the message is ``"<field>: <problem>"``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def seconds(field: str, value: float | timedelta, *, allow_zero: bool = False) -> float:
    """``value`` (seconds or timedelta) as float seconds; :class:`FieldError` otherwise."""
    try:
        return check_seconds(field, value, allow_zero=allow_zero)
    except (TypeError, ValueError) as exc:
        # check_seconds opens its message with the name it was given: drop it, the
        # FieldError puts the field (or from_env the variable) in front.
        raise FieldError(field, str(exc).removeprefix(f"{field} ")) from None


def check_integer(field: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``low..high``; :class:`FieldError` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(field, f"expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"{low}-{high}"
        raise FieldError(field, f"must be {bound}, got {value}")
    return value


def check_sharded_channels(value: object) -> tuple[str, ...]:
    """Validate ``sharded_channels``: exact names and trailing-``*`` prefixes, deduplicated.

    A comma-separated string is split first.
    """
    field = "sharded_channels"
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (tuple, list)):
        raise FieldError(field, f"expected a tuple of channel names or prefixes, got {value!r}")
    entries: list[str] = []
    for entry in value:
        if not isinstance(entry, str):
            raise FieldError(field, f"entries must be str, got {entry!r}")
        if not entry:
            raise FieldError(field, "empty entry")
        if "*" in entry[:-1] or any(c in entry for c in _SHARDED_GLOB):
            raise FieldError(
                field,
                f"{entry!r} is a glob pattern; give exact channel names "
                "or prefixes ending in a single * (like 'orders:*')",
            )
        try:
            size = len(entry.encode())
        except UnicodeEncodeError:
            raise FieldError(field, f"{entry!r} is not valid text") from None
        if size > 1024:
            raise FieldError(field, f"{entry[:40]!r}... is over 1024 bytes")
        if entry.startswith(_RESERVED_PREFIX):
            raise FieldError(field, f"{entry!r} is in the library's reserved namespace")
        entries.append(entry)
    return tuple(dict.fromkeys(entries))

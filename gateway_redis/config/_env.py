"""``RedisConfig.from_env``: one table of (variable, field, parser), and Go-style durations.

:data:`VARIABLES` is the only place that says which ``REDIS_*`` variable sets which field
and how its text is read. A parser turns the text into the field's value or raises
:class:`ValueError`; the constructor then validates the value as for any caller, and a
:class:`~gateway_redis.config._fields.FieldError` it raises is reported under the variable
that set the field. This module and the examples are the only code that reads the
environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from gateway_redis.config._fields import FieldError
from gateway_redis.config._url import parse_addresses
from gateway_redis.errors import ConfigurationError

__all__ = ["VARIABLES", "build_from_env", "parse_duration"]

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``"5s"``, ``"250ms"``, ``"1m30s"``) or plain seconds.

    Returns seconds as a float. Raises :class:`ValueError` for anything else,
    including negative values.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    if value.startswith("-"):
        raise ValueError(f"{text!r} is negative")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(
                f"{text!r} is not a duration (use seconds like 2.5 or Go-style like 250ms, 1m30s)"
            ) from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a finite duration")
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return seconds


class _Unset:
    """Returned by a parser for a value that counts as not set (an empty string)."""


_UNSET = _Unset()
Parser = Callable[[str], Any]


def _text(value: str) -> object:
    return value if value else _UNSET


def _text_or_empty(value: str) -> object:
    return value


def _integer(value: str) -> int:
    try:
        return int(value.strip(), 10)
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def _addresses(default_port: int) -> Parser:
    def parse(value: str) -> object:
        return parse_addresses(value, default_port=default_port) if value else _UNSET

    return parse


class Variable(NamedTuple):
    """One environment variable: its name, the field it sets and how its text is read."""

    name: str
    field: str
    parse: Parser


VARIABLES: tuple[Variable, ...] = (
    Variable("REDIS_URL", "url", _text),
    Variable("REDIS_HOST", "host", _text),
    Variable("REDIS_PORT", "port", _integer),
    Variable("REDIS_USERNAME", "username", _text),
    Variable("REDIS_PASSWORD", "password", _text),
    Variable("REDIS_DB", "db", _integer),
    Variable("REDIS_POOL_SIZE", "pool_size", _integer),
    Variable("REDIS_MIN_IDLE_CONNS", "min_idle_conns", _integer),
    Variable("REDIS_DIAL_TIMEOUT", "dial_timeout", parse_duration),
    Variable("REDIS_READ_TIMEOUT", "read_timeout", parse_duration),
    Variable("REDIS_WRITE_TIMEOUT", "write_timeout", parse_duration),
    Variable("REDIS_POOL_TIMEOUT", "pool_timeout", parse_duration),
    Variable("REDIS_OPERATION_TIMEOUT", "operation_timeout", parse_duration),
    Variable("REDIS_HEALTH_CHECK_INTERVAL", "health_check_interval", parse_duration),
    Variable("REDIS_RETRY_ATTEMPTS", "retry_attempts", _integer),
    Variable("REDIS_KEY_PREFIX", "key_prefix", _text_or_empty),
    Variable("REDIS_CHANNEL_PREFIX", "channel_prefix", _text_or_empty),
    Variable("REDIS_SHARDED_CHANNELS", "sharded_channels", _text),
    Variable("REDIS_TLS", "tls", _boolean),
    Variable("REDIS_TLS_CA_FILE", "tls_ca_file", _text),
    Variable("REDIS_TLS_CERT_FILE", "tls_cert_file", _text),
    Variable("REDIS_TLS_KEY_FILE", "tls_key_file", _text),
    Variable("REDIS_TLS_VERIFY", "tls_verify", _boolean),
    Variable("REDIS_SENTINELS", "sentinels", _addresses(26379)),
    Variable("REDIS_SENTINEL_MASTER", "sentinel_master", _text),
    Variable("REDIS_SENTINEL_USERNAME", "sentinel_username", _text),
    Variable("REDIS_SENTINEL_PASSWORD", "sentinel_password", _text),
    Variable("REDIS_CLUSTER_NODES", "cluster_nodes", _addresses(6379)),
)
_ADDRESS_VARIABLES = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB")
_VARIABLE_OF = {var.field: var.name for var in VARIABLES}


def build_from_env(factory: Callable[..., T], environ: Mapping[str, str] | None) -> T:
    """``factory(**fields)`` from the variables of :data:`VARIABLES` set in ``environ``
    (``os.environ`` when None).

    Raises :class:`~gateway_redis.ConfigurationError` naming the variable and the problem.
    """
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {}
    source: dict[str, str] = {}
    for var in VARIABLES:
        text = env.get(var.name)
        if text is None:
            continue
        try:
            value = var.parse(text)
        except ValueError as exc:
            raise ConfigurationError(f"{var.name}: {exc}") from None
        if value is not _UNSET:
            kwargs[var.field] = value
            source[var.field] = var.name
    if "url" in kwargs:
        clash = [name for name in _ADDRESS_VARIABLES if env.get(name)]
        if clash:
            raise ConfigurationError(
                f"REDIS_URL and {', '.join(clash)} are both set: give the address once"
            )
    try:
        return factory(**kwargs)
    except FieldError as exc:
        # Name the variable, not the field, so the operator knows what to fix (also when
        # the variable is the one missing: REDIS_SENTINEL_MASTER beside REDIS_SENTINELS).
        name = source.get(exc.field) or _VARIABLE_OF.get(exc.field)
        if name is None:
            raise
        raise ConfigurationError(f"{name}: {exc.problem}") from None

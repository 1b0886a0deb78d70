"""Connection settings for :class:`~gateway_redis.RedisClient`.

:class:`RedisConfig` is a frozen value object; :meth:`RedisConfig.from_env` is the only
place in the library that reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from gateway_redis.errors import ConfigurationError

__all__ = ["RedisConfig", "Topology", "parse_addresses", "parse_duration"]

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
_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
_MULTI_HOST = ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")


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


def parse_addresses(text: str, *, default_port: int) -> tuple[tuple[str, int], ...]:
    """Parse ``"host1:26379,host2,[::1]:26380"`` into ``((host, port), ...)``.

    Raises :class:`ValueError` for an empty list, an empty host or a bad port.
    """
    result: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        if not host:
            raise ValueError(f"empty host in {text!r}")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"bad port {port_text!r} in {text!r}") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range in {text!r}")
        result.append((host, port))
    if not result:
        raise ValueError(f"no addresses in {text!r}")
    return tuple(result)


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    """Where the data lives, resolved from the URL or the fields of :class:`RedisConfig`.

    ``mode`` is ``"standalone"``, ``"sentinel"`` or ``"cluster"``; ``nodes`` are the
    sentinels (sentinel mode) or the seed nodes (cluster mode).
    """

    mode: str
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def _seconds(name: str, value: float | timedelta, *, allow_zero: bool = False) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{name}: expected seconds (float) or timedelta, got {value!r}")
    if seconds != seconds or seconds == float("inf"):
        raise ConfigurationError(f"{name}: must be finite, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigurationError(
            f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
    return seconds


_SHARDED_GLOB = ("?", "[", "]")


def _sharded_channels(value: object) -> tuple[str, ...]:
    """Validate ``sharded_channels``: exact names and trailing-``*`` prefixes, deduplicated."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (tuple, list)):
        raise ConfigurationError(
            f"sharded_channels: expected a tuple of channel names or prefixes, got {value!r}"
        )
    entries: list[str] = []
    for entry in value:
        if not isinstance(entry, str):
            raise ConfigurationError(f"sharded_channels: entries must be str, got {entry!r}")
        if not entry:
            raise ConfigurationError("sharded_channels: empty entry")
        if "*" in entry[:-1] or any(c in entry for c in _SHARDED_GLOB):
            raise ConfigurationError(
                f"sharded_channels: {entry!r} is a glob pattern; give exact channel names "
                "or prefixes ending in a single * (like 'orders:*')"
            )
        try:
            size = len(entry.encode())
        except UnicodeEncodeError:
            raise ConfigurationError(f"sharded_channels: {entry!r} is not valid text") from None
        if size > 1024:
            raise ConfigurationError(f"sharded_channels: {entry[:40]!r}... is over 1024 bytes")
        if entry.startswith("__gateway_redis__:"):
            raise ConfigurationError(
                f"sharded_channels: {entry!r} is in the library's reserved namespace"
            )
        entries.append(entry)
    return tuple(dict.fromkeys(entries))


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Where Redis is and how to talk to it. All durations are seconds (float or timedelta).

    ``RedisConfig()`` means ``localhost:6379``, database 0. When ``url`` is given
    (``redis://``, ``rediss://`` or ``unix://``) it supplies the address, database and
    credentials; ``password``/``username`` may still be given separately when the URL
    carries none. The password never appears in ``repr``.

    Timeouts are chosen for a gateway that must answer within about 1.5 s in every
    fault state: ``operation_timeout`` is the hard deadline of one library call,
    including the wait for a pooled connection and any retries.

    ``sharded_channels`` lists the channels that use sharded pub/sub (SPUBLISH and
    SSUBSCRIBE, Redis 7+): each entry is an exact channel name or a prefix ending in
    ``*`` (``"orders:*"``; ``"*"`` alone shards every channel). Names are matched as the
    caller writes them, without ``channel_prefix``. A comma-separated string is accepted
    too. Default: none, every channel uses classic pub/sub. See
    :mod:`gateway_redis.pubsub`.

    Raises :class:`~gateway_redis.ConfigurationError` for any invalid value.
    """

    url: str | None = None
    host: str = "localhost"
    port: int = 6379
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    db: int = 0
    pool_size: int = 10
    min_idle_conns: int = 1
    dial_timeout: float = 1.0
    read_timeout: float = 1.0
    write_timeout: float = 1.0
    pool_timeout: float = 1.0
    operation_timeout: float = 1.5
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    key_prefix: str = "gw:"
    channel_prefix: str = ""
    sharded_channels: tuple[str, ...] = ()
    health_check_interval: float = 30.0
    probe_interval: float = 1.0
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    retry_attempts: int = 2
    retry_backoff_base: float = 0.005
    retry_backoff_cap: float = 0.1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in (
            "dial_timeout",
            "read_timeout",
            "write_timeout",
            "pool_timeout",
            "operation_timeout",
            "health_check_interval",
            "probe_interval",
            "retry_backoff_cap",
        ):
            set_(self, name, _seconds(name, getattr(self, name)))
        set_(
            self,
            "retry_backoff_base",
            _seconds("retry_backoff_base", self.retry_backoff_base, allow_zero=True),
        )
        for name in ("port", "db", "pool_size", "min_idle_conns", "retry_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigurationError(f"{name}: expected an integer, got {value!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigurationError(f"port: must be 1-65535, got {self.port}")
        if not 0 <= self.db <= 15:
            raise ConfigurationError(f"db: must be 0-15, got {self.db}")
        if self.pool_size < 1:
            raise ConfigurationError(f"pool_size: must be >= 1, got {self.pool_size}")
        if not 0 <= self.min_idle_conns <= self.pool_size:
            raise ConfigurationError(
                f"min_idle_conns: must be 0..pool_size ({self.pool_size}), "
                f"got {self.min_idle_conns}"
            )
        if not 0 <= self.retry_attempts <= 10:
            raise ConfigurationError(f"retry_attempts: must be 0-10, got {self.retry_attempts}")
        if not self.host:
            raise ConfigurationError("host: must not be empty")
        if not isinstance(self.key_prefix, str):
            raise ConfigurationError("key_prefix: must be a string")
        set_(self, "sharded_channels", _sharded_channels(self.sharded_channels))
        if self.url is not None:
            self._check_url(self.url)
        for name in ("sentinels", "cluster_nodes"):
            nodes = getattr(self, name)
            if isinstance(nodes, str):
                try:
                    nodes = parse_addresses(
                        nodes, default_port=26379 if name == "sentinels" else 6379
                    )
                except ValueError as exc:
                    raise ConfigurationError(f"{name}: {exc}") from None
            nodes = tuple(tuple(n) for n in nodes)
            for node in nodes:
                if len(node) != 2 or not isinstance(node[0], str) or not isinstance(node[1], int):
                    raise ConfigurationError(f"{name}: expected (host, port) pairs, got {node!r}")
            set_(self, name, nodes)
        if self.sentinels and self.cluster_nodes:
            raise ConfigurationError("sentinels and cluster_nodes: choose one topology")
        if self.sentinels and not self.sentinel_master:
            raise ConfigurationError("sentinel_master: required with sentinels")
        if self.url is not None and (self.sentinels or self.cluster_nodes):
            raise ConfigurationError("url and sentinels/cluster_nodes: give the topology once")
        if self.cluster_nodes and self.db != 0:
            raise ConfigurationError("db: Redis Cluster has only database 0")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigurationError("tls_cert_file and tls_key_file must be given together")
        if self.tls and self.url is not None and not urlsplit(self.url).scheme.startswith("rediss"):
            # The URL's scheme decides TLS; tls=True beside redis:// would silently be plain TCP.
            raise ConfigurationError(
                "tls: the url's scheme says plain TCP; use rediss:// (or rediss+sentinel://, "
                "rediss+cluster://) for TLS, or drop tls"
            )

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ConfigurationError(
                f"url: scheme must be one of {', '.join(s + '://' for s in _SCHEMES)}, "
                f"got {_redact_url(url)!r}"
            )
        if parts.scheme in _MULTI_HOST:
            self._url_topology(url)
            return
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"url: bad port in {_redact_url(url)!r}") from exc
        if parts.scheme == "unix":
            if not parts.path:
                raise ConfigurationError(f"url: unix:// needs a socket path, got {url!r}")
            return
        if parts.scheme in _MULTI_HOST:
            self._url_topology(url)
            return
        if not parts.hostname:
            raise ConfigurationError(f"url: missing host in {_redact_url(url)!r}")
        del port
        path = parts.path.strip("/")
        if path and (not path.isdigit() or not 0 <= int(path) <= 15):
            raise ConfigurationError(
                f"url: database must be 0-15, got {path!r} in {_redact_url(url)!r}"
            )
        if parts.password is not None and self.password is not None:
            raise ConfigurationError("password given both in url and separately")

    def _url_topology(self, url: str) -> Topology:
        """Parse ``redis+sentinel://[user:pw@]h1:p1,h2:p2/master[/db]`` or
        ``redis+cluster://[user:pw@]h1:p1,h2:p2``."""
        scheme, _, rest = url.partition("://")
        userinfo, _, hostpart = rest.rpartition("@")
        hosts, _, path = hostpart.partition("/")
        username = password = None
        if userinfo:
            user, _, pw = userinfo.partition(":")
            username, password = (unquote(user) or None), (unquote(pw) or None)
        if password is not None and self.password is not None:
            raise ConfigurationError("password given both in url and separately")
        sentinel = "sentinel" in scheme
        try:
            nodes = parse_addresses(hosts, default_port=26379 if sentinel else 6379)
        except ValueError as exc:
            raise ConfigurationError(f"url: {exc}") from None
        segments = [p for p in path.split("/") if p]
        master, db = None, 0
        if sentinel:
            if not segments:
                raise ConfigurationError(
                    "url: redis+sentinel:// needs the master name: "
                    "redis+sentinel://host:26379,host2:26379/mymaster[/db]"
                )
            master = unquote(segments[0])
            segments = segments[1:]
        if segments:
            if len(segments) > 1 or not segments[0].isdigit() or not 0 <= int(segments[0]) <= 15:
                raise ConfigurationError(f"url: bad database in {_redact_url(url)!r}")
            db = int(segments[0])
            if not sentinel and db != 0:
                raise ConfigurationError("url: Redis Cluster has only database 0")
        return Topology(
            mode="sentinel" if sentinel else "cluster",
            nodes=nodes,
            master_name=master,
            db=db,
            tls=scheme.startswith("rediss"),
            username=username or self.username,
            password=password or self.password,
        )

    @property
    def topology(self) -> Topology:
        """Standalone, Sentinel or Cluster, with the addresses to start from."""
        if self.url is not None and urlsplit(self.url).scheme in _MULTI_HOST:
            return self._url_topology(self.url)
        if self.sentinels:
            return Topology(
                mode="sentinel",
                nodes=self.sentinels,
                master_name=self.sentinel_master,
                db=self.db,
                tls=self.tls,
                username=self.username,
                password=self.password,
            )
        if self.cluster_nodes:
            return Topology(
                mode="cluster",
                nodes=self.cluster_nodes,
                tls=self.tls,
                username=self.username,
                password=self.password,
            )
        return Topology(mode="standalone", db=self.db, tls=self.tls)

    @property
    def mode(self) -> str:
        """``"standalone"``, ``"sentinel"`` or ``"cluster"``."""
        return self.topology.mode

    def __repr__(self) -> str:
        fields = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("password", "sentinel_password"):
                fields.append(f"{f.name}={'***' if value else None!r}")
            elif f.name == "url" and value is not None:
                fields.append(f"url={_redact_url(value)!r}")
            elif value != f.default:
                fields.append(f"{f.name}={value!r}")
        return f"RedisConfig({', '.join(fields)})"

    @property
    def redacted_url(self) -> str:
        """The server address for logs: the URL with its password masked, or host:port/db."""
        if self.url is not None:
            return _redact_url(self.url)
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def replace(self, **changes: Any) -> RedisConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisConfig:
        """Build a config from ``REDIS_*`` variables (``os.environ`` by default).

        Reads ``REDIS_URL``, ``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_USERNAME``,
        ``REDIS_PASSWORD``, ``REDIS_DB``, ``REDIS_POOL_SIZE``, ``REDIS_MIN_IDLE_CONNS``,
        ``REDIS_DIAL_TIMEOUT``, ``REDIS_READ_TIMEOUT``, ``REDIS_WRITE_TIMEOUT``,
        ``REDIS_POOL_TIMEOUT``, ``REDIS_OPERATION_TIMEOUT``, ``REDIS_KEY_PREFIX``,
        ``REDIS_CHANNEL_PREFIX``, ``REDIS_SHARDED_CHANNELS`` (``orders:*,ticker``),
        ``REDIS_HEALTH_CHECK_INTERVAL``, ``REDIS_RETRY_ATTEMPTS``,
        ``REDIS_TLS``, ``REDIS_TLS_CA_FILE``, ``REDIS_TLS_CERT_FILE``, ``REDIS_TLS_KEY_FILE``,
        ``REDIS_TLS_VERIFY``, ``REDIS_SENTINELS`` (``host:port,host:port``),
        ``REDIS_SENTINEL_MASTER``, ``REDIS_SENTINEL_USERNAME``, ``REDIS_SENTINEL_PASSWORD``,
        ``REDIS_CLUSTER_NODES``. Durations accept ``5s``, ``250ms``, ``1m30s`` or plain
        seconds. Unset variables keep the defaults; an empty string counts as unset for
        text values (URL, host, credentials, prefixes) and is an error for numbers.
        ``REDIS_URL`` together with ``REDIS_HOST``/``REDIS_PORT``/``REDIS_DB`` is an
        error: say where Redis is once.

        Raises :class:`~gateway_redis.ConfigurationError` naming the variable and the problem.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}

        def text(var: str, field: str, *, allow_empty: bool = False) -> None:
            value = env.get(var)
            if value is None or (value == "" and not allow_empty):
                return
            kwargs[field] = value

        def integer(var: str, field: str) -> None:
            value = env.get(var)
            if value is None:
                return
            try:
                kwargs[field] = int(value.strip(), 10)
            except ValueError:
                raise ConfigurationError(f"{var}={value!r}: not an integer") from None

        def duration(var: str, field: str) -> None:
            value = env.get(var)
            if value is None:
                return
            try:
                kwargs[field] = parse_duration(value)
            except ValueError as exc:
                raise ConfigurationError(f"{var}: {exc}") from None

        def boolean(var: str, field: str) -> None:
            value = env.get(var)
            if value is None:
                return
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                kwargs[field] = True
            elif lowered in ("0", "false", "no", "off"):
                kwargs[field] = False
            else:
                raise ConfigurationError(f"{var}={value!r}: expected true/false/1/0/yes/no")

        def addresses(var: str, field: str, default_port: int) -> None:
            value = env.get(var)
            if value is None or value == "":
                return
            try:
                kwargs[field] = parse_addresses(value, default_port=default_port)
            except ValueError as exc:
                raise ConfigurationError(f"{var}: {exc}") from None

        text("REDIS_URL", "url")
        text("REDIS_HOST", "host")
        integer("REDIS_PORT", "port")
        text("REDIS_USERNAME", "username")
        text("REDIS_PASSWORD", "password")
        integer("REDIS_DB", "db")
        integer("REDIS_POOL_SIZE", "pool_size")
        integer("REDIS_MIN_IDLE_CONNS", "min_idle_conns")
        duration("REDIS_DIAL_TIMEOUT", "dial_timeout")
        duration("REDIS_READ_TIMEOUT", "read_timeout")
        duration("REDIS_WRITE_TIMEOUT", "write_timeout")
        duration("REDIS_POOL_TIMEOUT", "pool_timeout")
        duration("REDIS_OPERATION_TIMEOUT", "operation_timeout")
        duration("REDIS_HEALTH_CHECK_INTERVAL", "health_check_interval")
        integer("REDIS_RETRY_ATTEMPTS", "retry_attempts")
        text("REDIS_KEY_PREFIX", "key_prefix", allow_empty=True)
        text("REDIS_CHANNEL_PREFIX", "channel_prefix", allow_empty=True)
        text("REDIS_SHARDED_CHANNELS", "sharded_channels")
        boolean("REDIS_TLS", "tls")
        text("REDIS_TLS_CA_FILE", "tls_ca_file")
        text("REDIS_TLS_CERT_FILE", "tls_cert_file")
        text("REDIS_TLS_KEY_FILE", "tls_key_file")
        boolean("REDIS_TLS_VERIFY", "tls_verify")
        addresses("REDIS_SENTINELS", "sentinels", 26379)
        text("REDIS_SENTINEL_MASTER", "sentinel_master")
        text("REDIS_SENTINEL_USERNAME", "sentinel_username")
        text("REDIS_SENTINEL_PASSWORD", "sentinel_password")
        addresses("REDIS_CLUSTER_NODES", "cluster_nodes", 6379)

        if "url" in kwargs:
            clash = [v for v in ("REDIS_HOST", "REDIS_PORT", "REDIS_DB") if env.get(v)]
            if clash:
                raise ConfigurationError(
                    f"REDIS_URL and {', '.join(clash)} are both set: give the address once"
                )
        env_name = {
            "port": "REDIS_PORT",
            "db": "REDIS_DB",
            "pool_size": "REDIS_POOL_SIZE",
            "min_idle_conns": "REDIS_MIN_IDLE_CONNS",
            "url": "REDIS_URL",
            "retry_attempts": "REDIS_RETRY_ATTEMPTS",
            "dial_timeout": "REDIS_DIAL_TIMEOUT",
            "read_timeout": "REDIS_READ_TIMEOUT",
            "write_timeout": "REDIS_WRITE_TIMEOUT",
            "pool_timeout": "REDIS_POOL_TIMEOUT",
            "operation_timeout": "REDIS_OPERATION_TIMEOUT",
            "health_check_interval": "REDIS_HEALTH_CHECK_INTERVAL",
            "sentinels": "REDIS_SENTINELS",
            "sentinel_master": "REDIS_SENTINEL_MASTER",
            "cluster_nodes": "REDIS_CLUSTER_NODES",
            "sharded_channels": "REDIS_SHARDED_CHANNELS",
            "tls": "REDIS_TLS",
        }
        try:
            return cls(**kwargs)
        except ConfigurationError as exc:
            # Name the variable, not the field, so the operator knows what to fix.
            message = str(exc)
            field = message.split(":", 1)[0]
            if field in env_name and field in kwargs:
                message = f"{env_name[field]}{message[len(field) :]}"
            raise ConfigurationError(message) from None

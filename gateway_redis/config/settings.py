"""Connection settings for :class:`~gateway_redis.RedisClient`: :class:`RedisConfig`.

:class:`RedisConfig` is a frozen value object built from flat keyword arguments
(``RedisConfig(url=..., dial_timeout=2, pool_size=20)``); the flat attributes are the stable
contract every part of the library reads. The obvious groups are also offered as small
frozen value objects, computed once when the config is built: :attr:`~RedisConfig.timeouts`
(:class:`Timeouts`), :attr:`~RedisConfig.pool` (:class:`PoolLimits`),
:attr:`~RedisConfig.retry` (:class:`RetryPolicy`), :attr:`~RedisConfig.tls_settings`
(:class:`TLSSettings`; ``tls`` is already the on/off switch), :attr:`~RedisConfig.sentinel`
(:class:`SentinelSettings`, None outside Sentinel mode) and :attr:`~RedisConfig.topology`.

Why the groups are read-only views and not constructor arguments too: accepting both
``timeouts=Timeouts(...)`` and ``dial_timeout=...`` would give every value two spellings
and need a rule for conflicts, which a dataclass cannot see (a default and an explicit
``1.0`` look the same); ``replace()`` would carry the old group along beside a changed flat
field; and the groups would need their own validation, a second copy of every rule. As
views they are always consistent with the fields, and each rule is written once, in
``__post_init__`` (with the per-field checks of ``_fields`` and ``_url``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gateway_redis.config._env import build_from_env
from gateway_redis.config._fields import (
    FieldError,
    check_integer,
    check_sharded_channels,
    seconds,
)
from gateway_redis.config._url import (
    Topology,
    check_nodes,
    check_url,
    redact_url,
    resolve_topology,
    uses_tls,
)
from gateway_redis.errors import ConfigurationError

__all__ = [
    "PoolLimits",
    "RedisConfig",
    "RetryPolicy",
    "SentinelSettings",
    "TLSSettings",
    "Timeouts",
]

_SECRETS = ("password", "sentinel_password")
# Positive seconds; retry_backoff_base may also be 0.
_DURATIONS = (
    "dial_timeout",
    "read_timeout",
    "write_timeout",
    "pool_timeout",
    "operation_timeout",
    "health_check_interval",
    "probe_interval",
    "retry_backoff_cap",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits in seconds: ``dial`` (connect), ``read`` and ``write`` (socket),
    ``pool`` (wait for a free connection) and ``operation`` (the hard deadline of one
    library call, including the pool wait and retries)."""

    dial: float
    read: float
    write: float
    pool: float
    operation: float


@dataclasses.dataclass(frozen=True, slots=True)
class PoolLimits:
    """Connections per pool: at most ``size``, with ``min_idle`` kept open when idle."""

    size: int
    min_idle: int


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of a failed call: up to ``attempts`` more tries, waiting an exponential
    backoff with jitter from ``backoff_base`` to at most ``backoff_cap`` seconds."""

    attempts: int
    backoff_base: float
    backoff_cap: float


@dataclasses.dataclass(frozen=True, slots=True)
class TLSSettings:
    """TLS to Redis: ``enabled`` (a ``rediss`` URL, or ``tls=True`` without a URL),
    the CA bundle, the client certificate and key (paths), and whether to verify the
    server's certificate."""

    enabled: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    verify: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SentinelSettings:
    """Sentinel mode: the sentinels' addresses, the master's name, and the credentials
    for the sentinels themselves (the data nodes use the main ones). The password stays
    out of ``repr``."""

    nodes: tuple[tuple[str, int], ...]
    master: str
    username: str | None
    password: str | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Where Redis is and how to talk to it. All durations are seconds (float or timedelta).

    ``RedisConfig()`` means ``localhost:6379``, database 0. When ``url`` is given
    (``redis://``, ``rediss://`` or ``unix://``; ``redis+sentinel://`` and
    ``redis+cluster://`` for those topologies) it supplies the address, database and
    credentials and is kept as given; ``password``/``username`` may still be given
    separately when the URL carries none. The password never appears in ``repr``.

    Timeouts are chosen for a gateway that must answer within about 1.5 s in every
    fault state: ``operation_timeout`` is the hard deadline of one library call,
    including the wait for a pooled connection and any retries.

    ``sharded_channels`` lists the channels that use sharded pub/sub (SPUBLISH and
    SSUBSCRIBE, Redis 7+): each entry is an exact channel name or a prefix ending in
    ``*`` (``"orders:*"``; ``"*"`` alone shards every channel). Names are matched as the
    caller writes them, without ``channel_prefix``. A comma-separated string is accepted
    too. Default: none, every channel uses classic pub/sub. See
    :mod:`gateway_redis.pubsub`.

    The grouped views (``timeouts``, ``pool``, ``retry``, ``tls_settings``, ``sentinel``,
    ``topology``) are computed once, here; see the module docstring.

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

    # Views, computed once in __post_init__ (see the module docstring): not arguments,
    # not compared, not in repr.
    topology: Topology = dataclasses.field(init=False, repr=False, compare=False)
    """Standalone, Sentinel or Cluster, with the addresses to start from."""
    timeouts: Timeouts = dataclasses.field(init=False, repr=False, compare=False)
    pool: PoolLimits = dataclasses.field(init=False, repr=False, compare=False)
    retry: RetryPolicy = dataclasses.field(init=False, repr=False, compare=False)
    tls_settings: TLSSettings = dataclasses.field(init=False, repr=False, compare=False)
    sentinel: SentinelSettings | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in _DURATIONS:
            set_(self, name, seconds(name, getattr(self, name)))
        set_(
            self,
            "retry_backoff_base",
            seconds("retry_backoff_base", self.retry_backoff_base, allow_zero=True),
        )
        check_integer("port", self.port, 1, 65535)
        check_integer("db", self.db, 0, 15)
        check_integer("pool_size", self.pool_size, 1)
        check_integer("retry_attempts", self.retry_attempts, 0, 10)
        if not isinstance(self.min_idle_conns, int) or isinstance(self.min_idle_conns, bool):
            raise FieldError("min_idle_conns", f"expected an integer, got {self.min_idle_conns!r}")
        if not 0 <= self.min_idle_conns <= self.pool_size:
            raise FieldError(
                "min_idle_conns",
                f"must be 0..pool_size ({self.pool_size}), got {self.min_idle_conns}",
            )
        if not self.host:
            raise FieldError("host", "must not be empty")
        if not isinstance(self.key_prefix, str):
            raise FieldError("key_prefix", "must be a string")
        set_(self, "sharded_channels", check_sharded_channels(self.sharded_channels))
        url_topology = None
        if self.url is not None:
            url_topology = check_url(self.url, username=self.username, password=self.password)
        set_(self, "sentinels", check_nodes("sentinels", self.sentinels, default_port=26379))
        set_(
            self,
            "cluster_nodes",
            check_nodes("cluster_nodes", self.cluster_nodes, default_port=6379),
        )
        if self.sentinels and self.cluster_nodes:
            raise ConfigurationError("sentinels and cluster_nodes: choose one topology")
        if self.sentinels and not self.sentinel_master:
            raise FieldError("sentinel_master", "required with sentinels")
        if self.url is not None and (self.sentinels or self.cluster_nodes):
            raise ConfigurationError("url and sentinels/cluster_nodes: give the topology once")
        if self.cluster_nodes and self.db != 0:
            raise FieldError("db", "Redis Cluster has only database 0")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigurationError("tls_cert_file and tls_key_file must be given together")
        if self.tls and self.url is not None and not uses_tls(self.url):
            # The URL's scheme decides TLS; tls=True beside redis:// would silently be plain TCP.
            raise FieldError(
                "tls",
                "the url's scheme says plain TCP; use rediss:// (or rediss+sentinel://, "
                "rediss+cluster://) for TLS, or drop tls",
            )
        self._set_views(url_topology)

    def _set_views(self, url_topology: Topology | None) -> None:
        set_ = object.__setattr__
        topology = resolve_topology(
            url_topology,
            sentinels=self.sentinels,
            sentinel_master=self.sentinel_master,
            cluster_nodes=self.cluster_nodes,
            db=self.db,
            tls=self.tls,
            username=self.username,
            password=self.password,
        )
        set_(self, "topology", topology)
        set_(
            self,
            "timeouts",
            Timeouts(
                dial=self.dial_timeout,
                read=self.read_timeout,
                write=self.write_timeout,
                pool=self.pool_timeout,
                operation=self.operation_timeout,
            ),
        )
        set_(self, "pool", PoolLimits(size=self.pool_size, min_idle=self.min_idle_conns))
        set_(
            self,
            "retry",
            RetryPolicy(
                attempts=self.retry_attempts,
                backoff_base=self.retry_backoff_base,
                backoff_cap=self.retry_backoff_cap,
            ),
        )
        set_(
            self,
            "tls_settings",
            TLSSettings(
                enabled=uses_tls(self.url) if self.url is not None else self.tls,
                ca_file=self.tls_ca_file,
                cert_file=self.tls_cert_file,
                key_file=self.tls_key_file,
                verify=self.tls_verify,
            ),
        )
        sentinel = None
        if topology.mode == "sentinel" and topology.master_name is not None:
            sentinel = SentinelSettings(
                nodes=topology.nodes,
                master=topology.master_name,
                username=self.sentinel_username,
                password=self.sentinel_password,
            )
        set_(self, "sentinel", sentinel)

    @property
    def mode(self) -> str:
        """``"standalone"``, ``"sentinel"`` or ``"cluster"``."""
        return self.topology.mode

    def __repr__(self) -> str:
        fields = []
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if f.name in _SECRETS:
                fields.append(f"{f.name}={'***' if value else None!r}")
            elif f.name == "url" and value is not None:
                fields.append(f"url={redact_url(value)!r}")
            elif value != f.default:
                fields.append(f"{f.name}={value!r}")
        return f"RedisConfig({', '.join(fields)})"

    @property
    def redacted_url(self) -> str:
        """The server address for logs: the URL with its password masked, or host:port/db."""
        if self.url is not None:
            return redact_url(self.url)
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
        ``REDIS_CLUSTER_NODES`` (the table is ``gateway_redis.config._env.VARIABLES``).
        Durations accept ``5s``, ``250ms``, ``1m30s`` or plain seconds. Unset variables
        keep the defaults; an empty string counts as unset for text values (URL, host,
        credentials, prefixes) and is an error for numbers. ``REDIS_URL`` together with
        ``REDIS_HOST``/``REDIS_PORT``/``REDIS_DB`` is an error: say where Redis is once.

        Raises :class:`~gateway_redis.ConfigurationError` naming the variable and the problem.
        """
        return build_from_env(cls, environ)

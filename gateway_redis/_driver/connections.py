"""How every connection is configured: credentials, TLS, timeouts, and the factories.

:func:`connection_kwargs` is the one place that turns a :class:`RedisConfig` into redis-py
connection settings for the data nodes (the server, Sentinel's primary, cluster nodes), and
:func:`sentinel_kwargs` the same for the sentinels. Where redis-py's entry points differ in
how they switch TLS on (a URL's scheme, ``ssl=True``, a connection class), the factories
below add that one switch; credentials and certificate settings come from here only.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from gateway_redis._driver.cluster import ClusterSeedConnection, ClusterSeedSSLConnection
from gateway_redis._driver.pool import GatewayPool, GatewaySentinelPool
from gateway_redis._driver.retry import command_retry
from gateway_redis.config import RedisConfig

__all__ = [
    "connection_kwargs",
    "lone_connection_kwargs",
    "make_pool",
    "make_sentinel",
    "pool_connection",
    "probe_connection_kwargs",
    "seed_connection",
    "sentinel_connection",
    "sentinel_kwargs",
    "tls_kwargs",
    "uses_tls",
]


def uses_tls(config: RedisConfig) -> bool:
    """Whether connections to the data nodes use TLS: ``tls=True``, or a ``rediss`` URL."""
    return config.topology.tls or (config.url or "").startswith("rediss://")


def tls_kwargs(config: RedisConfig) -> dict[str, Any]:
    """The certificate settings of a TLS connection (CA, client certificate, verification).

    Only the settings: each caller switches TLS on in the way its redis-py entry point
    expects (see the module docstring).
    """
    kwargs: dict[str, Any] = {}
    if config.tls_ca_file:
        kwargs["ssl_ca_certs"] = config.tls_ca_file
    if config.tls_cert_file:
        kwargs["ssl_certfile"] = config.tls_cert_file
        kwargs["ssl_keyfile"] = config.tls_key_file
    kwargs["ssl_cert_reqs"] = "required" if config.tls_verify else "none"
    if not config.tls_verify:
        kwargs["ssl_check_hostname"] = False
    return kwargs


def connection_kwargs(config: RedisConfig, **overrides: Any) -> dict[str, Any]:
    """Settings of a connection to a data node; ``overrides`` replace any of them.

    Socket timeouts (redis-py has one for reads and writes: the longer of ``read_timeout``
    and ``write_timeout``; ``dial_timeout`` to connect), keepalive, the command retry policy
    (:func:`~gateway_redis._driver.retry.command_retry`), ``client_name``, the credentials
    (those of a sentinel/cluster URL first, then ``username``/``password``) and, when
    :func:`uses_tls`, the certificate settings.

    There is no per-connection health check (redis-py's PING before a command on a
    connection idle for ``health_check_interval``): the pool makes sure a connection it
    lends is alive, a dead one that slips through is retried on a new connection, and the
    client's own health check runs every ``health_check_interval``.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": max(config.read_timeout, config.write_timeout),
        "socket_connect_timeout": config.dial_timeout,
        "socket_keepalive": True,
        "retry": command_retry(config),
        "client_name": "gateway-redis",
    }
    topology = config.topology
    username = topology.username or config.username
    if username:
        kwargs["username"] = username
    password = topology.password or config.password
    if password:
        kwargs["password"] = password
    if uses_tls(config):
        kwargs.update(tls_kwargs(config))
    kwargs.update(overrides)
    return kwargs


def lone_connection_kwargs(
    *,
    socket_timeout: float | None,
    socket_connect_timeout: float | None,
    client_name: str,
    protocol: int | None = None,
) -> dict[str, Any]:
    """Overrides for a lone connection that redis-py must never retry behind our back.

    Pass them to ``backend.lone_connection(**...)`` (or
    :func:`sentinel_connection`): probes, pub/sub subscribers, liveness checks and
    routers own their connection and decide themselves when to reconnect.
    ``socket_timeout`` None means no read timeout (an idle subscriber), and
    ``socket_connect_timeout`` None no connect timeout (a probe: its caller bounds every
    use); ``protocol=2`` asks
    for RESP2 (replies as plain arrays), None keeps redis-py's default.
    """
    kwargs: dict[str, Any] = {
        "retry": None,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "client_name": client_name,
    }
    if protocol is not None:
        kwargs["protocol"] = protocol
    return kwargs


def probe_connection_kwargs(timeout: float | None) -> dict[str, Any]:
    """:func:`lone_connection_kwargs` of a health probe: ``timeout`` seconds to connect and
    to read (None: no socket timeouts, for a connection whose every use has a time limit
    of its own, such as :func:`~gateway_redis._driver.deadlines.wait_attentively`, which a
    wall-clock socket timeout would pre-empt when the loop is busy). Probes go over a raw
    connection, not ``Redis.execute_command``, so they never show up as command spans in
    OpenTelemetry's redis instrumentation."""
    return lone_connection_kwargs(
        socket_timeout=timeout, socket_connect_timeout=timeout, client_name="gateway-redis-probe"
    )


def sentinel_kwargs(config: RedisConfig, **overrides: Any) -> dict[str, Any]:
    """Settings of a connection to a sentinel: the sentinels' own credentials and, when the
    topology uses TLS (``rediss+sentinel://`` means TLS to the sentinels too), the
    certificate settings. ``overrides`` replace any of them."""
    kwargs: dict[str, Any] = {}
    if config.sentinel_username:
        kwargs["username"] = config.sentinel_username
    if config.sentinel_password:
        kwargs["password"] = config.sentinel_password
    if config.topology.tls:
        kwargs.update(tls_kwargs(config))
    kwargs.update(overrides)
    return kwargs


def make_sentinel(config: RedisConfig) -> Sentinel:
    """The Sentinel client of one :class:`RedisClient`, created once and shared by its pools
    (redis-py #3259). Each sentinel is asked once per lookup, with ``dial_timeout``: the
    caller's deadline and the client's probe handle the rest."""
    kwargs = sentinel_kwargs(
        config,
        socket_timeout=config.dial_timeout,
        socket_connect_timeout=config.dial_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    if config.topology.tls:
        kwargs["ssl"] = True
    return Sentinel(list(config.topology.nodes), sentinel_kwargs=kwargs)


def sentinel_connection(
    config: RedisConfig, address: tuple[str, int], **overrides: Any
) -> Connection:
    """A new, unconnected connection to the sentinel at ``address`` (:func:`sentinel_kwargs`
    with ``overrides``: timeouts, ``client_name``...)."""
    kwargs = sentinel_kwargs(config, host=address[0], port=address[1], **overrides)
    if config.topology.tls:
        return SSLConnection(**kwargs)
    return Connection(**kwargs)


def make_pool(
    config: RedisConfig, sentinel: Sentinel | None, size: int, **overrides: Any
) -> GatewayPool:
    """A capped blocking pool of ``size`` connections to the server, or (``sentinel`` given)
    to Sentinel's current primary; callers wait at most ``pool_timeout`` seconds for one.
    ``overrides`` replace connection settings (:func:`connection_kwargs`)."""
    kwargs = connection_kwargs(config, **overrides)
    kwargs["max_connections"] = size
    kwargs["timeout"] = config.pool_timeout
    # With maintenance notifications in "auto" mode redis-py skips its check that a
    # pooled connection is still alive when lending it out, so the first command after
    # a server restart hits a dead socket (fatal for a command sent at most once).
    kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    topology = config.topology
    if sentinel is not None:
        kwargs["db"] = topology.db
        if topology.tls:
            kwargs["ssl"] = True
        return GatewaySentinelPool(topology.master_name, sentinel, **kwargs)
    if config.url is not None:  # the URL's scheme switches TLS on
        pool = GatewayPool.from_url(config.url, **kwargs)
        assert isinstance(pool, GatewayPool)
        return pool
    kwargs.update(host=config.host, port=config.port, db=config.db)
    if config.tls:
        kwargs["connection_class"] = SSLConnection
    return GatewayPool(**kwargs)


def pool_connection(
    config: RedisConfig, sentinel: Sentinel | None, **overrides: Any
) -> AbstractConnection:
    """A new, unconnected connection outside the command pool, made like the pool's (to the
    server, or Sentinel's current primary); ``overrides`` replace connection settings."""
    pool = make_pool(config, sentinel, 1, **overrides)
    conn = pool.make_connection()
    # A Sentinel-managed connection holds only a weak proxy to its pool: keep it alive.
    conn._gateway_pool = pool
    return conn  # type: ignore[no-any-return]


def seed_connection(config: RedisConfig, **overrides: Any) -> ClusterSeedConnection:
    """A new, unconnected connection to whichever cluster seed node answers first
    (:class:`~gateway_redis._driver.cluster.ClusterSeedConnection`); ``overrides`` replace
    connection settings."""
    kwargs = connection_kwargs(config, **overrides)
    seeds = config.topology.nodes
    if uses_tls(config):
        return ClusterSeedSSLConnection(seeds=seeds, **kwargs)
    return ClusterSeedConnection(seeds=seeds, **kwargs)

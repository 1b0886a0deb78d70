"""Where Redis is: URL and address-list parsing, the resolved :class:`Topology`, redaction.

Supported URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://`` for one server;
``redis+sentinel://[user:pw@]h1:p1,h2:p2/master[/db]`` and
``redis+cluster://[user:pw@]h1:p1,h2:p2`` (``rediss+...`` for TLS) for the other
topologies. :class:`~gateway_redis.RedisConfig` resolves its topology once, with
:func:`resolve_topology`, when it is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import cast
from urllib.parse import unquote, urlsplit

from gateway_redis.config._fields import FieldError
from gateway_redis.errors import ConfigurationError

__all__ = [
    "Topology",
    "check_nodes",
    "check_url",
    "parse_addresses",
    "redact_url",
    "resolve_topology",
    "uses_tls",
]

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
_GIVEN_TWICE = "password given both in url and separately"


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


def check_nodes(field: str, value: object, *, default_port: int) -> tuple[tuple[str, int], ...]:
    """``(host, port)`` pairs, given as pairs or as ``"host:port,host"`` text.

    Raises :class:`FieldError` naming ``field``.
    """
    if isinstance(value, str):
        try:
            value = parse_addresses(value, default_port=default_port)
        except ValueError as exc:
            raise FieldError(field, str(exc)) from None
    nodes = tuple(tuple(n) for n in cast("Iterable[Iterable[object]]", value))
    for node in nodes:
        if len(node) != 2 or not isinstance(node[0], str) or not isinstance(node[1], int):
            raise FieldError(field, f"expected (host, port) pairs, got {node!r}")
    return cast("tuple[tuple[str, int], ...]", nodes)


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``.

    Everything between ``://`` and the last ``@`` counts as user info here (as the
    Sentinel and Cluster URL parser reads it), so a password holding an unencoded ``/``,
    ``?``, ``#`` or ``[`` stays hidden too; the user name before the first ``:`` is kept.
    Never raises.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"


def uses_tls(url: str) -> bool:
    """Whether the URL's scheme asks for TLS (``rediss://``, ``rediss+...://``)."""
    return urlsplit(url).scheme.startswith("rediss")


def check_url(url: str, *, username: str | None, password: str | None) -> Topology | None:
    """Validate ``url``; return its :class:`Topology` for Sentinel and Cluster URLs.

    ``username``/``password`` are the ones given beside the URL. Raises
    :class:`FieldError` (field ``url``) for a bad scheme, address or database, and
    :class:`~gateway_redis.ConfigurationError` when the password is given twice.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # brackets around something that is no IPv6 address
        raise FieldError("url", f"cannot be parsed: {redact_url(url)!r}") from None
    if parts.scheme not in _SCHEMES:
        raise FieldError(
            "url",
            f"scheme must be one of {', '.join(s + '://' for s in _SCHEMES)}, "
            f"got {redact_url(url)!r}",
        )
    if parts.scheme in _MULTI_HOST:
        return _multi_host_topology(url, username=username, password=password)
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when it is read
    except ValueError:
        raise FieldError("url", f"bad port in {redact_url(url)!r}") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise FieldError("url", f"unix:// needs a socket path, got {redact_url(url)!r}")
        return None
    if not parts.hostname:
        raise FieldError("url", f"missing host in {redact_url(url)!r}")
    path = parts.path.strip("/")
    if path and (not path.isdigit() or not 0 <= int(path) <= 15):
        raise FieldError("url", f"database must be 0-15 in {redact_url(url)!r}")
    if parts.password is not None and password is not None:
        raise ConfigurationError(_GIVEN_TWICE)
    return None


def _multi_host_topology(url: str, *, username: str | None, password: str | None) -> Topology:
    """Parse ``redis+sentinel://[user:pw@]h1:p1,h2:p2/master[/db]`` or
    ``redis+cluster://[user:pw@]h1:p1,h2:p2``."""
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.rpartition("@")
    hosts, _, path = hostpart.partition("/")
    url_username = url_password = None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        url_username, url_password = (unquote(user) or None), (unquote(pw) or None)
    if url_password is not None and password is not None:
        raise ConfigurationError(_GIVEN_TWICE)
    sentinel = "sentinel" in scheme
    try:
        nodes = parse_addresses(hosts, default_port=26379 if sentinel else 6379)
    except ValueError as exc:
        raise FieldError("url", str(exc)) from None
    segments = [p for p in path.split("/") if p]
    master, db = None, 0
    if sentinel:
        if not segments:
            raise FieldError(
                "url",
                "redis+sentinel:// needs the master name: "
                "redis+sentinel://host:26379,host2:26379/mymaster[/db]",
            )
        master = unquote(segments[0])
        segments = segments[1:]
    if segments:
        if len(segments) > 1 or not segments[0].isdigit() or not 0 <= int(segments[0]) <= 15:
            raise FieldError("url", f"bad database in {redact_url(url)!r}")
        db = int(segments[0])
        if not sentinel and db != 0:
            raise FieldError("url", "Redis Cluster has only database 0")
    return Topology(
        mode="sentinel" if sentinel else "cluster",
        nodes=nodes,
        master_name=master,
        db=db,
        tls=scheme.startswith("rediss"),
        username=url_username or username,
        password=url_password or password,
    )


def resolve_topology(
    url_topology: Topology | None,
    *,
    sentinels: tuple[tuple[str, int], ...],
    sentinel_master: str | None,
    cluster_nodes: tuple[tuple[str, int], ...],
    db: int,
    tls: bool,
    username: str | None,
    password: str | None,
) -> Topology:
    """The topology: the one a Sentinel/Cluster URL names, else the one the fields name."""
    if url_topology is not None:
        return url_topology
    if sentinels:
        return Topology(
            mode="sentinel",
            nodes=sentinels,
            master_name=sentinel_master,
            db=db,
            tls=tls,
            username=username,
            password=password,
        )
    if cluster_nodes:
        return Topology(
            mode="cluster", nodes=cluster_nodes, tls=tls, username=username, password=password
        )
    return Topology(mode="standalone", db=db, tls=tls)

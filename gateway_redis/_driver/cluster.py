"""Redis Cluster: node health, the ASK-fixing node connection, seed connections, the probe.

Two context variables carry state between calls that redis-py makes on our connections and
never passes along: the ASK redirect owed to a node (:class:`ClusterNodeConnection`) and
the node a task is waiting on (read back through :func:`take_waited_on_node` when the
call's deadline passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from redis import exceptions as rexc
from redis.asyncio.connection import Connection, SSLConnection

from gateway_redis._driver.deadlines import wait_attentively
from gateway_redis._translate import is_auth_error
from gateway_redis.support import log_fields

__all__ = [
    "ClusterNodeConnection",
    "ClusterNodeSSLConnection",
    "ClusterSeedConnection",
    "ClusterSeedSSLConnection",
    "NodeHealth",
    "NodeUnreachable",
    "cluster_state",
    "probe_cluster",
    "take_waited_on_node",
]

_log = logging.getLogger(__name__)
_ASKING = b"*1\r\n$6\r\nASKING\r\n"  # pack_command("ASKING")
# Set by a lone ASKING: the node ("host:port") whose next command in this task carries it.
_ASKING_OWED: ContextVar[str | None] = ContextVar("gateway_redis_asking_owed", default=None)
# The cluster node this task sent a command to and has no reply from yet.
_WAITING_ON: ContextVar[str | None] = ContextVar("gateway_redis_waiting_on", default=None)


def take_waited_on_node() -> str | None:
    """The node (``host:port``) this task sent a command to and got no reply from yet, if
    any; forgets it. Read when a call's deadline passed, to mark that node."""
    name = _WAITING_ON.get()
    if name is not None:
        _WAITING_ON.set(None)
    return name


class NodeUnreachable(rexc.ConnectionError):
    """A command was routed to a cluster node marked unreachable, and was not sent."""


class NodeHealth:
    """Which cluster nodes stopped answering; commands routed to them fail at once.

    A node is marked when a connection to it cannot be opened, a read or write times out,
    or a call's deadline passes while it waits on the node (:meth:`ClusterBackend.call_failed`).
    A connection closed under a command is not enough (``CLIENT KILL`` does that too): the
    reconnect that follows decides. While marked, commands to the node raise
    :class:`NodeUnreachable` unsent; redis-py takes that for a connection error, reloads
    its slot map and retries, so calls reach a promoted replica as soon as the cluster has
    one. No live call is spent on finding out whether the node is back: the health probe
    pings marked nodes (:meth:`ClusterBackend.check_nodes`), and any reply from a node clears its
    mark. Transitions are logged.
    """

    def __init__(self) -> None:
        self._down: dict[str, str] = {}  # node name -> why

    @property
    def unreachable(self) -> tuple[str, ...]:
        """The marked nodes (``host:port``), sorted."""
        return tuple(sorted(self._down))

    def check(self, name: str) -> None:
        """Raise :class:`NodeUnreachable` if ``name`` is marked."""
        if self._down and name in self._down:
            raise NodeUnreachable(f"cluster node {name} is not answering ({self._down[name]})")

    def mark(self, name: str, reason: str) -> None:
        """``name`` failed to answer: fail commands to it fast until it answers again."""
        if name not in self._down:
            _log.warning(
                "redis cluster node %s unreachable (%s); calls routed to it fail fast",
                name,
                reason,
                extra=log_fields("cluster", "redis_node_state", node=name, state="unreachable"),
            )
        self._down[name] = reason

    def answered(self, name: str, source: str = "a reply") -> None:
        """``name`` answered (``source`` says where it was seen): clear its mark."""
        if self._down and self._down.pop(name, None) is not None:
            _log.info(
                "redis cluster node %s answers again (%s)",
                name,
                source,
                extra=log_fields("cluster", "redis_node_state", node=name, state="reachable"),
            )

    def forget(self, name: str) -> None:
        """``name`` left the cluster: stop watching it."""
        if self._down.pop(name, None) is not None:
            _log.info(
                "redis cluster node %s is no longer part of the cluster",
                name,
                extra=log_fields("cluster", "redis_node_state", node=name, state="gone"),
            )


class ClusterNodeConnection(Connection):
    """A connection to one cluster node: ``RedisCluster``'s ``connection_class`` here.

    It fixes ASK redirects in redis-py 8.1's async cluster client and feeds
    :class:`NodeHealth` (``node_health``, shared by every connection of one client).

    On ASK, ``RedisCluster._execute_command`` sends ``ASKING`` through one
    ``ClusterNode.execute_command`` and the redirected command through another; each takes
    a connection from the left of the node's free list and puts it back on the right. With
    two or more idle connections to the importing node the command goes out on another
    connection than ASKING: the importing node answers MOVED back to the source, the source
    answers ASK again, until ``ClusterError('TTL exhausted.')``; and the connection that
    got ASKING applies it to whatever command it carries next. (The sync client, and 8.1's
    own HIMPORT SET path, put ASKING on the command's connection. No upstream report found
    as of redis-py 8.1.0; #4015 is a different ASK bug.) Here a lone ASKING is not sent: it
    is answered ``OK`` locally, and the task's next command to that node goes out as the
    pipeline ASKING + command on one connection, in one write (the order redis-py follows:
    nothing runs in between).
    """

    def __init__(self, *, node_health: NodeHealth, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._node_health = node_health
        self._node_name = f"{self.host}:{self.port}"
        self._asking_ok_owed = False  # a lone ASKING was "sent": its reply is ours to give
        self._asking_sent = False  # ASKING went out ahead of the command: skip its reply

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        try:
            await super().connect_check_health(check_health, retry_socket_connect)
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            if not is_auth_error(exc):
                self._node_health.mark(self._node_name, f"connect: {type(exc).__name__}")
            raise

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        self._asking_ok_owed = self._asking_sent = False
        owed = _ASKING_OWED.get()
        if owed is not None:
            _ASKING_OWED.set(None)  # only ever for the very next command
        if command == [_ASKING]:
            _ASKING_OWED.set(self._node_name)
            self._asking_ok_owed = True
            return
        self._node_health.check(self._node_name)
        _WAITING_ON.set(self._node_name)
        asking = owed == self._node_name
        if asking:
            if isinstance(command, str):
                command = command.encode()
            command = [_ASKING, command] if isinstance(command, bytes) else [_ASKING, *command]
        try:
            await super().send_packed_command(command, check_health)
        except rexc.TimeoutError:
            self._node_health.mark(self._node_name, "write timed out")
            raise
        _WAITING_ON.set(self._node_name)  # again: a reconnect's handshake replies cleared it
        self._asking_sent = asking

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        if self._asking_ok_owed:
            self._asking_ok_owed = False
            return b"OK"
        asking, self._asking_sent = self._asking_sent, False
        try:
            if asking:
                # ASKING answers +OK on a cluster node; were it refused, the command's own
                # reply (MOVED) says so and redis-py follows that.
                with contextlib.suppress(rexc.ResponseError):
                    await super().read_response(disconnect_on_error=disconnect_on_error)
            reply = await super().read_response(
                disable_decoding,
                timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        except rexc.ResponseError:
            self._answered()
            raise
        except rexc.TimeoutError:
            _WAITING_ON.set(None)
            self._node_health.mark(self._node_name, "read timed out")
            raise
        if reply is not None or timeout is None:  # None with a timeout: nothing came
            self._answered()
        return reply

    def _answered(self) -> None:
        _WAITING_ON.set(None)
        self._node_health.answered(self._node_name)


class ClusterNodeSSLConnection(ClusterNodeConnection, SSLConnection):
    """:class:`ClusterNodeConnection` over TLS."""


def cluster_state(reply: Any) -> str:
    """The ``cluster_state`` field (``ok``/``fail``) of a ``CLUSTER INFO`` reply."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.partition(":")[2].strip()
    return "unknown"


async def probe_cluster(conn: ClusterSeedConnection, timeout: float) -> None:
    """Ask a seed node for ``CLUSTER INFO``; the cluster is up if it says ``cluster_state:ok``.

    Seeds are tried one after another, ``timeout`` seconds of the loop's attention each
    (:func:`~gateway_redis._driver.deadlines.wait_attentively`), until one answers; a
    node's ``cluster_state`` is ``fail`` while any slot has no reachable primary (Redis then
    refuses every key with CLUSTERDOWN, unless ``cluster-require-full-coverage no``).
    Raises :class:`redis.exceptions.ClusterDownError` when the answer is not ``ok``, an
    auth error as soon as one comes, and the last error when no seed answers.
    """
    last: BaseException | None = None

    async def ask() -> Any:
        if not conn.is_connected:
            await conn.connect()
        await conn.send_command("CLUSTER INFO")
        return await conn.read_response()

    for _ in range(conn.seed_count):
        try:
            reply = await wait_attentively(ask(), timeout)
        except (asyncio.TimeoutError, rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            await conn.disconnect(nowait=True)
            if is_auth_error(exc):
                raise
            last = exc  # the next connect starts with the next seed
            continue
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        state = cluster_state(reply)
        if state != "ok":
            raise rexc.ClusterDownError(f"cluster_state:{state} (node {conn.host}:{conn.port})")
        return
    assert last is not None
    raise last


class ClusterSeedConnection(Connection):
    """A lone connection to whichever of a cluster's seed nodes answers first.

    Classic pub/sub and probes need one connection to any node. Each connect starts with
    the seed after the one used last (round robin), so a node that accepts connections but
    stopped answering (frozen) is left after one failed use, not retried forever; nodes
    that refuse are skipped within the same connect.
    """

    def __init__(self, *, seeds: tuple[tuple[str, int], ...], **kwargs: Any) -> None:
        super().__init__(host=seeds[0][0], port=seeds[0][1], **kwargs)
        self._seeds = list(seeds)

    @property
    def seed_count(self) -> int:
        """How many seed nodes this connection can try."""
        return len(self._seeds)

    def pin(self, address: tuple[str, int]) -> None:
        """Connect to ``address`` only, from now on."""
        self._seeds = [address]
        self.host, self.port = address

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        last: BaseException | None = None
        for _ in range(len(self._seeds)):
            self.host, self.port = self._seeds[0]
            self._seeds.append(self._seeds.pop(0))
            try:
                await super().connect_check_health(check_health, retry_socket_connect=False)
                return
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                last = exc
        assert last is not None
        raise last


class ClusterSeedSSLConnection(ClusterSeedConnection, SSLConnection):
    """:class:`ClusterSeedConnection` over TLS."""

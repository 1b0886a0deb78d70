"""Everything that touches redis-py's connection machinery: pool, retry, error translation.

Kept in one private module so the rest of the library speaks only our own types.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeVar

from redis import exceptions as rexc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from gateway_redis.config import RedisConfig
from gateway_redis.support import log_fields

try:  # redis-py's own OpenTelemetry metrics (off unless enabled), fed on our fast path too
    from redis.asyncio.observability import recorder as _redis_metrics
    from redis.observability.attributes import get_pool_name as _pool_name
except ImportError:  # pragma: no cover - other redis-py versions
    _redis_metrics = None  # type: ignore[assignment]

_RECANCEL = 0.05  # seconds between cancellations once a deadline has passed

_running_loop = asyncio.get_running_loop
if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # C since 3.12
else:  # asyncio.current_task() is Python code that ends in this dict lookup
    _current_task = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


class _Queue:
    """The running deadlines of one length on one event loop, oldest first.

    A deadline that starts later ends later (the loop's clock is monotonic), so a FIFO
    queue is in expiry order and one timer, armed for the oldest entry, serves them all.
    Starting a deadline is an append (:meth:`deadline.start`) and ending one sets a flag:
    no timer handle pushed on the loop's heap and cancelled again per call (measured:
    3.3 -> 0.9 us a call).
    """

    __slots__ = ("_clock", "_entries", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # asyncio's own loops tell time.monotonic() through a Python method: skip it
        self._clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self._entries: collections.deque[deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def _expire(self) -> None:
        self._timer = None
        entries, now = self._entries, self._clock()
        while entries:
            entry = entries[0]
            if entry._done:
                entries.popleft()
            elif entry._when <= now:
                entries.popleft()
                entry._fire()
            else:
                self._timer = self._loop.call_at(entry._when, self._expire)
                return


# Per event loop: deadline length -> queue. The last loop's map is cached (weakly), as one
# tuple so that loops running in other threads never see a loop paired with another's map.
_QUEUES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Queue]] = (
    weakref.WeakKeyDictionary()
)
_last: tuple[weakref.ref[asyncio.AbstractEventLoop], dict[float, _Queue]] | None = None


def _queue(loop: asyncio.AbstractEventLoop, seconds: float) -> _Queue:
    global _last
    last = _last
    if last is not None and last[0]() is loop:
        queues = last[1]
    else:
        queues = _QUEUES.setdefault(loop, {})
        _last = (weakref.ref(loop), queues)
    queue = queues.get(seconds)
    if queue is None:
        queue = queues[seconds] = _Queue(loop)
    return queue


class deadline:
    """``async with deadline(seconds):`` -- like :func:`asyncio.timeout`, but insistent.

    redis-py sometimes swallows a cancellation (``asyncio.wait_for`` on Python 3.11 drops
    one that arrives as its inner operation completes, and connection cleanup can catch
    it), after which the call carries on through further socket timeouts and retries:
    measured, a 0.5 s deadline ended after 3.6 s. This one keeps cancelling every 50 ms
    until the block has exited, then raises :class:`asyncio.TimeoutError`. A cancellation
    from outside that arrives meanwhile is passed on, not turned into a timeout. It is
    also cheaper than ``asyncio.timeout``: deadlines of the same length share one timer
    (see :class:`_Queue`), which matters when every Redis call has one.
    """

    __slots__ = (
        "_cancelling",
        "_done",
        "_fired",
        "_handle",
        "_loop",
        "_seconds",
        "_task",
        "_when",
    )

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._fired = 0
        self._done = False
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> deadline:
        return self.start()

    def start(self) -> deadline:
        """Start the clock (what ``async with`` does on entry); returns self.

        ``start()`` and :meth:`end` are for the one hot path that cannot afford the two
        coroutines of ``async with``; everything else should use ``async with``.
        """
        loop = self._loop = _running_loop()
        task = _current_task(loop)
        if task is None:  # pragma: no cover - always inside a task
            raise RuntimeError("deadline() must be used inside a task")
        self._task = task
        self._cancelling = 0
        if sys.version_info >= (3, 11):
            self._cancelling = task.cancelling()
        # Join the queue of deadlines of this length (inlined: this runs on every call).
        last = _last
        queue = last[1].get(self._seconds) if last is not None and last[0]() is loop else None
        if queue is None:
            queue = _queue(loop, self._seconds)
        when = self._when = queue._clock() + self._seconds
        entries = queue._entries
        while entries and entries[0]._done:  # calls that have ended since
            entries.popleft()
        entries.append(self)
        if queue._timer is None:
            queue._timer = loop.call_at(when, queue._expire)
        return self

    def _fire(self) -> None:
        if self._done:
            return
        self._fired += 1
        self._task.cancel()
        self._handle = self._loop.call_at(self._loop.time() + _RECANCEL, self._fire)

    @property
    def expired(self) -> bool:
        """Whether the deadline passed while the block ran."""
        return self._fired > 0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        self.end(exc)

    def end(self, exc: BaseException | None) -> None:
        """Stop the clock (what ``async with`` does on exit, ``exc`` being what the block
        raised): raises :class:`asyncio.TimeoutError` if the deadline passed meanwhile,
        unless a cancellation from outside is on its way."""
        self._done = True
        if not self._fired:
            return
        if self._handle is not None:
            self._handle.cancel()
        if sys.version_info >= (3, 11):
            for _ in range(self._fired):
                self._task.uncancel()
            if self._task.cancelling() > self._cancelling:
                return  # someone else cancelled too: let their CancelledError through
        raise asyncio.TimeoutError(f"deadline of {self._seconds}s exceeded") from exc


__all__ = [
    "Backend",
    "ClusterSeedConnection",
    "ClusterSeedSSLConnection",
    "GatewayPool",
    "GatewaySentinelPool",
    "GatewayRetry",
    "PoolExhausted",
    "deadline",
    "is_auth_error",
    "is_outage_error",
    "no_retry",
    "open_probe_connection",
]

T = TypeVar("T")

# Set while a call must not be retried (INCR, PUBLISH: a lost reply would apply them twice).
_NO_RETRY: ContextVar[bool] = ContextVar("gateway_redis_no_retry", default=False)
# Set while an outer retry loop runs, so a nested one (reconnect inside a command) makes one
# attempt only: retries must not multiply.
_IN_RETRY: ContextVar[bool] = ContextVar("gateway_redis_in_retry", default=False)


class no_retry:
    """``with no_retry():`` -- within this block, commands are sent at most once.

    A class rather than a ``@contextmanager`` generator: it runs on every INCR and
    PUBLISH, and this costs a fifth as much (0.15 vs 0.8 us).
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _NO_RETRY.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _NO_RETRY.reset(self._token)


class PoolExhausted(rexc.ConnectionError):
    """Every pooled connection stayed busy for the whole pool timeout."""


class GatewayRetry(Retry):
    """redis-py's :class:`Retry`, with three rules of ours on top.

    Credentials errors are never retried (a wrong password must not become a storm),
    commands inside :func:`no_retry` are never retried, and a retry loop nested in another
    (the reconnect inside a retried command) makes a single attempt.
    """

    def get_retries(self) -> int:
        # RedisCluster (execute_command, ClusterPipeline.execute) runs its own loop of
        # get_retries() attempts instead of call_with_retry: report none inside no_retry,
        # so a lost INCR/PUBLISH reply is not resent there either. MOVED/ASK are followed
        # in an inner loop that does not read this. Elsewhere redis-py reads it only to
        # label metrics.
        return 0 if _NO_RETRY.get() else self._retries

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        self._backoff.reset()
        token = _IN_RETRY.set(True)
        nested = token.old_value is True  # an outer retry loop is running
        try:
            failures = 0
            while True:
                try:
                    return await do()
                except self._supported_errors as error:
                    failures += 1
                    if with_failure_count:
                        await fail(error, failures)
                    else:
                        await fail(error)
                    if (
                        nested
                        or _NO_RETRY.get()
                        or is_auth_error(error)
                        or _refused(error)
                        or isinstance(error, (PoolExhausted, rexc.MaxConnectionsError))
                        or (is_retryable is not None and not is_retryable(error))
                        or failures > self._retries
                    ):
                        raise
                    delay = self._backoff.compute(failures)
                    if delay > 0:
                        await asyncio.sleep(delay)
        finally:
            _IN_RETRY.reset(token)


class GatewayPool(BlockingConnectionPool):
    """A blocking pool: ``max_connections`` is a hard cap and callers wait their turn.

    A wait longer than ``timeout`` raises :class:`PoolExhausted` (redis-py raises a bare
    ``ConnectionError``, which would look like an outage). Wait times are measured.

    Fast path: when a connection is idle and nobody is queued for one, it is handed out
    (and taken back) without redis-py's wait machinery, a condition round trip and a
    timeout timer per call that cannot fire when nothing waits (measured: ~11 us of a
    ~50 us GET). Anything else (a wait, a new connection, a waiter to wake) takes redis-py's
    path, so the cap, FIFO fairness and the bounded wait are unchanged.
    """

    wait_observer: Callable[[float], None] | None = None

    def _uncontended(self) -> bool:
        """Nobody holds or waits for the pool's condition or lock (asyncio internals, read
        defensively: if they are not there, assume someone waits and take the slow path)."""
        cond, lock = self._condition, self._lock
        return not (
            cond.locked()
            or getattr(cond, "_waiters", True)
            or getattr(cond._lock, "_waiters", True)  # type: ignore[attr-defined]
            or lock.locked()
            or getattr(lock, "_waiters", True)
            or self._in_maintenance
        )

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        if not args and not options and self._available_connections and self._uncontended():
            conn = self._available_connections.pop()
            self._in_use_connections.add(conn)
            try:
                await self.ensure_connection(conn)
            except BaseException:
                await self.release(conn)
                raise
            observer = self.wait_observer
            if observer is not None:
                observer(0.0)
            if _redis_metrics is not None and _redis_metrics._get_or_create_collector():
                await _redis_metrics.record_connection_wait_time(
                    pool_name=_pool_name(self), duration_seconds=0.0
                )
            return conn
        started = time.perf_counter()
        try:
            conn = await super().get_connection(*args, **options)
        except rexc.ConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(
                    f"no connection free within {self.timeout}s (pool of {self.max_connections})"
                ) from exc
            raise
        observer = self.wait_observer
        if observer is not None:
            observer(time.perf_counter() - started)
        return conn

    async def release(self, connection: AbstractConnection) -> None:
        # Without waiters there is nobody to notify; and when the connection needs no
        # reconnect, ConnectionPool.release moves it from in-use to idle without yielding
        # (its lock is free), so no getter can see it counted in neither list.
        if not connection.should_reconnect() and self._uncontended():
            await super(BlockingConnectionPool, self).release(connection)
            return
        await super().release(connection)

    @property
    def in_use(self) -> int:
        """Connections currently lent out."""
        return len(self._in_use_connections)

    @property
    def idle(self) -> int:
        """Connected connections waiting in the pool."""
        return sum(1 for c in self._available_connections if c.is_connected)


def _connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    retry = GatewayRetry(
        ExponentialWithJitterBackoff(base=config.retry_backoff_base, cap=config.retry_backoff_cap),
        config.retry_attempts,
        supported_errors=(rexc.ConnectionError, rexc.TimeoutError),
    )
    kwargs: dict[str, Any] = {
        # redis-py has a single socket timeout for reads and writes.
        "socket_timeout": max(config.read_timeout, config.write_timeout),
        "socket_connect_timeout": config.dial_timeout,
        "socket_keepalive": True,
        "retry": retry,
        # No per-connection health check (a PING before a command on a connection idle for
        # health_check_interval): the pool already makes sure a connection it lends is
        # alive (GatewayPool keeps redis-py's check for that), a dead one that slips
        # through is retried on a new connection, and the client's own health check runs
        # every health_check_interval. It cost two clock reads and, on Python 3.11, two
        # getpid() system calls on every command.
        "client_name": "gateway-redis",
    }
    if config.username is not None:
        kwargs["username"] = config.username
    if config.password is not None:
        kwargs["password"] = config.password
    return kwargs


def _tls_kwargs(config: RedisConfig) -> dict[str, Any]:
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


class GatewaySentinelPool(SentinelConnectionPool, GatewayPool):
    """A Sentinel-managed pool with the blocking, capped behaviour of :class:`GatewayPool`.

    Connections ask the sentinels for the current primary whenever they (re)connect, and
    a primary that turned replica (READONLY) makes them reconnect: a failover is followed
    without a restart.
    """


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


# -- Redis Cluster: ASK redirects, per-node fail-fast, cluster state ---------------------

_log = logging.getLogger(__name__)
_ASKING = b"*1\r\n$6\r\nASKING\r\n"  # pack_command("ASKING")
# Set by a lone ASKING: the node ("host:port") whose next command in this task carries it.
_ASKING_OWED: ContextVar[str | None] = ContextVar("gateway_redis_asking_owed", default=None)
# The cluster node this task sent a command to and has no reply from yet.
_WAITING_ON: ContextVar[str | None] = ContextVar("gateway_redis_waiting_on", default=None)


class NodeUnreachable(rexc.ConnectionError):
    """A command was routed to a cluster node marked unreachable, and was not sent."""


class NodeHealth:
    """Which cluster nodes stopped answering; commands routed to them fail at once.

    A node is marked when a connection to it cannot be opened, a read or write times out,
    or a call's deadline passes while it waits on the node (:meth:`Backend.call_timed_out`).
    A connection closed under a command is not enough (``CLIENT KILL`` does that too): the
    reconnect that follows decides. While marked, commands to the node raise
    :class:`NodeUnreachable` unsent; redis-py takes that for a connection error, reloads
    its slot map and retries, so calls reach a promoted replica as soon as the cluster has
    one. No live call is spent on finding out whether the node is back: the health probe
    pings marked nodes (:meth:`Backend.check_nodes`), and any reply from a node clears its
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

    Seeds are tried one after another, ``timeout`` seconds each, until one answers; a
    node's ``cluster_state`` is ``fail`` while any slot has no reachable primary (Redis then
    refuses every key with CLUSTERDOWN, unless ``cluster-require-full-coverage no``).
    Raises :class:`redis.exceptions.ClusterDownError` when the answer is not ``ok``, an
    auth error as soon as one comes, and the last error when no seed answers.
    """
    last: BaseException | None = None
    for _ in range(conn.seed_count):
        try:
            async with deadline(timeout):
                if not conn.is_connected:
                    await conn.connect()
                await conn.send_command("CLUSTER INFO")
                reply = await conn.read_response()
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


class Backend:
    """The Redis side of one client: the command pool (or cluster), and lone connections.

    Standalone and Sentinel share one shape (a capped blocking pool behind a ``Redis``
    facade); Cluster uses redis-py's ``RedisCluster``, whose per-node pools cannot wait
    for a free connection (redis-py #3135), so a full node pool fails at once with
    ``pool_exhausted``. The Sentinel client is created once and shared (redis-py #3259).
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.topology = config.topology
        self.mode = self.topology.mode
        self._sentinel: Sentinel | None = None
        self.pool: GatewayPool | None = None
        self.cluster: RedisCluster | None = None
        # Cluster node pools cannot wait for a free connection (redis-py #3135): cap
        # concurrent calls ourselves, so callers queue instead of failing.
        self.limiter: asyncio.Semaphore | None = None
        self._wait_observer: Callable[[float], None] | None = None
        if self.mode == "sentinel":
            self._sentinel = self._make_sentinel()
        # Cluster: which nodes stopped answering (calls routed to them fail fast).
        self.nodes: NodeHealth | None = None
        if self.mode == "cluster":
            self.nodes = NodeHealth()
            self.cluster = self._make_cluster()
            self.limiter = asyncio.Semaphore(config.pool_size)
            self.redis: Any = self.cluster
        else:
            self.pool = self._make_pool(
                config.pool_size, timeout=config.pool_timeout, **_connection_kwargs(config)
            )
            self.redis = Redis(connection_pool=self.pool)

    def _make_sentinel(self) -> Sentinel:
        topo, config = self.topology, self.config
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": config.dial_timeout,
            "socket_connect_timeout": config.dial_timeout,
            # Ask each sentinel once; the caller's deadline and our probe handle the rest.
            "retry": Retry(NoBackoff(), 0),
        }
        if config.sentinel_username:
            sentinel_kwargs["username"] = config.sentinel_username
        if config.sentinel_password:
            sentinel_kwargs["password"] = config.sentinel_password
        if topo.tls:
            sentinel_kwargs["ssl"] = True
            sentinel_kwargs.update(_tls_kwargs(config))
        return Sentinel(list(topo.nodes), sentinel_kwargs=sentinel_kwargs)

    def sentinel_connection(self, address: tuple[str, int], **kwargs: Any) -> Connection:
        """A new, unconnected connection to the sentinel at ``address``, with the
        sentinels' credentials and, when the topology uses TLS, the TLS settings
        (``rediss+sentinel://`` means TLS to the sentinels too, as for the data nodes).
        ``kwargs`` are further connection settings (timeouts, ``client_name``...)."""
        config = self.config
        kwargs.update(
            host=address[0],
            port=address[1],
            username=config.sentinel_username,
            password=config.sentinel_password,
        )
        if self.topology.tls:
            return SSLConnection(**kwargs, **_tls_kwargs(config))
        return Connection(**kwargs)

    def _make_cluster(self) -> RedisCluster:
        from redis.asyncio.cluster import ClusterNode

        topo, config = self.topology, self.config
        kwargs = _connection_kwargs(config)
        kwargs.pop("health_check_interval", None)
        if topo.username:
            kwargs["username"] = topo.username
        if topo.password:
            kwargs["password"] = topo.password
        if topo.tls:
            kwargs["ssl"] = True
            kwargs.update(_tls_kwargs(config))
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topo.nodes],
            max_connections=config.pool_size,
            require_full_coverage=True,
            # redis-py's periodic full reset on MOVED closes connections that concurrent
            # commands are using ("Connection closed", AttributeError). The slot map is
            # still patched on every MOVED without it.
            reinitialize_steps=0,
            **kwargs,
        )
        # RedisCluster takes no connection_class; every node it creates later reads it
        # from connection_kwargs, the startup nodes already exist.
        connection_class = ClusterNodeSSLConnection if topo.tls else ClusterNodeConnection
        cluster.connection_kwargs["connection_class"] = connection_class
        cluster.connection_kwargs["node_health"] = self.nodes
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
            node.connection_kwargs["node_health"] = self.nodes
        return cluster

    def _make_pool(self, size: int, *, timeout: float, **kwargs: Any) -> GatewayPool:
        config, topo = self.config, self.topology
        kwargs["max_connections"] = size
        kwargs["timeout"] = timeout
        # With maintenance notifications in "auto" mode redis-py skips its check that a
        # pooled connection is still alive when lending it out, so the first command after
        # a server restart hits a dead socket (fatal for a command sent at most once).
        kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        if self.mode == "sentinel":
            assert self._sentinel is not None
            kwargs["db"] = topo.db
            if topo.username:
                kwargs["username"] = topo.username
            if topo.password:
                kwargs["password"] = topo.password
            if topo.tls:
                kwargs["ssl"] = True
                kwargs.update(_tls_kwargs(config))
            return GatewaySentinelPool(topo.master_name, self._sentinel, **kwargs)
        if config.url is not None:
            if config.url.startswith("rediss://"):
                kwargs.update(_tls_kwargs(config))
            pool = GatewayPool.from_url(config.url, **kwargs)
            assert isinstance(pool, GatewayPool)
            return pool
        kwargs.update(host=config.host, port=config.port, db=config.db)
        if config.tls:
            from redis.asyncio.connection import SSLConnection

            kwargs["connection_class"] = SSLConnection
            kwargs.update(_tls_kwargs(config))
        return GatewayPool(**kwargs)

    def lone_connection(self, **overrides: Any) -> AbstractConnection:
        """A new, unconnected connection outside the pool, to the primary (or any node).

        ``overrides`` replace connection settings (timeouts, ``retry``, ``client_name``,
        ``protocol``...). Used for health probes and the pub/sub subscriber.
        """
        kwargs = _connection_kwargs(self.config)
        kwargs.update(overrides)
        if self.mode == "cluster":
            topo = self.topology
            kwargs.pop("health_check_interval", None)
            if topo.username:
                kwargs["username"] = topo.username
            if topo.password:
                kwargs["password"] = topo.password
            if topo.tls:
                kwargs.update(_tls_kwargs(self.config))
                return ClusterSeedSSLConnection(seeds=topo.nodes, **kwargs)
            return ClusterSeedConnection(seeds=topo.nodes, **kwargs)
        pool = self._make_pool(1, timeout=self.config.pool_timeout, **kwargs)
        conn = pool.make_connection()
        # A Sentinel-managed connection holds only a weak proxy to its pool: keep it alive.
        conn._gateway_pool = pool
        return conn  # type: ignore[no-any-return]

    @property
    def in_use(self) -> int:
        """Connections lent out (all nodes together in cluster mode)."""
        if self.pool is not None:
            return self.pool.in_use
        assert self.cluster is not None
        return sum(len(node._connections) - len(node._free) for node in self.cluster.get_nodes())

    @property
    def idle(self) -> int:
        """Open connections waiting for work."""
        if self.pool is not None:
            return self.pool.idle
        assert self.cluster is not None
        return sum(
            sum(1 for c in node._free if c.is_connected) for node in self.cluster.get_nodes()
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait (at most ``pool_timeout``) for a free call slot in cluster mode."""
        limiter = self.limiter
        if limiter is None:
            yield
            return
        started = time.perf_counter()
        try:
            async with deadline(self.config.pool_timeout):
                await limiter.acquire()
        except asyncio.TimeoutError:
            raise PoolExhausted(
                f"no connection free within {self.config.pool_timeout}s "
                f"({self.config.pool_size} per client)"
            ) from None
        if self._wait_observer is not None:
            self._wait_observer(time.perf_counter() - started)
        try:
            yield
        finally:
            limiter.release()

    def set_wait_observer(self, observer: Callable[[float], None]) -> None:
        """Report pool wait times to ``observer`` (standalone and Sentinel)."""
        self._wait_observer = observer
        if self.pool is not None:
            self.pool.wait_observer = observer

    async def warm(self, count: int) -> None:
        """Open connections until ``count`` are idle (cluster: discover the nodes)."""
        if self.cluster is not None:
            await self.cluster.initialize()
            return
        assert self.pool is not None
        conns = []
        try:
            for _ in range(count - self.pool.idle):
                conns.append(await self.pool.get_connection())
        finally:
            for conn in conns:
                await self.pool.release(conn)

    async def drop_idle(self) -> None:
        """Close idle connections (they may point at a restarted or demoted server).

        Cluster: reload the slot map instead; redis-py then reconnects every connection
        lazily, once it is back in its node's pool.
        """
        if self.pool is not None:
            await self.pool.disconnect(inuse_connections=False)
        elif self.cluster is not None:
            await self.cluster.nodes_manager.initialize()

    async def check_nodes(self, timeout: float) -> bool:
        """PING every cluster node marked unreachable (``timeout`` seconds, all at once);
        clear those that answer. Returns whether some node is still marked.

        A marked node that is no longer part of the cluster (a failed primary, once its
        replica took over) and is no seed either is forgotten.
        """
        nodes, cluster = self.nodes, self.cluster
        if nodes is None or cluster is None or not nodes.unreachable:
            return False
        seeds = set(cluster.nodes_manager.startup_nodes)

        async def check(name: str) -> None:
            if cluster.get_node(node_name=name) is None and name not in seeds:
                nodes.forget(name)
                return
            host, _, port = name.rpartition(":")
            conn = open_probe_connection(self, timeout)
            assert isinstance(conn, ClusterSeedConnection)
            conn.pin((host, int(port)))
            try:
                async with deadline(timeout):
                    await conn.connect()
                    await conn.send_command("PING")
                    await conn.read_response()
            except rexc.ResponseError:
                nodes.answered(name, "probe")  # an error reply is an answer too
            except (asyncio.TimeoutError, rexc.ConnectionError, rexc.TimeoutError, OSError):
                pass  # still marked
            else:
                nodes.answered(name, "probe")
            finally:
                await conn.disconnect(nowait=True)

        await asyncio.gather(*(check(name) for name in nodes.unreachable))
        return bool(nodes.unreachable)

    def call_timed_out(self) -> None:
        """A call's deadline passed: in cluster mode, mark the node it waited on (if any)."""
        name = _WAITING_ON.get()
        if name is not None and self.nodes is not None:
            _WAITING_ON.set(None)
            self.nodes.mark(name, "no reply within the operation deadline")

    async def aclose(self) -> None:
        """Close every connection this backend opened."""
        if self.cluster is not None:
            await self.cluster.aclose()
        else:
            await self.redis.aclose()
            assert self.pool is not None
            await self.pool.disconnect()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def open_probe_connection(backend: Backend, timeout: float) -> AbstractConnection:
    """A lone connection for health probes: no retries, short timeouts.

    Probes go over the raw connection, not ``Redis.execute_command``, so they never show
    up as command spans in OpenTelemetry's redis instrumentation.
    """
    return backend.lone_connection(
        retry=None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
        client_name="gateway-redis-probe",
    )


def _refused(error: BaseException) -> bool:
    # Nothing listens at the address: another attempt a few ms later will not differ, and
    # failing now lets the client switch to fail-fast sooner.
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_auth_error(error: BaseException) -> bool:
    """True for errors that mean our credentials are wrong or not allowed."""
    if isinstance(error, (rexc.AuthenticationError, rexc.AuthorizationError)):
        return True
    if isinstance(error, rexc.ResponseError):
        text = str(error)
        return text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    return False


def is_outage_error(error: BaseException) -> bool:
    """True for errors that mean Redis could not be reached or did not answer in time."""
    return isinstance(
        error,
        (
            rexc.ConnectionError,
            rexc.TimeoutError,
            asyncio.TimeoutError,
            OSError,
            EOFError,
            # Cluster-wide trouble: redirections exhausted, slots down, TRYAGAIN.
            rexc.ClusterError,
            rexc.ClusterDownError,
            rexc.TryAgainError,
        ),
    )

"""Security writes are confirmed by ``WAIT`` on the connection that wrote, or fail closed.

Logout, "log out everywhere", token revocation and permission removal, each through its
public API, against a Sentinel-managed primary with one replica, a Cluster whose shards
each have a replica, and a lone primary with a replica:

* replica healthy: the call succeeds and the replica already holds the write when it
  returns (no polling: ``WAIT`` made the call wait for it);
* replica frozen (SIGSTOP: it stays connected, so the primary still counts it, but it
  acknowledges nothing): the call fails with ``RedisUnavailable(reason="unconfirmed")``
  within the operation deadline, and a revoked token is still refused on this instance;
* under pool contention, ``MONITOR`` shows each ``WAIT`` on the connection that made the
  write it confirms (the defect this replaced: revocation skipped ``WAIT`` by default and,
  when asked to wait, sent it through whichever pooled connection came next).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.crc import key_slot

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable, SessionNotFound
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.invalidation import InvalidationBus
from tests.topologies import MASTER, ClusterTopology, SentinelTopology, sentinel_topology
from tests.topology.confirmed import SCENARIOS, Prepared, revocation, session_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DEADLINE = 1.0  # operation_timeout of every client here, seconds
SLACK = 0.5  # scheduling on a loaded 2-core machine


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelTopology]:
    with sentinel_topology() as topo:
        yield topo


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    """A lone primary and its replica (no Sentinel)."""
    primary = EmbeddedRedis()
    primary.start()
    replica = EmbeddedRedis(args=["--replicaof", "127.0.0.1", str(primary.port)])
    try:
        replica.start()
        _wait_in_sync(replica.port)
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


def _wait_in_sync(replica_port: int, timeout: float = 15.0) -> None:
    """Wait until the replica's link is up AND its primary lists it online (``ROLE``).

    Both are needed: after a full sync the replica reports its link up (and holds the
    data) for a moment (over 40 ms seen) before the primary puts it online; until then it
    counts no replica (neither ``ROLE`` nor ``WAIT`` see it), so a confirmed write is
    not waited for on it (as with a replica that is absent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with redis.Redis(port=replica_port, socket_timeout=1) as r:
            info = r.info("replication")
        if info.get("master_link_status") == "up":
            with redis.Redis(port=info["master_port"], socket_timeout=1) as r:
                listed = r.execute_command("ROLE")[2]
            if any(int(port) == replica_port for _ip, port, _offset in listed):
                return
        time.sleep(0.05)
    raise RuntimeError(f"replica on {replica_port} not in sync")


def _exists(port: int, keys: list[str]) -> list[bool]:
    with redis.Redis(port=port, socket_timeout=1, single_connection_client=True) as r:
        with contextlib.suppress(redis.ResponseError):  # not a cluster node
            r.execute_command("READONLY")  # a cluster replica answers for its own slots
        return [bool(r.exists(k)) for k in keys]


async def _until_replicated(ports: list[int], keys: list[str], present: bool) -> None:
    """Wait (bounded) until every replica in ``ports`` shows ``keys`` present/absent."""
    deadline = time.monotonic() + 5
    while not all(_exists(p, [k])[0] is present for p, k in zip(ports, keys, strict=True)):
        assert time.monotonic() < deadline, "replication did not catch up"
        await asyncio.sleep(0.02)


@pytest.fixture
async def sentinel_client(sentinel: SentinelTopology) -> AsyncIterator[RedisClient]:
    config = RedisConfig(
        sentinels=sentinel.addresses,
        sentinel_master=MASTER,
        probe_interval=0.2,
        operation_timeout=DEADLINE,
    )
    async with RedisClient(config) as client:
        yield client


@pytest.fixture
async def cluster_client(cluster: ClusterTopology) -> AsyncIterator[RedisClient]:
    config = RedisConfig(cluster_nodes=cluster.addresses[:3], operation_timeout=DEADLINE)
    async with RedisClient(config) as client:
        yield client


@pytest.fixture
async def bus_on(request: pytest.FixtureRequest) -> InvalidationBus:
    client: RedisClient = request.getfixturevalue(request.param)
    bus = client.invalidation
    assert await bus.wait_synced(5)
    return bus


def _cluster_replicas(cluster: ClusterTopology, keys: list[str]) -> list[EmbeddedRedis]:
    """The replica of the shard owning each of ``keys`` (one per key, in order), once it
    is in sync with its primary."""
    found = []
    for key in keys:
        owner = cluster.primary_for_slot(key_slot(key.encode()))
        deadline = time.monotonic() + 10
        address = None
        while address is None:  # a fresh cluster's gossip may not have told it yet
            assert time.monotonic() < deadline, "the shard's replica is not known"
            with redis.Redis(port=owner.port, socket_timeout=1) as r:
                nodes = r.execute_command("CLUSTER NODES")
            me = next(n["node_id"] for n in nodes.values() if "myself" in n["flags"])
            address = next((a for a, n in nodes.items() if n["master_id"] == me), None)
            time.sleep(0 if address else 0.05)
        port = int(address.rsplit(":", 1)[1])
        replica = next(n for n in cluster.nodes if n.port == port)
        _wait_in_sync(replica.port)
        found.append(replica)
    return found


async def _confirmed_and_replicated(prepared: Prepared, replica_ports: list[int]) -> None:
    if prepared.removes:  # the keys must be on the replica first, or "absent" proves nothing
        await _until_replicated(replica_ports, prepared.keys, present=True)
    await prepared.write()
    on_replica = [_exists(p, [k])[0] for p, k in zip(replica_ports, prepared.keys, strict=True)]
    assert on_replica == [not prepared.removes] * len(prepared.keys)


async def _fails_closed(prepared: Prepared, frozen: list[EmbeddedRedis]) -> None:
    for replica in frozen:
        replica.freeze()
    try:
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable) as caught:
            await prepared.write()
        elapsed = time.perf_counter() - started
    finally:
        for replica in frozen:
            replica.thaw()
    assert caught.value.reason == "unconfirmed"
    # Revocation makes two confirmed writes (the denylist entry, then the index), but the
    # first one fails: one WAIT's worth (half the deadline) plus the write itself.
    assert elapsed < DEADLINE + SLACK, f"took {elapsed:.2f}s"
    await prepared.after_failure()
    for replica in frozen:
        await asyncio.to_thread(_wait_in_sync, replica.port)


# -- Sentinel: a primary and one replica --------------------------------------------------


@pytest.mark.parametrize("bus_on", ["sentinel_client"], indirect=True)
@pytest.mark.parametrize("write", list(SCENARIOS))
async def test_sentinel_security_write_reaches_the_replica_before_returning(
    sentinel: SentinelTopology, sentinel_client: RedisClient, bus_on: InvalidationBus, write: str
) -> None:
    prepared = await SCENARIOS[write](sentinel_client, bus_on)
    await _confirmed_and_replicated(prepared, [sentinel.replica.port] * len(prepared.keys))


@pytest.mark.parametrize("bus_on", ["sentinel_client"], indirect=True)
@pytest.mark.parametrize("write", list(SCENARIOS))
async def test_sentinel_security_write_fails_closed_when_the_replica_does_not_acknowledge(
    sentinel: SentinelTopology, sentinel_client: RedisClient, bus_on: InvalidationBus, write: str
) -> None:
    prepared = await SCENARIOS[write](sentinel_client, bus_on)
    if prepared.removes:
        ports = [sentinel.replica.port] * len(prepared.keys)
        await _until_replicated(ports, prepared.keys, present=True)
    await _fails_closed(prepared, [sentinel.replica])


# -- Cluster: three shards, each with a replica ---------------------------------------------


@pytest.mark.parametrize("bus_on", ["cluster_client"], indirect=True)
@pytest.mark.parametrize("write", list(SCENARIOS))
async def test_cluster_security_write_reaches_the_owning_shards_replica_before_returning(
    cluster: ClusterTopology, cluster_client: RedisClient, bus_on: InvalidationBus, write: str
) -> None:
    prepared = await SCENARIOS[write](cluster_client, bus_on)
    replicas = _cluster_replicas(cluster, prepared.keys)
    await _confirmed_and_replicated(prepared, [r.port for r in replicas])


@pytest.mark.parametrize("bus_on", ["cluster_client"], indirect=True)
@pytest.mark.parametrize("write", list(SCENARIOS))
async def test_cluster_security_write_fails_closed_when_the_shards_replica_does_not_acknowledge(
    cluster: ClusterTopology, cluster_client: RedisClient, bus_on: InvalidationBus, write: str
) -> None:
    prepared = await SCENARIOS[write](cluster_client, bus_on)
    replicas = _cluster_replicas(cluster, prepared.keys)
    if prepared.removes:
        await _until_replicated([r.port for r in replicas], prepared.keys, present=True)
    await _fails_closed(prepared, list({r.port: r for r in replicas}.values()))


# -- Standalone: the defect this replaced ----------------------------------------------------


class _Monitor:
    """``MONITOR`` on a server, in a thread: every command with the client that sent it."""

    def __init__(self, port: int) -> None:
        self.commands: list[tuple[str, str]] = []  # (client "ip:port", command line)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)

    def __enter__(self) -> _Monitor:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self, port: int) -> None:
        # A raw socket: redis-py's Monitor drops its connection on a read timeout.
        with socket.create_connection(("127.0.0.1", port), timeout=0.1) as sock:
            sock.sendall(b"MONITOR\r\n")
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\r\n")
                for line in lines:
                    if line == b"+OK":
                        self._ready.set()
                        continue
                    # +1700000000.123456 [0 127.0.0.1:50000] "SET" "key" "1"
                    head, _, command = line.decode(errors="replace").partition("] ")
                    client = head.rpartition(" ")[2]
                    self.commands.append((client, command.replace('"', "")))


@pytest.mark.parametrize("bus_on", ["pair_client"], indirect=True)
async def test_revocation_waits_by_default_on_the_connection_that_wrote(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], pair_client: RedisClient, bus_on: InvalidationBus
) -> None:
    """Before: no WAIT at all unless ``confirm_replicas`` was set (it never was), and then
    through the pool. Now: one WAIT per write, each on the writing connection, while other
    calls keep every pooled connection busy."""
    primary, replica = pair
    prepared = await revocation(pair_client, bus_on)
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():  # paced: MONITOR in a thread must keep up
            await pair_client.set("busy", "1")
            await asyncio.sleep(0.001)

    with _Monitor(primary.port) as monitor:
        workers = [asyncio.create_task(traffic()) for _ in range(6)]
        try:
            await asyncio.sleep(0.05)
            await prepared.write()
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert _exists(replica.port, prepared.keys) == [True]
        await asyncio.sleep(0.2)  # let MONITOR print the last lines
    sent = monitor.commands
    waits = [i for i, (_, line) in enumerate(sent) if line.upper().startswith("WAIT")]
    assert len(waits) == 2, "one WAIT for the denylist entry, one for the index"
    for i in waits:
        client = sent[i][0]
        before = [line.split()[0].upper() for c, line in sent[:i] if c == client]
        # What this connection sent just before ROLE and WAIT: the write it confirms.
        assert before[-1] == "ROLE", before[-3:]
        assert before[-2] in ("SET", "PEXPIREAT"), before[-3:]
    deny = prepared.keys[0]
    writer_of_deny = next(c for c, line in sent if line.upper().startswith("SET") and deny in line)
    assert sent[waits[0]][0] == writer_of_deny


@pytest.fixture
async def pair_client(pair: tuple[EmbeddedRedis, EmbeddedRedis]) -> AsyncIterator[RedisClient]:
    config = RedisConfig(
        url=f"redis://127.0.0.1:{pair[0].port}/0", pool_size=3, operation_timeout=DEADLINE
    )
    async with RedisClient(config) as client:
        yield client


@pytest.mark.parametrize("bus_on", ["pair_client"], indirect=True)
async def test_revocation_on_a_lone_primary_fails_closed_when_its_replica_is_frozen(
    pair: tuple[EmbeddedRedis, EmbeddedRedis], pair_client: RedisClient, bus_on: InvalidationBus
) -> None:
    prepared = await revocation(pair_client, bus_on)
    await _fails_closed(prepared, [pair[1]])


async def test_an_unconfirmed_write_leaves_the_client_up_when_the_deadline_exceeds_the_socket(
    pair: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    """WAIT is bounded by the read timeout too: a WAIT outlasting the socket's timeout
    would end as a read timeout, reported as Redis being down."""
    primary, replica = pair
    config = RedisConfig(
        url=f"redis://127.0.0.1:{primary.port}/0", operation_timeout=3.0, read_timeout=0.4
    )
    async with RedisClient(config) as client:
        sid = await client.create_session("carol", {})
        replica.freeze()
        try:
            started = time.perf_counter()
            with pytest.raises(RedisUnavailable) as caught:
                await client.delete_session(sid)
            elapsed = time.perf_counter() - started
        finally:
            replica.thaw()
        assert caught.value.reason == "unconfirmed"
        assert elapsed < 0.4 + SLACK
        assert client.available
    await asyncio.to_thread(_wait_in_sync, replica.port)


async def test_cluster_logout_after_its_node_closed_the_idle_connections(
    cluster: ClusterTopology, cluster_client: RedisClient
) -> None:
    """A pinned write gets no retry from RedisCluster: an idle node connection the server
    closed meanwhile is replaced before the write, not failed on."""
    first = await cluster_client.create_session("dave", {})
    await cluster_client.delete_session(first)  # leaves an idle connection to the node
    sid = await cluster_client.create_session("dave", {})
    owner = cluster.primary_for_slot(key_slot(session_key(cluster_client, sid).encode()))
    with redis.Redis(port=owner.port, socket_timeout=1) as r:
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1
    await asyncio.sleep(0.1)  # idle meanwhile: the event loop sees the connections close
    await cluster_client.delete_session(sid)
    with pytest.raises(SessionNotFound):
        await cluster_client.get_session(sid)

"""Redis Cluster: routing by slot, atomic sessions, pub/sub across nodes, node failures.

A node that stops answering fails only the calls routed to it (fast, once known), and the
client goes down only when the cluster does (``cluster_state:fail``, or no node answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from gateway_redis import HealthState, RedisClient, RedisConfig, RedisUnavailable, SessionNotFound
from gateway_redis.sessions import SessionEvent, id_digest
from tests.topologies import ClusterTopology, cluster_topology, primaries

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    with cluster_topology() as topo:
        yield topo


def _config(topo: ClusterTopology) -> RedisConfig:
    return RedisConfig(cluster_nodes=topo.addresses[:2], probe_interval=0.2, operation_timeout=1.0)


def _owner(topo: ClusterTopology, c: RedisClient, key: str) -> int:
    """The port of the primary that serves ``key``."""
    return topo.primary_for_slot(key_slot(c.key(key).encode())).port


def _shard(topo: ClusterTopology, primary: int) -> list[int]:
    """The ports of ``primary`` and its replicas."""
    live = next(n for n in topo.nodes if n.running)
    with redis.Redis(port=live.port, socket_timeout=1) as r:
        for _, _, first, *replicas in r.execute_command("CLUSTER SLOTS"):
            if int(first[1]) == primary:
                return [primary, *(int(replica[1]) for replica in replicas)]
    raise RuntimeError(f"{primary} serves no slots")


async def test_cluster_mode_from_env_and_url(cluster: ClusterTopology) -> None:
    nodes = ",".join(f"{h}:{p}" for h, p in cluster.addresses[:2])
    for config in (
        RedisConfig.from_env({"REDIS_CLUSTER_NODES": nodes}),
        RedisConfig.from_env({"REDIS_URL": f"redis+cluster://{nodes}"}),
    ):
        assert config.mode == "cluster"
        async with RedisClient(config) as c:
            # Keys spread over slots owned by different primaries.
            slots = {key_slot(c.key(f"k{i}").encode()) for i in range(50)}
            owners = {cluster.primary_for_slot(s).port for s in slots}
            assert len(owners) == 3
            for i in range(50):
                await c.set(f"k{i}", str(i))
            assert [await c.get(f"k{i}") for i in range(50)] == [str(i).encode() for i in range(50)]


async def test_sessions_stay_atomic_on_cluster(cluster: ClusterTopology) -> None:
    async with RedisClient(_config(cluster)) as c:
        ids = [await c.create_session(f"user{i}", {"n": i}) for i in range(10)]
        sid = ids[3]
        await asyncio.gather(*(c.update_session(sid, {f"f{j}": j}) for j in range(50)))
        session = await c.get_session(sid)
        assert all(session.metadata[f"f{j}"] == j for j in range(50))
        await asyncio.gather(c.update_session(sid, {"late": 1}), c.delete_session(sid))
        with pytest.raises(SessionNotFound):
            await c.get_session(sid)
        assert await c.delete_user_sessions("user4") == 1
        assert await c.get_user_sessions("user4") == []


async def test_a_users_sessions_spread_over_slots_and_user_wide_operations_hold(
    cluster: ClusterTopology,
) -> None:
    """IDs carry random tags, so one user's sessions live in many slots and their index in
    another: the cap, listing and "log out everywhere" still hold (single-key steps), and
    no node stores a session ID."""
    async with RedisClient(_config(cluster)) as c:
        store = c.configure_sessions(max_per_user=5)
        heard: list[SessionEvent] = []
        store.on_change(heard.append)
        first = []
        for _ in range(8):
            first.append(await store.create("alice"))
            await asyncio.sleep(0.002)  # age is known to the millisecond
        owners = {cluster.primary_for_slot(key_slot(i[:12].encode())).port for i in first}
        assert len(owners) > 1  # 8 random slots on one node of three: p = 1/3**7
        assert heard == [{"op": "drop", "ids": [id_digest(i)]} for i in first[:3]]
        listed = await store.get_user_sessions("alice")
        assert [s.digest for s in listed] == [id_digest(i) for i in first[3:]]
        many = await asyncio.gather(*(store.create("alice") for _ in range(20)))
        live = []
        for session_id in [*first, *many]:
            with contextlib.suppress(SessionNotFound):
                await store.get(session_id)
                live.append(session_id)
        assert len(live) == 5
        assert not set(first) & set(live)
        renamed = await store.regenerate(live[0])
        await store.update(renamed, {"n": 1})
        assert len(await store.get_user_sessions("alice")) == 5
        stored = b""
        for node in primaries(cluster):
            with redis.Redis(port=node.port) as r:
                for key in r.scan_iter("*"):
                    stored += key
                    if r.type(key) == b"zset":
                        stored += b"".join(r.zrange(key, 0, -1))
                    elif r.type(key) == b"hash":
                        stored += b"".join(k + v for k, v in r.hgetall(key).items())
        assert b"user-sessions" in stored
        for session_id in [*first, *many, renamed]:
            assert session_id.split(".")[1].encode() not in stored
        assert await store.delete_user_sessions("alice") == 5
        assert await store.get_user_sessions("alice") == []
        with pytest.raises(SessionNotFound):
            await store.get(renamed)


async def test_with_a_tag_key_a_users_keys_share_one_slot_and_user_wide_operations_hold(
    cluster: ClusterTopology,
) -> None:
    async with RedisClient(_config(cluster)) as c:
        store = c.configure_sessions(tag_key="cluster-test-key-" * 2, max_per_user=3)
        ids = []
        for _ in range(5):
            ids.append(await store.create("alice", {"k": 1}))
            await asyncio.sleep(0.002)  # age is known to the millisecond
        ids[4] = await store.regenerate(ids[4])
        assert len({i[:12] for i in ids}) == 5
        slots = set()
        for node in primaries(cluster):
            with redis.Redis(port=node.port) as r:
                slots |= {key_slot(k) for k in r.scan_iter("*")}
        assert len(slots) == 1  # three sessions and the index, on one node, in one slot
        listed = await store.get_user_sessions("alice")
        assert {s.digest for s in listed} == {id_digest(i) for i in ids[2:]}
        await store.update(ids[3], {"n": 2})
        assert await store.delete_user_sessions("alice") == 3
        for session_id in ids:
            with pytest.raises(SessionNotFound):
                await store.get(session_id)


async def test_pubsub_across_nodes(cluster: ClusterTopology) -> None:
    async with (
        RedisClient(_config(cluster)) as a,
        RedisClient(RedisConfig(cluster_nodes=cluster.addresses[4:], probe_interval=0.2)) as b,
    ):
        sub = await b.subscribe("news")
        try:
            await a.publish("news", {"hello": "cluster"})
            message = await asyncio.wait_for(sub.__anext__(), 2.0)
            assert message.data == {"hello": "cluster"}
        finally:
            await sub.close()


async def test_primary_killed_fails_over_to_replica(cluster: ClusterTopology) -> None:
    """Calls for the killed primary's slots fail until its replica takes over, none after.

    Also reported: calls for another shard, and how long the client was down. They fail
    only while the nodes themselves refuse every key (cluster_state:fail, from the moment
    the primary is declared failed until the replica is promoted)."""
    async with RedisClient(_config(cluster)) as c:
        key = "victim"
        await c.set(key, "before")
        await asyncio.sleep(0.3)  # replication
        victim = cluster.primary_for_slot(key_slot(c.key(key).encode()))
        other = next(f"o{i}" for i in range(100) if _owner(cluster, c, f"o{i}") != victim.port)
        changes: list[tuple[float, HealthState]] = []
        c.add_state_listener(lambda state, _: changes.append((time.perf_counter(), state)))
        errors_during = 0
        errors_after = 0
        other_failed_at: list[float] = []
        other_slowest = 0.0
        recovered_at: float | None = None
        killed_at = time.perf_counter()
        await asyncio.to_thread(victim.kill)
        deadline = killed_at + 20
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            started = time.perf_counter()
            try:
                await c.set(other, str(n))
            except RedisUnavailable:
                other_failed_at.append(time.perf_counter() - killed_at)
            other_slowest = max(other_slowest, time.perf_counter() - started)
            try:
                await c.set(key, str(n))
                assert await c.get(key) == str(n).encode()
            except RedisUnavailable:
                if recovered_at is None:
                    errors_during += 1
                else:
                    errors_after += 1
                await asyncio.sleep(0.05)
                continue
            if recovered_at is None:
                recovered_at = time.perf_counter()
            if time.perf_counter() - recovered_at > 2.0:
                break
            await asyncio.sleep(0.01)
        assert recovered_at is not None, "cluster never recovered"
        down = sum(
            (end if end is not None else time.perf_counter()) - start
            for (start, state), end in zip(
                changes, [t for t, _ in changes[1:]] + [None], strict=True
            )
            if state is HealthState.DOWN
        )
        window = (
            f" (from {other_failed_at[0]:.2f} s to {other_failed_at[-1]:.2f} s)"
            if other_failed_at
            else ""
        )
        print(
            f"cluster failover: outage window {recovered_at - killed_at:.2f}s, "
            f"{errors_during} failed calls during it, {errors_after} after; calls to "
            f"another shard: {len(other_failed_at)} failed{window}, slowest "
            f"{other_slowest:.2f} s; client down for {down:.2f} s"
        )
        assert errors_after == 0
        assert not other_failed_at or other_failed_at[-1] < recovered_at - killed_at + 0.5
        new_owner = cluster.primary_for_slot(key_slot(c.key(key).encode()))
        assert new_owner.port != victim.port


@pytest.mark.usefixtures("no_collector_pauses")
async def test_a_frozen_primary_fails_only_the_calls_routed_to_it(cluster: ClusterTopology) -> None:
    """A primary stops answering (SIGSTOP) for less than cluster-node-timeout, so the
    cluster never fails it over. Calls for its slots fail, all but the first at once;
    calls for the other shards all go through; the client stays up; once the node thaws
    (the probe pings it), its calls go through again. The calls' deadlines are 0.25 s,
    so the collector is kept from pausing the loop (a full collection late in a run
    once made a call to another shard miss its deadline)."""
    timeout = 0.25
    config = RedisConfig(
        cluster_nodes=cluster.addresses[:3],
        probe_interval=0.2,
        operation_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        dial_timeout=timeout,
    )
    async with RedisClient(config) as c:
        keys = [f"k{i}" for i in range(30)]
        for key in keys:
            await c.set(key, key)
        victim = next(n for n in cluster.nodes if n.port == _owner(cluster, c, keys[0]))
        theirs = [k for k in keys if _owner(cluster, c, k) == victim.port]
        others = [k for k in keys if _owner(cluster, c, k) != victim.port]
        changes: list[tuple[HealthState, str]] = []
        c.add_state_listener(lambda state, reason: changes.append((state, reason)))
        failures: list[float] = []
        other_errors: list[str] = []
        other_slowest = 0.0
        await asyncio.to_thread(victim.freeze)
        frozen_at = time.perf_counter()
        try:
            while time.perf_counter() - frozen_at < 0.6:
                started = time.perf_counter()
                try:
                    await c.get(theirs[0])
                except RedisUnavailable:
                    failures.append(time.perf_counter() - started)
                for key in others:
                    started = time.perf_counter()
                    try:
                        assert await c.get(key) == key.encode()
                    except RedisUnavailable as exc:
                        other_errors.append(str(exc))
                    other_slowest = max(other_slowest, time.perf_counter() - started)
                await asyncio.sleep(0.01)
            marked = c.backend.nodes.unreachable if c.backend.nodes else ()
        finally:
            await asyncio.to_thread(victim.thaw)
        thawed_at = time.perf_counter()
        while True:
            try:
                assert await c.get(theirs[0]) == theirs[0].encode()
                break
            except RedisUnavailable:
                assert time.perf_counter() - thawed_at < 3.0, "the node's calls never came back"
                await asyncio.sleep(0.02)
        back_after = time.perf_counter() - thawed_at
        slow = [f for f in failures if f > timeout / 2]
        print(
            f"\nfrozen primary: {len(failures)} failed calls to it in 0.6 s ({len(slow)} "
            f"waited for the deadline, the others took at most "
            f"{max((f for f in failures if f <= timeout / 2), default=0) * 1000:.1f} ms); "
            f"{len(other_errors)} failed calls to the other shards (slowest "
            f"{other_slowest * 1000:.1f} ms); marked {marked}; "
            f"its calls went through {back_after:.2f} s after it thawed"
        )
        assert other_errors == []
        assert changes == []  # never down
        assert marked == (f"127.0.0.1:{victim.port}",)
        assert len(slow) <= 2
        assert len(failures) > 3 * len(slow)
        assert c.backend.nodes is not None
        assert c.backend.nodes.unreachable == ()


async def test_the_client_goes_down_with_the_cluster(cluster: ClusterTopology) -> None:
    """A whole shard gone (primary and replica): its slots have no owner, the nodes say
    cluster_state:fail and refuse every key, and the client goes down: calls fail at
    once, for every shard."""
    async with RedisClient(_config(cluster)) as c:
        await c.set("k", "v")
        shard = _shard(cluster, _owner(cluster, c, "k"))
        for port in shard:
            await asyncio.to_thread(next(n for n in cluster.nodes if n.port == port).kill)
        killed_at = time.perf_counter()
        other = next(f"o{i}" for i in range(100) if _owner(cluster, c, f"o{i}") not in shard)
        while c.health is not HealthState.DOWN:
            assert time.perf_counter() - killed_at < 10, "the client never went down"
            with contextlib.suppress(RedisUnavailable):
                await c.exists(other)
            await asyncio.sleep(0.05)
        print(
            f"\nshard lost: client down {time.perf_counter() - killed_at:.2f} s after the kill "
            f"({c.health_reason})"
        )
        assert "cluster_state:fail" in c.health_reason
        started = time.perf_counter()
        with pytest.raises(RedisUnavailable) as caught:
            await c.exists(other)
        assert caught.value.reason == "down"
        assert time.perf_counter() - started < 0.01

"""Redis Cluster: routing by slot, atomic sessions, pub/sub across nodes, node failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from gateway_redis import RedisClient, RedisConfig, RedisUnavailable, SessionNotFound
from tests.topologies import ClusterTopology, cluster_topology

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    with cluster_topology() as topo:
        yield topo


def _config(topo: ClusterTopology) -> RedisConfig:
    return RedisConfig(cluster_nodes=topo.addresses[:2], probe_interval=0.2, operation_timeout=1.0)


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
    async with RedisClient(_config(cluster)) as c:
        key = "victim"
        await c.set(key, "before")
        await asyncio.sleep(0.3)  # replication
        victim = cluster.primary_for_slot(key_slot(c.key(key).encode()))
        errors_during = 0
        errors_after = 0
        recovered_at: float | None = None
        killed_at = time.perf_counter()
        await asyncio.to_thread(victim.kill)
        deadline = killed_at + 20
        n = 0
        while time.perf_counter() < deadline:
            n += 1
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
        print(
            f"cluster failover: outage window {recovered_at - killed_at:.2f}s, "
            f"{errors_during} failed calls during it, {errors_after} after"
        )
        assert errors_after == 0
        new_owner = cluster.primary_for_slot(key_slot(c.key(key).encode()))
        assert new_owner.port != victim.port

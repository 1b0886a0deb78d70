"""The rate limiter on Redis Cluster: one identity's cells in one slot (one script, no
CROSSSLOT), exact across two clients, and still limiting after the primary holding them
is killed and its replica promoted (a script the new primary lacks is sent again)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from gateway_redis import Limit, RateLimitStore, RedisClient, RedisConfig, RedisUnavailable
from tests.topologies import ClusterTopology, cluster_topology

pytestmark = pytest.mark.slow

LIMITS = [Limit(30, 3600), Limit(1000, 86400)]


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    with cluster_topology() as topo:
        yield topo


def _wait_replicated(topo: ClusterTopology, primary: int, timeout: float = 15.0) -> None:
    """Until a replica of ``primary`` is linked and has every write the primary has (a
    fresh cluster's replicas take a few seconds to sync the first time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with redis.Redis(port=primary, socket_timeout=1) as r:
            offset = int(r.info("replication")["master_repl_offset"])
        for node in topo.nodes:
            if not node.running or node.port == primary:
                continue
            with redis.Redis(port=node.port, socket_timeout=1) as r:
                info = r.info("replication")
            if (
                info.get("role") == "slave"
                and int(info.get("master_port", 0)) == primary
                and info.get("master_link_status") == "up"
                and int(info.get("slave_repl_offset", 0)) >= offset
            ):
                return
        time.sleep(0.1)
    raise AssertionError(f"no replica of {primary} caught up in {timeout} s")


def _config(topo: ClusterTopology) -> RedisConfig:
    return RedisConfig(cluster_nodes=topo.addresses[:2], probe_interval=0.2, operation_timeout=1.0)


async def test_limits_hold_on_cluster_and_survive_a_failover(cluster: ClusterTopology) -> None:
    async with RedisClient(_config(cluster)) as c, RedisClient(_config(cluster)) as d:
        stores = [RateLimitStore(c), RateLimitStore(d)]
        # exact across two clients, several limits in one script (keys in one slot)
        decisions = await asyncio.gather(
            *(stores[i % 2].acquire("api", "shared", LIMITS) for i in range(100))
        )
        assert sum(x.allowed for x in decisions) == 30
        slots = {key_slot(c.key(k).encode()) for k in RateLimitStore.keys("api", "u", LIMITS)}
        assert len(slots) == 1
        # spend 3 of alice's 30, let the replica catch up, kill the primary holding them
        store = stores[0]
        for _ in range(3):
            assert (await store.acquire("api", "alice", LIMITS)).allowed
        cell = c.key(RateLimitStore.keys("api", "alice", LIMITS)[0])
        victim = cluster.primary_for_slot(key_slot(cell.encode()))
        await asyncio.to_thread(_wait_replicated, cluster, victim.port)
        killed_at = time.perf_counter()
        await asyncio.to_thread(victim.kill)
        failed = 0
        after: list[int] = []
        deadline = killed_at + 20
        while time.perf_counter() < deadline and len(after) < 30:
            try:
                decision = await store.acquire("api", "alice", LIMITS)
            except RedisUnavailable:
                assert not after, "an error after the limiter worked again"
                failed += 1
                await asyncio.sleep(0.05)
                continue
            after.append(decision.states[0].remaining if decision.allowed else -1)
        assert after, "the limiter never worked again"
        recovered = time.perf_counter() - killed_at
        new_owner = cluster.primary_for_slot(key_slot(cell.encode()))
        assert new_owner.port != victim.port
        # the replica had alice's cells: 3 spent before, 27 admitted after, then refused
        assert after[:27] == list(range(26, -1, -1)), after
        assert after[27:] == [-1] * (len(after) - 27)
        for node in cluster.nodes:  # every script lost: sent again, no error
            if node.running:
                with redis.Redis(port=node.port, socket_timeout=1) as r:
                    r.script_flush()
        assert not (await store.acquire("api", "alice", LIMITS)).allowed
        assert (await store.acquire("api", "bob", LIMITS)).allowed
        print(
            f"rate limiter on cluster failover: {failed} calls failed (RedisUnavailable, the "
            f"rule's outage policy applies) over {recovered:.2f} s, none after"
        )

"""The response cache's Redis side on Cluster: entries, tag versions on other slots,
invalidation and fill locks, each key on its own slot (no cross-slot command)."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot

from gateway_redis import RedisClient, RedisConfig, ResponseCacheStore, StoredResponse
from tests.topologies import ClusterTopology

pytestmark = pytest.mark.slow


async def test_store_round_trip_and_tag_invalidation_across_slots(
    cluster: ClusterTopology,
) -> None:
    config = RedisConfig(cluster_nodes=cluster.addresses[:2], operation_timeout=2.0)
    async with RedisClient(config) as client:
        store = ResponseCacheStore(client, max_lifetime=60)
        tags = [f"orders:{i}" for i in range(8)]
        # The tag keys land on several slots: a cross-slot read would fail here.
        slots = {key_slot(client.key("rc:t:" + t).encode()) for t in tags}
        assert len(slots) > 1
        versions = await store.versions(tags)
        assert versions == dict.fromkeys(tags, "")
        stored = StoredResponse(
            status=200,
            headers=((b"content-type", b"text/plain"),),
            body=b"hello",
            etag='"x"',
            created=time.time(),
            ttl=30,
            versions=versions,
        )
        await store.save("fp1", stored)
        loaded = await store.load("fp1")
        assert loaded is not None
        assert loaded.body == b"hello"
        await store.invalidate(["orders:5"])
        assert await store.load("fp1") is None  # its tag has a new version
        token = await store.acquire("fp1", 5)
        assert token is not None
        assert await store.acquire("fp1", 5) is None
        await store.release("fp1", "not-the-token")
        assert await store.acquire("fp1", 5) is None
        await store.release("fp1", token)
        assert await store.acquire("fp1", 5) is not None

"""On Redis Cluster the eviction policy is read from every primary (issue 13 item 12): one
primary switched to an evicting policy is reported by name, and its fix is noticed."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig
from tests.topologies import ClusterTopology

pytestmark = pytest.mark.slow

_LOGGER = "tests.cluster_eviction"


def _set_policy(port: int, policy: str) -> None:
    admin = redis.Redis(port=port)
    try:
        admin.config_set("maxmemory-policy", policy)
    finally:
        admin.close()


async def _until(predicate: object, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_every_primary_is_checked(
    cluster: ClusterTopology, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=_LOGGER)
    config = RedisConfig(cluster_nodes=cluster.addresses[:2], health_check_interval=0.1)
    async with RedisClient(config, logger=logging.getLogger(_LOGGER)) as c:
        assert c.eviction_unsafe is False
        assert c.backend.cluster is not None
        primaries = sorted(int(n.port) for n in c.backend.cluster.get_primaries())
        assert len(primaries) == 3
        port = primaries[-1]
        _set_policy(port, "volatile-lru")
        try:
            await _until(lambda: c.eviction_unsafe is True)
        finally:
            _set_policy(port, "noeviction")
        await _until(lambda: c.eviction_unsafe is False)
    events = [r for r in caplog.records if getattr(r, "event", "").startswith("eviction")]
    assert [r.event for r in events] == ["eviction_unsafe", "eviction_safe"]  # type: ignore[attr-defined]
    assert f"volatile-lru on 127.0.0.1:{port}" in events[0].getMessage()

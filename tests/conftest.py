"""Shared fixtures: real Redis-compatible servers started by the tests themselves.

``redis_server`` is one server for the whole session, flushed before every test that
uses it; ``fault_server`` is a private server a test may kill, freeze and restart.
Binaries come from :func:`gateway_redis.embedded.find_server_binary`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_admin(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A plain synchronous redis-py client for setting up and inspecting the server."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushall()
    yield admin
    admin.close()


@pytest.fixture
def redis_config(redis_server: EmbeddedRedis, redis_admin: redis.Redis) -> RedisConfig:
    return RedisConfig(url=redis_server.url, min_idle_conns=2)


@pytest.fixture
async def client(redis_config: RedisConfig) -> AsyncIterator[RedisClient]:
    async with RedisClient(redis_config) as c:
        yield c


@pytest.fixture
def fault_server() -> Iterator[EmbeddedRedis]:
    """A server of the test's own, to kill, freeze and restart."""
    server = EmbeddedRedis()
    server.start()
    yield server
    server.cleanup()

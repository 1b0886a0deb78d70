"""A Redis that may evict our keys is reported: log once per change, metric, client status
(issue 13 item 12).

With an ``allkeys-*`` or ``volatile-*`` ``maxmemory-policy`` Redis may evict deny entries
and session index entries, so a revoked token comes back. Real servers, started with the
policy under test; the policy is read from ``INFO memory`` at connect and on every probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from tests.conftest import Telemetry

pytestmark = pytest.mark.slow

_LOGGER = "tests.eviction"
_EVENTS = {"eviction_unsafe", "eviction_safe", "eviction_policy_unreadable"}


def _server(policy: str) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(args=["--maxmemory-policy", policy])
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def evicting_server() -> Iterator[EmbeddedRedis]:
    yield from _server("allkeys-lru")


@pytest.fixture
def safe_server() -> Iterator[EmbeddedRedis]:
    yield from _server("noeviction")


def _client(server: EmbeddedRedis, **overrides: object) -> RedisClient:
    # Probes every 0.1 s while up, so that "the next probe" comes soon.
    config = RedisConfig(url=server.url, health_check_interval=0.1).replace(**overrides)
    return RedisClient(config, logger=logging.getLogger(_LOGGER))


def _events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) in _EVENTS]


def _gauge(telemetry: Telemetry) -> list[float]:
    return [p.value for _, p in telemetry.points("gateway.redis.eviction_unsafe")]  # type: ignore[attr-defined]


async def _until(predicate: object, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_evicting_policy_is_warned_once_then_its_fix_is_noticed(
    evicting_server: EmbeddedRedis, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=_LOGGER)
    async with _client(evicting_server) as c:
        assert c.eviction_unsafe is True  # read at connect
        await asyncio.sleep(0.5)  # several probes: still one warning
        [warning] = _events(caplog)
        assert warning.levelno == logging.WARNING
        assert warning.event == "eviction_unsafe"  # type: ignore[attr-defined]
        message = warning.getMessage()
        assert "allkeys-lru" in message
        assert f"127.0.0.1:{evicting_server.port}" in message
        assert "revoked token" in message
        assert "maxmemory-policy noeviction" in message
        assert _gauge(telemetry) == [1]

        admin = redis.Redis.from_url(evicting_server.url)
        try:
            admin.config_set("maxmemory-policy", "noeviction")
        finally:
            admin.close()
        await _until(lambda: c.eviction_unsafe is False)
        await asyncio.sleep(0.3)  # more probes: no more lines
        assert _gauge(telemetry) == [0]
        events = _events(caplog)
        assert [r.event for r in events] == ["eviction_unsafe", "eviction_safe"]  # type: ignore[attr-defined]
        assert events[1].levelno == logging.INFO
        assert "noeviction" in events[1].getMessage()
    assert _gauge(telemetry) == []  # a closed client reports nothing


@pytest.mark.parametrize("policy", ["volatile-ttl", "allkeys-random"])
async def test_every_evicting_policy_counts(policy: str, caplog: pytest.LogCaptureFixture) -> None:
    # Every key of ours has a TTL: volatile-* evicts them as surely as allkeys-*.
    caplog.set_level(logging.DEBUG, logger=_LOGGER)
    for server in _server(policy):
        async with _client(server) as c:
            assert c.eviction_unsafe is True
        assert [r.event for r in _events(caplog)] == ["eviction_unsafe"]  # type: ignore[attr-defined]


async def test_noeviction_from_the_start_says_nothing(
    safe_server: EmbeddedRedis, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=_LOGGER)
    async with _client(safe_server) as c:
        assert c.eviction_unsafe is False
        await asyncio.sleep(0.3)
        assert _gauge(telemetry) == [0]
    assert _events(caplog) == []


async def test_unreadable_policy_is_said_once_and_is_no_outage(
    safe_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # A user that may not run INFO (as with some managed offerings' restricted users).
    admin = redis.Redis.from_url(safe_server.url)
    try:
        admin.acl_setuser(
            "gw", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"]
        )
    finally:
        admin.close()
    caplog.set_level(logging.DEBUG, logger=_LOGGER)
    url = f"redis://gw:pw@127.0.0.1:{safe_server.port}"
    async with _client(safe_server, url=url) as c:
        await asyncio.sleep(0.4)  # several probes
        assert c.available
        assert c.eviction_unsafe is None
        await c.set("k", "v")
    [said] = _events(caplog)
    assert said.event == "eviction_policy_unreadable"  # type: ignore[attr-defined]
    assert said.levelno == logging.INFO
    assert "noeviction" in said.getMessage()

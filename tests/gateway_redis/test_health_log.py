"""Every change of Redis availability is logged exactly once (DESIGN, "The shared client").

Real state changes on a server of the test's own: killed, restarted, frozen, thawed, its
password changed under the client and restored. The client's logger is captured: one
``redis_state`` record per transition, with the documented fields (``event``,
``component``, ``state``, ``previous``, ``reason``), at WARNING when leaving ``up`` and
INFO when coming back; none while the state stays (failing calls and failing probes during
an outage must not repeat it); and one count per change in ``gateway.redis.state_changes``.
Fails if the log call goes or repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from gateway_redis import HealthState, RedisClient, RedisConfig, RedisUnavailable
from gateway_redis.embedded import EmbeddedRedis
from tests.conftest import Telemetry

pytestmark = pytest.mark.slow


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def states(self) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "event", None) == "redis_state"]


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, _Records]]:
    logger = logging.getLogger("tests.health_log")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = _Records()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _fail_calls(client: RedisClient, count: int = 5) -> None:
    for _ in range(count):
        with contextlib.suppress(RedisUnavailable):
            await client.set("k", "v")


def _changes(telemetry: Telemetry) -> dict[object, float]:
    counts: dict[object, float] = {}
    for attrs, point in telemetry.points("gateway.redis.state_changes"):
        state = attrs.get("gateway.redis.state")
        counts[state] = counts.get(state, 0) + point.value  # type: ignore[attr-defined]
    return counts


async def test_each_state_change_is_logged_once_with_its_fields(
    fault_server: EmbeddedRedis,
    captured: tuple[logging.Logger, _Records],
    telemetry: Telemetry,
) -> None:
    logger, handler = captured
    counted_before = _changes(telemetry)
    config = RedisConfig(
        url=fault_server.url, probe_interval=0.1, operation_timeout=0.5, read_timeout=0.4
    )
    seen: list[tuple[HealthState, str]] = []
    async with RedisClient(config, logger=logger) as client:
        client.add_state_listener(lambda state, reason: seen.append((state, reason)))
        await client.set("k", "v")
        assert handler.states() == []  # connected at start: no change to log

        # 1, 2: killed (calls and about 5 failing probes while down), restarted.
        fault_server.kill()
        await _fail_calls(client)
        await _until(lambda: client.health is HealthState.DOWN)
        await asyncio.sleep(0.5)
        await _fail_calls(client)
        fault_server.start()
        await _until(lambda: client.health is HealthState.UP)

        # 3, 4: frozen (a call times out), thawed.
        fault_server.freeze()
        try:
            await _fail_calls(client, 2)
            await _until(lambda: client.health is HealthState.DOWN)
            await asyncio.sleep(0.5)
        finally:
            fault_server.thaw()
        await _until(lambda: client.health is HealthState.UP)

        # 5, 6: credentials refused (misconfigured), then accepted again.
        admin = redis.Redis.from_url(fault_server.url)
        admin.config_set("requirepass", "changed-under-the-client-123")
        admin.close()
        admin = redis.Redis(
            host=fault_server.host, port=fault_server.port, password="changed-under-the-client-123"
        )
        try:
            admin.client_kill_filter(_type="normal", skipme=True)
            await _fail_calls(client, 2)
            await _until(lambda: client.health is HealthState.MISCONFIGURED)
            await asyncio.sleep(0.5)
            admin.config_set("requirepass", "")
        finally:
            admin.close()
        await _until(lambda: client.health is HealthState.UP, 10.0)
        await client.set("k", "v")
        await asyncio.sleep(0.3)  # up and quiet: nothing more to log

    records = handler.states()
    got = [(r.previous, r.state) for r in records]  # type: ignore[attr-defined]
    assert got[:5] == [
        ("up", "down"), ("down", "up"),
        ("up", "down"), ("down", "up"),
        ("up", "misconfigured"),
    ], got  # fmt: skip
    assert got[-1] == ("misconfigured", "up"), got
    # A chain: each record starts where the previous one ended, and none repeats a state.
    assert all(prev != new for prev, new in got), got
    assert all(a[1] == b[0] for a, b in itertools.pairwise(got)), got
    # ... and counted once each in gateway.redis.state_changes (the same contract row).
    counted = _changes(telemetry)
    for state in ("up", "down", "misconfigured"):
        moved = counted.get(state, 0) - counted_before.get(state, 0)
        assert moved == sum(new == state for _, new in got), (state, moved, got)
    # Exactly one record per change the listeners saw, in the same order and reasons.
    assert [(r.state, r.reason) for r in records] == [  # type: ignore[attr-defined]
        (state.value, reason) for state, reason in seen
    ]
    for record in records:
        assert record.component == "health"  # type: ignore[attr-defined]
        assert isinstance(record.reason, str)
        assert record.reason
        assert record.levelno == (
            logging.INFO if record.state == "up" else logging.WARNING  # type: ignore[attr-defined]
        )
        assert record.getMessage() == (
            f"redis {record.previous} -> {record.state} ({record.reason})"  # type: ignore[attr-defined]
        )

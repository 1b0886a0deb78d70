"""A scripted scenario on two example gateways, read back through the SDK's metric reader.

Login on A, warm traffic on A, a first request on B (served from Redis), logout on A seen by
B, Redis killed and restarted. After each step the counters must have moved by exactly what
the step explains; the metric reader is process-wide, so every check is a difference.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway_redis.embedded import EmbeddedRedis
from tests.conftest import Telemetry
from tests.examples.conftest import gateway_env

Counts = dict[tuple[object, ...], float]

LOOKUP_KEYS = ("gateway.cache.name", "gateway.cache.result")
INVALIDATION_KEYS = ("gateway.invalidation.kind", "gateway.invalidation.direction")


def _sums(telemetry: Telemetry, name: str, keys: tuple[str, ...]) -> Counts:
    found: Counts = {}
    for attrs, point in telemetry.points(name):
        key = tuple(attrs.get(k) for k in keys)
        found[key] = found.get(key, 0) + point.value  # type: ignore[attr-defined]
    return found


def _delta(after: Counts, before: Counts) -> Counts:
    moved = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in moved.items() if v}


async def _until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def gateways(fault_server: EmbeddedRedis) -> Any:
    """Start two in-process example gateways on ``fault_server``."""
    from examples.gateway import create_app

    @contextlib.asynccontextmanager
    async def run() -> Any:
        async with contextlib.AsyncExitStack() as stack:
            pair = []
            for _ in range(2):
                app = create_app(gateway_env(fault_server.url, GATEWAY_COOKIE_SECURE="0"))
                await stack.enter_async_context(app.router.lifespan_context(app))
                assert await app.state.bus.wait_synced(5)
                http = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://testserver"
                )
                await stack.enter_async_context(http)
                pair.append((app, http))
            yield pair

    return run


async def test_metrics_follow_a_scripted_scenario(
    telemetry: Telemetry, fault_server: EmbeddedRedis, gateways: Any
) -> None:
    def lookups() -> Counts:
        return _sums(telemetry, "gateway.cache.lookups", LOOKUP_KEYS)

    def invalidations() -> Counts:
        return _sums(telemetry, "gateway.invalidations", INVALIDATION_KEYS)

    def states() -> Counts:
        return _sums(telemetry, "gateway.redis.state_changes", ("gateway.redis.state",))

    def reconnects() -> float:
        return sum(p.value for _, p in telemetry.points("gateway.pubsub.reconnects"))  # type: ignore[attr-defined]

    def pool_waits() -> int:
        return sum(p.count for _, p in telemetry.points("gateway.redis.pool.wait_time"))  # type: ignore[attr-defined]

    async with gateways() as ((app_a, a), (app_b, b)):
        # 1. Login on A: a session is created (one pooled call at least).
        waits = pool_waits()
        login = await a.post(
            "/auth/login", json={"username": "alice", "password": "alice-password"}
        )
        assert login.status_code == 200
        token = login.json()["access_token"]
        assert pool_waits() > waits
        auth = {"Authorization": f"Bearer {token}"}
        first = await a.get("/api/admin", headers=auth)
        assert first.status_code == 200

        # 2. Warm traffic on A (token + the session cookie the client kept): every lookup
        # is an L1 hit. (The example's role table is not cacheable: RBAC counts nothing.)
        before = lookups()
        for _ in range(5):
            assert (await a.get("/api/admin", headers=auth)).status_code == 200
        assert _delta(lookups(), before) == {("jwt", "l1"): 5, ("session", "l1"): 5}

        # 3. The first request on B is served from Redis (L2): A stored the result there.
        before = lookups()
        assert (await b.get("/api/admin", headers=auth)).status_code == 200
        assert _delta(lookups(), before) == {("jwt", "l2"): 1}

        # 4. Logout on A revokes the token: A sends, B receives, B then rejects the token.
        sent_before = invalidations()
        assert (await a.post("/auth/logout", headers=auth)).status_code == 200

        async def b_rejects() -> bool:
            status: int = (await b.get("/api/admin", headers=auth)).status_code
            return status == 401

        await _until(b_rejects)

        async def both_received() -> bool:
            moved = _delta(invalidations(), sent_before)
            return bool(moved.get(("jwt", "received")) and moved.get(("session", "received")))

        await _until(both_received)
        # One revocation (the token is the session's token too) and one session delete,
        # each sent once by A and received once by B (A ignores its own events).
        assert _delta(invalidations(), sent_before) == {
            ("jwt", "sent"): 1,
            ("jwt", "received"): 1,
            ("session", "sent"): 1,
            ("session", "received"): 1,
        }

        # 5. Redis killed: both clients go down once; a token-only route still answers
        # (validated locally), counted as a lookup that missed every cache.
        state_before, reconnects_before = states(), reconnects()
        fresh, _ = app_a.state.keys.issue("bob", ("user",))
        fault_server.kill()

        async def both_down() -> bool:
            return not (app_a.state.redis.available or app_b.state.redis.available)

        await _until(both_down)
        before = lookups()
        me = await a.get("/api/me", headers={"Authorization": f"Bearer {fresh}"})
        assert me.status_code == 200
        assert _delta(lookups(), before) == {("jwt", "miss"): 1}
        assert _delta(states(), state_before) == {("down",): 2}

        # 6. Redis back: both clients up once, both pub/sub connections reconnected.
        fault_server.start()

        async def both_up() -> bool:
            return bool(app_a.state.redis.available and app_b.state.redis.available)

        await _until(both_up, timeout=10)

        async def both_resubscribed() -> bool:
            return reconnects() - reconnects_before >= 2

        await _until(both_resubscribed, timeout=10)
        assert _delta(states(), state_before) == {("down",): 2, ("up",): 2}

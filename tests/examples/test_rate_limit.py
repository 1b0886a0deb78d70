"""The example's rate-limited routes, black box: ``GET /api/limited`` (5 per 60 s per
subject, shared by every instance, fails open) and ``GET /api/limited/strict`` (fails
closed). Two uvicorn instances admit exactly the budget; Redis killed, each route behaves
as documented and nothing answers 500."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import httpx

from gateway_redis.embedded import EmbeddedRedis


async def login(http: httpx.AsyncClient, user: str) -> dict[str, str]:
    r = await http.post("/auth/login", json={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    http.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_the_sixth_request_in_a_minute_gets_429_with_the_draft_fields(
    inprocess_gateway: Any,
) -> None:
    _, http = await inprocess_gateway(GATEWAY_COOKIE_SECURE="0")
    alice = await login(http, "alice")
    answers = [await http.get("/api/limited", headers=alice) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [429]
    assert all(r.json() == {"ok": True} for r in answers[:5])
    for n, r in enumerate(answers):
        assert r.headers["ratelimit-policy"] == '"5-per-60s";q=5;w=60'
        assert r.headers["ratelimit"].startswith(f'"5-per-60s";r={max(0, 4 - n)};t=')
    refused = answers[5]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit"] == '"5-per-60s";r=0;t=60'
    # per subject: bob's budget is his own
    bob = await login(http, "bob")
    assert (await http.get("/api/limited", headers=bob)).status_code == 200
    # anonymous callers never reach it
    assert (await http.get("/api/limited")).status_code == 401


async def test_two_instances_admit_exactly_50_of_200_concurrent_requests(
    launch_gateway: Callable[..., str], redis_server: EmbeddedRedis, redis_admin: Any
) -> None:
    env = {"GATEWAY_COOKIE_SECURE": "0", "GATEWAY_RATELIMIT_LIMITED": "50/3600s"}
    bases = [launch_gateway(redis_server.url, **env), launch_gateway(redis_server.url, **env)]
    limits = httpx.Limits(max_connections=50)
    async with (
        httpx.AsyncClient(base_url=bases[0], timeout=30, limits=limits) as a,
        httpx.AsyncClient(base_url=bases[1], timeout=30, limits=limits) as b,
    ):
        alice = await login(a, "alice")
        # warm both instances' token caches (the warm-up is not rate-limited)
        for http in (a, b):
            assert (await http.get("/api/me", headers=alice)).status_code == 200
        answers = await asyncio.gather(
            *((a, b)[i % 2].get("/api/limited", headers=alice) for i in range(200))
        )
    statuses = collections.Counter(r.status_code for r in answers)
    assert statuses == {200: 50, 429: 150}, statuses
    by_instance = collections.Counter(i % 2 for i, r in enumerate(answers) if r.status_code == 200)
    assert set(by_instance) == {0, 1}, "both instances admitted some"
    for r in answers:
        assert r.headers["ratelimit-policy"] == '"50-per-3600s";q=50;w=3600'
        assert r.headers["ratelimit"].startswith('"50-per-3600s";r=')
        if r.status_code == 429:
            assert r.headers["ratelimit"].startswith('"50-per-3600s";r=0;')
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert "retry-after" not in r.headers
    # one script per request on one server: each admitted request saw a count of its own
    remaining = sorted(
        int(r.headers["ratelimit"].split(";r=")[1].split(";")[0])
        for r in answers
        if r.status_code == 200
    )
    assert remaining == list(range(50))
    print(f"two instances, 200 concurrent requests, budget 50: {dict(statuses)}")


async def test_a_script_flushed_from_redis_is_sent_again_without_an_error(
    inprocess_gateway: Any, redis_admin: Any
) -> None:
    """What a restart or a failover to a fresh primary does to the limiter's script."""
    _, http = await inprocess_gateway(GATEWAY_COOKIE_SECURE="0")
    alice = await login(http, "alice")
    first = await http.get("/api/limited", headers=alice)
    assert first.status_code == 200
    for flushes in range(3):
        redis_admin.script_flush()
        r = await http.get("/api/limited", headers=alice)
        assert r.status_code == 200, r.text
        assert r.headers["ratelimit"].startswith(f'"5-per-60s";r={3 - flushes};')  # charged once
    assert (await http.get("/api/limited", headers=alice)).status_code == 200
    assert (await http.get("/api/limited", headers=alice)).status_code == 429


async def test_redis_killed_each_route_fails_as_documented_and_nothing_answers_500(
    launch_gateway: Callable[..., str], fault_server: EmbeddedRedis
) -> None:
    base = launch_gateway(fault_server.url, GATEWAY_COOKIE_SECURE="0")
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        alice = await login(http, "alice")
        assert (await http.get("/api/limited", headers=alice)).status_code == 200
        assert (await http.get("/api/limited/strict", headers=alice)).status_code == 200
        fault_server.kill()
        statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for _ in range(20):  # more than either budget: nothing is counted in process
            for path in ("/api/limited", "/api/limited/strict", "/api/me"):
                r = await http.get(path, headers=alice)
                statuses[path][r.status_code] += 1
                if path == "/api/limited/strict":
                    assert r.headers["retry-after"]
        assert statuses["/api/limited"] == {200: 20}  # fails open
        assert statuses["/api/limited/strict"] == {503: 20}  # fails closed
        assert statuses["/api/me"] == {200: 20}  # not limited at all
        fault_server.start()
        for _ in range(100):
            r = await http.get("/api/limited/strict", headers=alice)
            if r.status_code != 503:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200  # limited again on the fresh server
        assert r.headers["ratelimit"].startswith('"2-per-10s";r=1;')

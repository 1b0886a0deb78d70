"""The approximate mode (``RateLimitRule(batch=...)``), against a real server: fewer round
trips, never more admitted than the limit across instances, reserves that expire and a
bounded table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway_redis import Limit, LimitState, RateDecision, RateLimitStore, RedisClient
from middleware import RateLimitMiddleware, RateLimitRule
from middleware.ratelimit.reserve import MAX_RESERVES, Reserves


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def app_with(client: RedisClient, rule: RateLimitRule) -> Starlette:
    app = Starlette(routes=[Route("/r", ok)])
    app.add_middleware(RateLimitMiddleware, store=RateLimitStore(client), rules=[rule])
    return app


@contextlib.asynccontextmanager
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.9.8.7", 1)), base_url="http://t"
    ) as h:
        yield h


def scripts(admin: redis.Redis) -> int:
    stats: Any = admin.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_a_batch_saves_round_trips_and_the_fields_stay_right(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    rule = RateLimitRule("/r", "50/h", batch=5, name="batched")
    async with http(app_with(client, rule)) as h:
        answers = [await h.get("/r")]  # asks Redis (and loads the script)
        before = scripts(redis_admin)
        answers += [await h.get("/r") for _ in range(11)]
    assert [r.status_code for r in answers] == [200] * 12
    assert scripts(redis_admin) - before == 2  # requests 6 and 11 ask Redis
    remaining = [int(r.headers["ratelimit"].split(";r=")[1].split(";")[0]) for r in answers]
    assert remaining == list(range(49, 37, -1))


async def test_two_instances_never_admit_more_than_the_limit(client: RedisClient) -> None:
    rule = RateLimitRule("/r", "10/h", batch=4, name="shared")
    async with http(app_with(client, rule)) as a, http(app_with(client, rule)) as b:
        statuses = [(await (a, b)[i % 2].get("/r")).status_code for i in range(30)]
    # 4 + 4 reserved, then 2 left: fewer than a batch, charged one by one, exactly
    assert statuses.count(200) == 10
    assert statuses[10:] == [429] * 20


async def test_concurrent_requests_on_two_instances_stay_within_the_limit(
    client: RedisClient,
) -> None:
    rule = RateLimitRule("/r", "50/h", batch=5, name="burst")
    async with http(app_with(client, rule)) as a, http(app_with(client, rule)) as b:
        answers = await asyncio.gather(*((a, b)[i % 2].get("/r") for i in range(200)))
    admitted = sum(r.status_code == 200 for r in answers)
    assert admitted == 50  # one batch at a time per instance: nothing reserved is dropped
    assert all(r.status_code in (200, 429) for r in answers)
    print(f"approximate mode, 2 instances, 200 concurrent, budget 50: {admitted} admitted")


async def test_a_reserve_is_dropped_after_its_hold(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    rule = RateLimitRule("/r", "50/h", batch=5, batch_hold=0.2, name="held")
    async with http(app_with(client, rule)) as h:
        assert (await h.get("/r")).status_code == 200  # charges a batch of 5
        before = scripts(redis_admin)
        assert (await h.get("/r")).status_code == 200
        assert scripts(redis_admin) - before == 0  # from the reserve
        await asyncio.sleep(0.3)
        last = await h.get("/r")
        assert scripts(redis_admin) - before == 1  # asked Redis again
    assert last.headers["ratelimit"].startswith('"50-per-3600s";r=44;')  # 3 unused dropped


def test_the_reserve_table_is_bounded() -> None:
    reserves = Reserves()
    decision = RateDecision(True, (LimitState(Limit(10, 1), 5, 0.0, 1.0),), 0.0)
    for n in range(MAX_RESERVES + 10):
        reserves.put("rule", f"ip:{n}", decision, 3, 1.0)
    assert len(reserves) <= MAX_RESERVES


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        RateLimitRule("/r", "10/s", batch=0)
    with pytest.raises(ValueError, match="batch"):
        RateLimitRule("/r", "10/s", batch=11)
    with pytest.raises(ValueError, match="batch"):
        RateLimitRule("/r", "10/s", cost=3, batch=2)
    with pytest.raises(ValueError, match="batch_hold"):
        RateLimitRule("/r", "10/s", batch=2, batch_hold=0)

"""API keys when Redis goes away, and what telemetry sees (issue 16): a killed server
leaves the lookup and L1 answering (degraded), a key revoked before stays refused, a
fail-closed path answers 503, never a 500; spans and metrics carry the tier and the
reason, never a key."""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from middleware import APIKeyAuthenticator, APIKeyMiddleware
from tests.conftest import Telemetry
from tests.middleware.test_apikeys import ALICE_KEY, BOB_KEY, CountingLookup, settings
from tests.middleware.test_spans import served


async def _me(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def app_for(auth: APIKeyAuthenticator, **options: Any) -> Starlette:
    return Starlette(
        routes=[Route("/me", _me), Route("/strict", _me)],
        middleware=[Middleware(APIKeyMiddleware, authenticator=auth, **options)],
    )


def http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://t")


async def test_redis_down_keys_still_authenticate_and_revocations_hold(
    fault_server: EmbeddedRedis,
) -> None:
    lookup = CountingLookup()
    config = RedisConfig(url=fault_server.url)
    async with RedisClient(config) as client:
        assert await client.invalidation.wait_synced(5)
        auth = APIKeyAuthenticator(settings(lookup), client=client)
        assert await client.invalidation.wait_synced(5)
        await auth.revoke("bob")
        app = app_for(auth, fail_closed_paths=["/strict"])
        async with http(app) as h:
            assert (await h.get("/me", headers={"X-API-Key": BOB_KEY})).status_code == 401
            fault_server.kill()
            r = await h.get("/me", headers={"X-API-Key": ALICE_KEY})
            assert r.status_code == 200
            assert r.json() == {"sub": "apikey:alice"}
            assert (await h.get("/me", headers={"X-API-Key": BOB_KEY})).status_code == 401
            strict = await h.get("/strict", headers={"X-API-Key": ALICE_KEY})
            assert strict.status_code == 503
            assert (
                await h.get("/me", headers={"X-API-Key": "ak_wrong_0000000000000"})
            ).status_code == 401


async def test_spans_and_metrics_carry_the_tier_never_the_key(
    telemetry: Telemetry, client: RedisClient
) -> None:
    lookup = CountingLookup()
    auth = APIKeyAuthenticator(settings(lookup), client=client)
    assert await client.invalidation.wait_synced(5)
    wrong = "ak_live_wrong_key_0000000000"
    async with http(served(app_for(auth))) as h:
        telemetry.spans.clear()
        for _ in range(3):
            assert (await h.get("/me", headers={"X-API-Key": ALICE_KEY})).status_code == 200
        assert (await h.get("/me", headers={"X-API-Key": wrong})).status_code == 401
    finished = telemetry.spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    spans = [s for s in finished if s.name == "gateway.apikey authenticate"]
    assert len(servers) == 4
    assert len(spans) == 2  # the miss and the wrong key; the two L1 hits annotate
    assert spans[0].attributes.get("gateway.cache.result") == "miss"  # type: ignore[union-attr]
    assert spans[1].attributes.get("gateway.reason") == "unknown_key"  # type: ignore[union-attr]
    tiers = [s.attributes.get("gateway.apikey.cache.result") for s in servers]  # type: ignore[union-attr]
    assert tiers == [None, "l1", "l1", None]
    for span in finished:
        for value in (span.attributes or {}).values():
            for secret in (ALICE_KEY, wrong, auth.digest(ALICE_KEY)):
                assert secret not in str(value)
    points = {
        str(attrs.get("gateway.cache.result"))
        for attrs, _ in telemetry.points("gateway.cache.lookups")
        if attrs.get("gateway.cache.name") == "apikey"
    }
    assert {"l1", "miss", "invalid"} <= points

"""The response cache middleware on a plain Starlette app and a real Redis: public and
private keys, HEAD, the body cap, stale-while-revalidate, stale-if-error, L2 sharing and
tag versions, the fill lock across instances."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.authentication import SimpleUser, UnauthenticatedUser
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from middleware import (
    CacheRule,
    CallablePermissions,
    PermissionCache,
    ResponseCache,
    ResponseCacheMiddleware,
    ResponseCacheSettings,
    cache_response,
)
from middleware.jwt.claims import TokenClaims
from middleware.responsecache.flight import Flights
from middleware.responsecache.middleware import caller_of
from middleware.responsecache.routes import route_rules
from middleware.scope import API_KEY_KEY, CLAIMS_KEY


class Identify:
    """Sets ``scope["user"]`` from the ``X-User`` header (a stand-in for the JWT layer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = dict(scope["headers"]).get(b"x-user")
        if user is not None:
            scope["user"] = SimpleUser(user.decode())
        await self.app(scope, receive, send)


class Backend:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.status = 200
        self.size = 10

    async def endpoint(self, request: Request) -> Response:
        self.calls += 1
        if self.fail:
            raise RuntimeError("backend down")
        user = request.scope.get("user")
        who = user.display_name if user is not None else "-"
        text = f"{request.url.path} {who} {self.calls} ".ljust(self.size, "x")
        return PlainTextResponse(text, status_code=self.status)


def rules() -> list[CacheRule]:
    return [
        CacheRule("/public/{id}", ttl=30, public=True, tags=["p:{id}"]),
        CacheRule("/private/{id}", ttl=30, tags=["p:{id}"]),
        CacheRule("/short/{id}", ttl=0.2, stale_while_revalidate=5, stale_if_error=5),
    ]


@contextlib.asynccontextmanager
async def instance(
    config: RedisConfig, backend: Backend, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ResponseCache]]:
    async with RedisClient(config) as client:
        assert await client.invalidation.wait_synced(5)
        cache = ResponseCache(client, ResponseCacheSettings(rules(), **settings))
        paths = ["/public/{id}", "/private/{id}", "/short/{id}", "/other"]
        app = Starlette(routes=[Route(p, backend.endpoint) for p in paths])
        app.add_middleware(ResponseCacheMiddleware, cache=cache)
        app.add_middleware(Identify)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http, cache


async def test_public_entries_are_shared_private_ones_are_per_user(
    redis_config: RedisConfig,
) -> None:
    backend = Backend()
    async with instance(redis_config, backend) as (http, _):
        a = await http.get("/public/1", headers={"x-user": "ann"})
        b = await http.get("/public/1", headers={"x-user": "ben"})
        assert a.text == b.text
        assert a.headers["cache-control"].startswith("public, max-age=")
        c = await http.get("/private/1", headers={"x-user": "ann"})
        d = await http.get("/private/1", headers={"x-user": "ben"})
        assert "ann" in c.text
        assert "ben" in d.text
        # no subject on a private rule: never cached
        e = await http.get("/private/1")
        f = await http.get("/private/1")
        assert e.text != f.text
        assert "cache-control" not in f.headers


async def test_an_l1_hit_carries_the_stored_headers_and_the_caches_own_once(
    redis_config: RedisConfig,
) -> None:
    backend = Backend()
    async with instance(redis_config, backend) as (http, _):
        first = await http.get("/private/7", headers={"x-user": "ann"})
        hit = await http.get("/private/7", headers={"x-user": "ann"})
        assert backend.calls == 1
        assert hit.content == first.content
        names = [name for name, _ in hit.headers.raw]
        assert sorted(names) == sorted(
            [b"content-length", b"content-type", b"etag", b"cache-control", b"age"]
        )
        digest = base64.urlsafe_b64encode(hashlib.sha256(hit.content).digest()).rstrip(b"=")
        assert hit.headers["etag"] == f'"{digest.decode()}"' == first.headers["etag"]
        control = hit.headers["cache-control"]
        assert control.startswith("private, max-age=")
        assert 28 <= int(control.rsplit("=", 1)[1]) <= 30
        assert hit.headers["age"] in ("0", "1", "2")
        again = await http.get(
            "/private/7", headers={"x-user": "ann", "if-none-match": hit.headers["etag"]}
        )
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == hit.headers["etag"]
        assert again.headers["cache-control"].startswith("private, max-age=")


async def test_the_query_string_is_part_of_the_key(redis_config: RedisConfig) -> None:
    backend = Backend()
    async with instance(redis_config, backend) as (http, _):
        one = await http.get("/public/q?page=1")
        two = await http.get("/public/q?page=2")
        assert one.text != two.text
        assert (await http.get("/public/q?page=1")).text == one.text
        assert (await http.get("/public/q")).text not in (one.text, two.text)
        assert backend.calls == 3


async def test_head_uses_the_get_entry_and_misses_go_to_the_app(redis_config: RedisConfig) -> None:
    backend = Backend()
    async with instance(redis_config, backend) as (http, _):
        head = await http.head("/public/2")
        assert head.status_code == 200
        assert "etag" not in head.headers  # a HEAD miss is not cached
        got = await http.get("/public/2")
        head = await http.head("/public/2")
        assert head.headers["etag"] == got.headers["etag"]
        assert head.content == b""


async def test_bodies_over_max_body_are_served_not_cached(redis_config: RedisConfig) -> None:
    backend = Backend()
    backend.size = 5000
    async with instance(redis_config, backend, max_body=1000) as (http, cache):
        a = await http.get("/public/3")
        b = await http.get("/public/3")
        assert len(a.content) == 5000
        assert a.text != b.text
        assert len(cache.l1) == 0


async def test_l2_is_shared_and_tag_invalidation_reaches_the_other_instance(
    redis_config: RedisConfig,
) -> None:
    backend = Backend()
    async with (
        instance(redis_config, backend) as (http_a, cache_a),
        instance(redis_config, backend) as (http_b, _),
    ):
        a = await http_a.get("/public/4")
        b = await http_b.get("/public/4")  # from L2
        assert a.text == b.text
        assert backend.calls == 1
        await cache_a.invalidate_tags("p:4")
        for _ in range(200):
            c = await http_b.get("/public/4")
            if c.text != a.text:
                break
            await asyncio.sleep(0.01)
        assert c.text != a.text


async def test_stale_while_revalidate_and_stale_if_error(redis_config: RedisConfig) -> None:
    backend = Backend()
    async with instance(redis_config, backend) as (http, _):
        first = await http.get("/short/1", headers={"x-user": "ann"})
        await asyncio.sleep(0.3)  # stale now
        stale = await http.get("/short/1", headers={"x-user": "ann"})
        assert stale.text == first.text  # served stale, refreshed in the background
        assert stale.headers["cache-control"].endswith("max-age=0")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if backend.calls == 2:
                break
        assert backend.calls == 2
        refreshed = await http.get("/short/1", headers={"x-user": "ann"})
        assert refreshed.text != first.text
        # stale-if-error: the endpoint fails after expiry, the stale answer is served
        await asyncio.sleep(0.3)
        backend.fail = True
        await asyncio.sleep(0.05)
        answer = await http.get("/short/1", headers={"x-user": "ann", "cache-control": "no-cache"})
        assert answer.status_code == 200


async def test_the_etag_is_the_bodys_on_every_instance_and_after_a_restart(
    redis_config: RedisConfig, redis_admin: Any
) -> None:
    """Strong, from the body alone: two instances computing the same body on their own
    (Redis flushed in between: a restart) give the same ``ETag``, and each answers 304 to
    the other's."""
    calls = 0

    async def constant(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return PlainTextResponse("the same body")

    etags = []
    for _ in range(2):
        async with RedisClient(redis_config) as client:
            assert await client.invalidation.wait_synced(5)
            settings = ResponseCacheSettings([CacheRule("/c", ttl=30, public=True)])
            app = Starlette(routes=[Route("/c", constant)])
            app.add_middleware(ResponseCacheMiddleware, cache=ResponseCache(client, settings))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                first = await http.get("/c")
                etag = first.headers["etag"]
                assert etag.startswith('"')
                assert etag == (await http.get("/c")).headers["etag"]
                for known in etags:
                    again = await http.get("/c", headers={"if-none-match": known})
                    assert again.status_code == 304
                    assert again.content == b""
                    assert again.headers["etag"] == known
                etags.append(etag)
        redis_admin.flushall()
    assert calls == 2  # computed once per instance, independently
    assert etags[0] == etags[1]


@pytest.mark.parametrize("bad", [{"ttl": 0}, {"ttl": -1}, {"ttl": float("nan")}])
def test_rules_reject_bad_ttls(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ttl"):
        CacheRule("/x", **bad)


def test_rules_reject_unknown_tag_fields_and_bad_vary() -> None:
    with pytest.raises(ValueError, match="not in path"):
        CacheRule("/x/{id}", ttl=1, tags=["x:{other}"])
    with pytest.raises(ValueError, match="vary"):
        CacheRule("/x", ttl=1, vary=["bad header"])
    assert CacheRule("/o/{id}/i/{n}", ttl=1, tags=["o:{id}:{n}"]).tags_for("/o/7/i/3") == ("o:7:3",)


async def test_two_instances_compute_a_cold_key_once_through_the_redis_lock(
    redis_config: RedisConfig,
) -> None:
    backend = Backend()
    async with (
        instance(redis_config, backend) as (http_a, _),
        instance(redis_config, backend) as (http_b, _),
    ):
        answers = await asyncio.gather(
            *(http.get("/public/cold") for _ in range(100) for http in (http_a, http_b))
        )
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert backend.calls == 1


async def test_a_policy_version_bump_never_serves_an_older_private_entry(
    redis_config: RedisConfig,
) -> None:
    async def grants(subject: str) -> list[str]:
        return ["read"]

    backend = Backend()
    async with RedisClient(redis_config) as client:
        assert await client.invalidation.wait_synced(5)
        permissions = PermissionCache(CallablePermissions(grants), client=client)
        assert await client.invalidation.wait_synced(5)
        cache = ResponseCache(client, ResponseCacheSettings(rules()), permissions=permissions)
        app = Starlette(routes=[Route("/private/{id}", backend.endpoint)])
        app.add_middleware(ResponseCacheMiddleware, cache=cache)
        app.add_middleware(Identify)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            ann = {"x-user": "ann"}
            first = await http.get("/private/9", headers=ann)
            assert (await http.get("/private/9", headers=ann)).text == first.text
            await permissions.bump_policy_version()
            after = await http.get("/private/9", headers=ann)
            assert after.text != first.text
            assert backend.calls == 2


def test_the_key_holds_the_kind_subject_and_token_roles() -> None:
    claims = TokenClaims.from_json(
        json.dumps(
            {
                "sub": "ann",
                "roles": ["admin"],
                "iss": "i",
                "aud": "a",
                "exp": 2_000_000_000,
                "iat": 1,
                "jti": "j",
            }
        ).encode()
    )
    assert caller_of({CLAIMS_KEY: claims}) == ("jwt", "ann", ("admin",))
    assert caller_of({CLAIMS_KEY: claims, API_KEY_KEY: "k1"}) == ("apikey", "ann", ("admin",))
    simple = "user:starlette.authentication.SimpleUser"
    assert caller_of({"user": SimpleUser("ann")}) == (simple, "ann", ())
    assert caller_of({"user": UnauthenticatedUser()}) is None
    assert caller_of({}) is None


async def test_vary_outside_the_rule_is_not_cached_and_listed_vary_splits_the_key(
    redis_config: RedisConfig,
) -> None:
    calls = 0

    async def varying(request: Request) -> Response:
        nonlocal calls
        calls += 1
        lang = request.headers.get("accept-language", "-")
        return PlainTextResponse(f"{lang} {calls}", headers={"Vary": "Accept-Language"})

    async with RedisClient(redis_config) as client:
        assert await client.invalidation.wait_synced(5)
        settings = ResponseCacheSettings(
            [
                CacheRule("/listed", ttl=30, public=True, vary=["accept-language"]),
                CacheRule("/unlisted", ttl=30, public=True),
            ]
        )
        cache = ResponseCache(client, settings)
        app = Starlette(routes=[Route("/listed", varying), Route("/unlisted", varying)])
        app.add_middleware(ResponseCacheMiddleware, cache=cache)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            en, fr = {"accept-language": "en"}, {"accept-language": "fr"}
            a = await http.get("/unlisted", headers=en)
            b = await http.get("/unlisted", headers=fr)
            assert b.text.startswith("fr")
            assert a.text != b.text
            c = await http.get("/listed", headers=en)
            d = await http.get("/listed", headers=fr)
            assert c.text.startswith("en")
            assert d.text.startswith("fr")
            assert (await http.get("/listed", headers=en)).text == c.text
            assert (await http.get("/listed", headers=fr)).text == d.text


async def test_lookups_are_counted_by_result(redis_config: RedisConfig, telemetry: Any) -> None:
    def counts() -> dict[str, float]:
        return {
            str(attrs.get("gateway.cache.result")): point.value
            for attrs, point in telemetry.points("gateway.cache.lookups")
            if attrs.get("gateway.cache.name") == "response"
        }

    before = counts()
    backend = Backend()
    async with instance(redis_config, backend) as (http, _):
        await http.get("/public/t1")
        await http.get("/public/t1")
    after = counts()
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("l1", 0) - before.get("l1", 0) == 1


async def test_l1_stays_within_its_byte_budget(redis_config: RedisConfig) -> None:
    backend = Backend()
    backend.size = 2000
    async with instance(redis_config, backend, l1_bytes=20_000) as (http, cache):
        for i in range(40):
            assert (await http.get(f"/public/b{i}")).status_code == 200
        assert 0 < len(cache.l1) < 40
        assert cache.l1.size_in_bytes <= 20_000


async def test_waiters_are_bounded_and_time_out() -> None:
    flights: Flights[str] = Flights(max_waiters=1, timeout=0.05)
    future = flights.lead("k")
    assert future is not None
    assert flights.lead("k") is None
    waiter = asyncio.ensure_future(flights.follow("k"))
    await asyncio.sleep(0)
    assert await flights.follow("k") == (False, None)  # over max_waiters
    assert await waiter == (False, None)  # timed out
    again = asyncio.ensure_future(flights.follow("k"))
    await asyncio.sleep(0)
    flights.finish("k", future, "done")
    assert await again == (True, "done")
    assert "k" not in flights


async def test_cache_response_marks_routes_of_starlette_and_fastapi(
    redis_config: RedisConfig,
) -> None:
    calls = 0

    @cache_response(ttl=30, public=True, tags=["thing:{id}"])
    async def thing(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return PlainTextResponse(f"thing {request.path_params['id']} {calls}")

    api = FastAPI()

    @api.get("/api/{id}")
    @cache_response(ttl=30, public=True)
    async def typed(id: int) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"id": id, "calls": calls}

    async with RedisClient(redis_config) as client:
        assert await client.invalidation.wait_synced(5)
        cache = ResponseCache(client, ResponseCacheSettings([]))
        app = Starlette(routes=[Route("/thing/{id:int}", thing), Mount("/fast", api)])
        app.add_middleware(ResponseCacheMiddleware, cache=cache, routes=app)
        fast = ResponseCache(client, ResponseCacheSettings([]))
        api.add_middleware(ResponseCacheMiddleware, cache=fast, routes=api)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            a = await http.get("/thing/7")
            assert (await http.get("/thing/7")).text == a.text
            assert [r.path for r in cache.rules] == ["/thing/{id}"]
            await cache.invalidate_tags("thing:7")
            assert (await http.get("/thing/7")).text != a.text
            b = await http.get("/fast/api/3")
            assert (await http.get("/fast/api/3")).json() == b.json()
            assert b.headers["cache-control"].startswith("public")
    marked = cache_response(ttl=1, tags=["x:{id}"])(thing)  # checked again on the route
    with pytest.raises(ValueError, match="not in path"):
        route_rules([Route("/other", marked)])
    with pytest.raises(ValueError, match="converters"):
        route_rules([Route("/files/{p:path}", marked)])
    with pytest.raises(ValueError, match="ttl"):
        cache_response(ttl=0)


async def test_redis_down_l1_and_the_app_answer_and_l1_is_flushed_when_the_bus_is_back(
    fault_server: EmbeddedRedis,
) -> None:
    backend = Backend()
    config = RedisConfig(url=fault_server.url, operation_timeout=0.5)
    async with instance(config, backend) as (http, cache):
        before = await http.get("/public/before")  # cached before the outage
        fault_server.kill()
        answers = await asyncio.gather(*(http.get("/public/down") for _ in range(50)))
        assert {r.status_code for r in answers} == {200}
        assert len({r.text for r in answers}) == 1
        assert backend.calls == 2
        for _ in range(20):  # L1 answers during the outage, never the app again
            assert (await http.get("/public/down")).text == answers[0].text
            assert (await http.get("/public/before")).text == before.text
        assert backend.calls == 2
        assert not cache.client.invalidation.healthy
        fault_server.start()  # a fresh server: invalidations may have been missed
        assert await cache.client.invalidation.wait_synced(10)
        after = await http.get("/public/before")
        assert after.text != before.text  # L1 was flushed at the resync
        assert backend.calls == 3

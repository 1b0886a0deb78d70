"""RateLimitMiddleware through the Gateway and on its own, against real servers: the 429 and
the draft's fields, per-subject and per-address budgets (X-Forwarded-For only from trusted
proxies), nothing sent to Redis for unlimited routes, and each rule's outage policy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from gateway_redis import RateLimitStore, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from middleware import (
    APIKeySettings,
    Gateway,
    JWTSettings,
    KeyRecord,
    RateLimitMiddleware,
    RateLimitRule,
    RateLimitSettings,
    StaticKeys,
    TrustedProxies,
    rate_limited,
)
from middleware.ratelimit.dependency import RateLimit
from tests.conftest import Telemetry
from tests.middleware.conftest import AUDIENCE, ISSUER, SECRET

SETTINGS = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


ROUTES = [
    Route("/limited", ok),
    Route("/strict", ok),
    Route("/open", ok),
    Route("/free", ok),
    Route("/search", ok, methods=["GET", "POST"]),
]


def gateway_app(client: RedisClient, limits: Any, **install: Any) -> tuple[Gateway, Starlette]:
    gateway = Gateway(client, jwt=SETTINGS)
    app = Starlette(routes=ROUTES, lifespan=gateway.lifespan)
    gateway.install(app, rate_limits=limits, **install)
    return gateway, app


def fastapi_app(client: RedisClient) -> tuple[FastAPI, RateLimitStore]:
    """A FastAPI application wired by a Gateway (JWT), and a store for its limits."""
    gateway = Gateway(client, jwt=SETTINGS)
    app = FastAPI(lifespan=gateway.lifespan)
    gateway.install(app)
    return app, RateLimitStore(client)


@pytest.fixture
async def http_for() -> AsyncIterator[Any]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(app: Starlette, client: tuple[str, int] = ("10.1.2.3", 5000)) -> Any:
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=client),
                base_url="https://testserver",
            )
            return await stack.enter_async_context(http)

        yield start


def auth(make_token: Any, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(sub)}"}


def script_calls(admin: redis.Redis) -> int:
    """Scripts run so far (the limiter's one command; the JWT layer's own re-checks are
    not counted)."""
    stats: Any = admin.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_the_sixth_request_gets_429_with_retry_after_and_the_draft_fields(
    client: RedisClient, make_token: Any, http_for: Any
) -> None:
    _, app = gateway_app(client, [RateLimitRule("/limited", "5/60s", methods=["GET"])])
    http = await http_for(app)
    alice = auth(make_token, "alice")
    answers = [await http.get("/limited", headers=alice) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [429]
    for n, r in enumerate(answers[:5]):
        assert r.json() == {"ok": True}
        assert r.headers["ratelimit-policy"] == '"5-per-60s";q=5;w=60'
        assert r.headers["ratelimit"].startswith(f'"5-per-60s";r={4 - n};t=')
    refused = answers[5]
    assert refused.headers["retry-after"] == "12"  # one unit back every 60 / 5 s
    assert refused.headers["ratelimit-policy"] == '"5-per-60s";q=5;w=60'
    assert refused.headers["ratelimit"] == '"5-per-60s";r=0;t=60'
    assert refused.headers["cache-control"] == "no-store"
    assert refused.json()["error"] == "rate_limited"
    # per subject: bob has his own budget; alice's is spent on POST too? (GET rule only)
    assert (await http.get("/limited", headers=auth(make_token, "bob"))).status_code == 200
    # HEAD is covered by a GET rule
    assert (await http.head("/limited", headers=alice)).status_code == 429


async def test_several_limits_are_all_stated_and_cost_charges_units(
    client: RedisClient, make_token: Any, http_for: Any
) -> None:
    rule = RateLimitRule("/search", "4/s", "10/h", cost=2, name="search")
    _, app = gateway_app(client, RateLimitSettings([rule]))
    http = await http_for(app)
    alice = auth(make_token, "alice")
    first = await http.post("/search", headers=alice)
    assert first.headers["ratelimit-policy"] == '"4-per-1s";q=4;w=1, "10-per-3600s";q=10;w=3600'
    assert first.headers["ratelimit"].startswith('"4-per-1s";r=2;t=1, "10-per-3600s";r=8;t=')
    assert (await http.get("/search", headers=alice)).status_code == 200
    assert (await http.get("/search", headers=alice)).status_code == 429  # 4/s spent


async def test_unlimited_routes_run_no_script_and_limited_ones_one_each(
    client: RedisClient, make_token: Any, http_for: Any, redis_admin: redis.Redis
) -> None:
    _, app = gateway_app(client, [RateLimitRule("/limited", "5/60s")])
    http = await http_for(app)
    assert await client.invalidation.wait_synced(5)  # its start-up reads are done
    alice = auth(make_token, "alice")
    for _ in range(3):  # warm the token caches
        assert (await http.get("/free", headers=alice)).status_code == 200
    before = script_calls(redis_admin)
    for _ in range(20):
        response = await http.get("/free", headers=alice)
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    assert script_calls(redis_admin) - before == 0
    before = script_calls(redis_admin)
    for _ in range(3):
        await http.get("/limited", headers=alice)
    assert script_calls(redis_admin) - before == 3  # one script per limited request


def plain_app(client: RedisClient, *rules: RateLimitRule, **kwargs: Any) -> Starlette:
    app = Starlette(routes=ROUTES)
    app.add_middleware(RateLimitMiddleware, store=RateLimitStore(client), rules=rules, **kwargs)
    return app


async def test_addresses_come_from_the_peer_unless_a_proxy_is_trusted(
    client: RedisClient, http_for: Any
) -> None:
    rule = RateLimitRule("/open", "2/60s", identity="address", name="by-address")
    direct = await http_for(plain_app(client, rule), client=("10.0.0.9", 1))
    for spoof in ("1.1.1.1", "2.2.2.2"):
        assert (await direct.get("/open", headers={"X-Forwarded-For": spoof})).status_code == 200
    # a forged header buys no new budget
    assert (await direct.get("/open", headers={"X-Forwarded-For": "3.3.3.3"})).status_code == 429
    proxies = TrustedProxies(["10.0.0.0/8"])
    behind = await http_for(plain_app(client, rule, proxies=proxies), client=("10.0.0.1", 1))
    for client_ip in ("1.1.1.1", "2.2.2.2", "5.5.5.5"):
        response = await behind.get("/open", headers={"X-Forwarded-For": client_ip})
        assert response.status_code == 200  # each client address has its own budget


async def test_anonymous_requests_of_a_subject_rule_are_keyed_by_address_and_custom_ids_work(
    client: RedisClient, http_for: Any
) -> None:
    def tenant(scope: Any) -> str | None:
        headers = dict(scope["headers"])
        value = headers.get(b"x-tenant")
        return value.decode() if value else None

    rules = [
        RateLimitRule("/open", "1/60s", name="anon"),
        RateLimitRule("/strict", "1/60s", identity=tenant, name="tenant"),
    ]
    http = await http_for(plain_app(client, *rules))
    assert (await http.get("/open")).status_code == 200
    assert (await http.get("/open")).status_code == 429
    assert (await http.get("/strict", headers={"x-tenant": "a"})).status_code == 200
    assert (await http.get("/strict", headers={"x-tenant": "b"})).status_code == 200
    assert (await http.get("/strict", headers={"x-tenant": "a"})).status_code == 429


async def test_the_rule_memo_is_bounded(client: RedisClient) -> None:
    inner = Starlette(routes=ROUTES)
    layer = RateLimitMiddleware(
        inner, store=RateLimitStore(client), rules=[RateLimitRule("/limited", "5/s")]
    )
    for n in range(5000):
        assert layer.rule_for("GET", f"/unlimited/{n}") is None
    assert layer.rule_for("GET", "/x" * 2000) is None  # matched, not remembered
    assert len(layer._memo) <= 2048
    assert ("GET", "/x" * 2000) not in layer._memo
    assert layer.rule_for("GET", "/limited") is layer.rules[0]


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one limit"):
        RateLimitRule("/a")
    with pytest.raises(ValueError, match="limit"):
        RateLimitRule("/a", "ten/s")
    with pytest.raises(ValueError, match="cost"):
        RateLimitRule("/a", "5/s", cost=6)
    with pytest.raises(ValueError, match="on_unavailable"):
        RateLimitRule("/a", "5/s", on_unavailable="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identity"):
        RateLimitRule("/a", "5/s", identity="header")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        RateLimitRule("/a", "5/s", name="a{b}")
    with pytest.raises(ValueError, match="path"):
        RateLimitRule("a", "5/s")
    with pytest.raises(ValueError, match="methods"):
        RateLimitRule("/a", "5/s", methods="GET")
    with pytest.raises(ValueError, match="rules"):
        RateLimitSettings(RateLimitRule("/a", "5/s"))  # type: ignore[arg-type]


async def test_redis_down_each_rule_fails_as_configured_and_nothing_answers_500(
    fault_server: EmbeddedRedis,
    make_token: Any,
    http_for: Any,
    telemetry: Telemetry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = RedisConfig(url=fault_server.url, min_idle_conns=1)
    async with RedisClient(config) as client:
        rules = [
            RateLimitRule("/open", "2/60s", on_unavailable="open", name="fails-open"),
            RateLimitRule("/strict", "2/60s", on_unavailable="closed", name="fails-closed"),
        ]
        _, app = gateway_app(client, rules)
        http = await http_for(app)
        alice = auth(make_token, "alice")
        assert (await http.get("/open", headers=alice)).status_code == 200
        assert (await http.get("/strict", headers=alice)).status_code == 200
        fault_server.kill()
        caplog.set_level(logging.INFO, logger="middleware.ratelimit.limiter")
        answers: list[httpx.Response] = []
        for _ in range(5):
            answers.append(await http.get("/open", headers=alice))
            answers.append(await http.get("/strict", headers=alice))
            answers.append(await http.get("/free", headers=alice))
        statuses = [r.status_code for r in answers]
        assert 500 not in statuses
        assert statuses == [200, 503, 200] * 5  # open, closed, unlimited
        policy = '"2-per-60s";q=2;w=60'
        # No decision, no state: the limited routes state their policy alone.
        for r in answers[::3] + answers[1::3]:
            assert "ratelimit" not in r.headers
            assert r.headers["ratelimit-policy"] == policy
        assert not any("ratelimit-policy" in r.headers for r in answers[2::3])
        assert all(r.headers["retry-after"] for r in answers[1::3])
        warnings = [r for r in caplog.records if "cannot be checked" in r.getMessage()]
        assert len(warnings) == 1  # one line when the outage starts, not one per request
        counted = {
            (p[0]["gateway.ratelimit.rule"], p[0]["gateway.ratelimit.result"]): p[1].value  # type: ignore[attr-defined]
            for p in telemetry.points("gateway.ratelimit.decisions")
        }
        assert counted[("fails-open", "failed_open")] >= 5
        assert counted[("fails-closed", "failed_closed")] >= 5
        fault_server.start()  # a fresh server: the script and the cells are gone
        deadline = time.monotonic() + 10
        while (await http.get("/strict", headers=alice)).status_code == 503:
            assert time.monotonic() < deadline, "limits not checked again after the restart"
            await asyncio.sleep(0.1)
        assert (await http.get("/strict", headers=alice)).status_code == 200
        assert (await http.get("/strict", headers=alice)).status_code == 429  # 2/60s again
        assert any("checked again" in r.getMessage() for r in caplog.records)


async def test_the_fastapi_dependency_limits_one_route_and_keeps_its_outage_policy(
    fault_server: EmbeddedRedis, make_token: Any, http_for: Any
) -> None:
    config = RedisConfig(url=fault_server.url, min_idle_conns=1)
    async with RedisClient(config) as client:
        app, store = fastapi_app(client)
        exports = RateLimit("3/h", store=store, name="exports")
        lenient = RateLimit("3/h", store=store, name="lenient", on_unavailable="open")

        @app.post("/exports", dependencies=[Depends(exports)])
        async def export() -> dict[str, bool]:
            return {"ok": True}

        @app.get("/lenient", dependencies=[Depends(lenient)])
        async def read() -> dict[str, bool]:
            return {"ok": True}

        http = await http_for(app)
        alice = auth(make_token, "alice")
        answers = [await http.post("/exports", headers=alice) for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert answers[0].headers["ratelimit-policy"] == '"3-per-3600s";q=3;w=3600'
        assert answers[0].headers["ratelimit"] == '"3-per-3600s";r=2;t=1200'
        assert answers[3].headers["retry-after"] == "1200"
        assert answers[3].headers["ratelimit"] == '"3-per-3600s";r=0;t=3600'
        assert (await http.get("/lenient", headers=alice)).status_code == 200
        fault_server.kill()
        for _ in range(5):
            closed = await http.post("/exports", headers=alice)
            assert closed.status_code == 503
            assert closed.headers["retry-after"]
            opened = await http.get("/lenient", headers=alice)
            assert opened.status_code == 200
            assert "ratelimit" not in opened.headers


async def test_the_fastapi_dependency_fields_reach_endpoints_returning_their_own_response(
    client: RedisClient, make_token: Any, http_for: Any
) -> None:
    # FastAPI merges a dependency's Response headers only into responses it builds itself:
    # an endpoint returning a Response object of its own lost the fields.
    app, store = fastapi_app(client)
    exports = RateLimit("3/h", store=store, name="own-response")
    data = RateLimit("3/h", store=store, name="own-data")

    @app.post("/exports", dependencies=[Depends(exports)])
    async def export() -> JSONResponse:
        return JSONResponse({"ok": True}, headers={"RateLimit": "forged"})

    @app.get("/plain", dependencies=[Depends(exports)])
    async def plain() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/data", dependencies=[Depends(data)])
    async def read() -> dict[str, bool]:
        return {"ok": True}

    tight = RateLimit("1/h", store=store, name="own-tight")

    @app.get("/both", dependencies=[Depends(RateLimit("3/h", store=store, name="own-both")),
                                    Depends(tight)])  # fmt: skip
    async def both() -> JSONResponse:
        return JSONResponse({"ok": True})

    http = await http_for(app)
    alice = auth(make_token, "alice")
    answers = [await http.post("/exports", headers=alice) for _ in range(2)]
    answers.append(await http.get("/plain", headers=alice))
    answers.append(await http.post("/exports", headers=alice))
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    for n, r in enumerate(answers):
        assert r.headers.get_list("ratelimit-policy") == ['"3-per-3600s";q=3;w=3600']
        assert r.headers.get_list("ratelimit") == [
            f'"3-per-3600s";r={max(0, 2 - n)};t={1200 * min(n + 1, 3)}'
        ]
    assert answers[2].text == "ok"
    # A FastAPI-built response has each field once (merged by FastAPI, not added twice).
    read_answer = await http.get("/data", headers=alice)
    assert read_answer.headers.get_list("ratelimit") == ['"3-per-3600s";r=2;t=1200']
    assert read_answer.headers.get_list("ratelimit-policy") == ['"3-per-3600s";q=3;w=3600']
    assert "ratelimit" not in (await http.get("/docs")).headers
    # Both limits on the response; a refusal by the second carries its own fields only.
    first = await http.get("/both", headers=alice)
    assert first.headers.get_list("ratelimit") == [
        '"3-per-3600s";r=2;t=1200',
        '"1-per-3600s";r=0;t=3600',
    ]
    refused = await http.get("/both", headers=alice)
    assert refused.status_code == 429
    assert refused.headers.get_list("ratelimit") == ['"1-per-3600s";r=0;t=3600']
    assert refused.headers.get_list("ratelimit-policy") == ['"1-per-3600s";q=1;w=3600']


async def test_decisions_are_traced_and_counted_without_the_identity(
    client: RedisClient, make_token: Any, http_for: Any, telemetry: Telemetry
) -> None:
    def counted() -> dict[tuple[object, object], object]:
        return {
            (a["gateway.ratelimit.rule"], a["gateway.ratelimit.result"]): p.value  # type: ignore[attr-defined]
            for a, p in telemetry.points("gateway.ratelimit.decisions")
        }

    before = counted()
    _, app = gateway_app(client, [RateLimitRule("/limited", "1/60s", name="traced")])
    http = await http_for(app)
    alice = auth(make_token, "secret-subject")
    telemetry.spans.clear()
    assert (await http.get("/limited", headers=alice)).status_code == 200
    assert (await http.get("/limited", headers=alice)).status_code == 429
    assert (await http.get("/free", headers=alice)).status_code == 200
    spans = [s for s in telemetry.spans.get_finished_spans() if s.name == "gateway.ratelimit check"]
    assert [dict(s.attributes or {}) for s in spans] == [
        {"gateway.ratelimit.rule": "traced", "gateway.ratelimit.result": "allowed"},
        {"gateway.ratelimit.rule": "traced", "gateway.ratelimit.result": "limited"},
    ]
    after = counted()
    for result in ("allowed", "limited"):
        key = ("traced", result)
        assert after[key] == before.get(key, 0) + 1  # type: ignore[operator]
    for span in telemetry.spans.get_finished_spans():
        assert "secret-subject" not in str(dict(span.attributes or {}))


async def test_a_token_whose_sub_names_an_api_key_has_a_budget_of_its_own(
    client: RedisClient, http_for: Any, make_token: Any
) -> None:
    secret = "api-key-digest-secret-" + "x" * 16
    key = "ak_live_ci_4f9b2c7e1d8a6035"
    keys = StaticKeys(secret, [(key, KeyRecord("ci", "apikey:ci"))])
    gateway = Gateway(client, jwt=SETTINGS, api_keys=APIKeySettings(lookup=keys, secret=secret))
    app = Starlette(routes=ROUTES, lifespan=gateway.lifespan)
    gateway.install(app, rate_limits=[RateLimitRule("/limited", "1/60s", name="one")])
    http = await http_for(app)
    token, api_key = auth(make_token, "apikey:ci"), {"X-API-Key": key}
    assert (await http.get("/limited", headers=api_key)).status_code == 200
    assert (await http.get("/limited", headers=token)).status_code == 200  # not the key's
    assert (await http.get("/limited", headers=api_key)).status_code == 429
    assert (await http.get("/limited", headers=token)).status_code == 429


async def test_the_starlette_decorator_limits_one_endpoint_and_keeps_its_outage_policy(
    fault_server: EmbeddedRedis, make_token: Any, http_for: Any
) -> None:
    config = RedisConfig(url=fault_server.url, min_idle_conns=1)
    async with RedisClient(config) as client:
        store = RateLimitStore(client)
        runs: list[str] = []

        @rate_limited("3/h", store=store, name="exports")
        async def export(request: Request) -> JSONResponse:
            runs.append("export")
            return JSONResponse({"ok": True}, headers={"RateLimit": "forged"})

        @rate_limited("3/h", store=store, name="exports")  # the same budget
        async def export_again(request: Request) -> PlainTextResponse:
            runs.append("again")
            return PlainTextResponse("ok")

        @rate_limited("1/h", store=store, name="lenient", on_unavailable="open")
        async def lenient(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        gateway = Gateway(client, jwt=SETTINGS)
        routes = [
            Route("/exports", export, methods=["POST"]),
            Route("/exports/again", export_again, methods=["POST"]),
            Route("/lenient", lenient),
            Route("/free", ok),
        ]
        app = Starlette(routes=routes, lifespan=gateway.lifespan)
        gateway.install(app)
        http = await http_for(app)
        alice = auth(make_token, "alice")
        answers = [await http.post("/exports", headers=alice) for _ in range(2)]
        answers += [await http.post("/exports/again", headers=alice) for _ in range(2)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert runs == ["export", "export", "again"]  # a refused request runs nothing
        for n, r in enumerate(answers):
            assert r.headers["ratelimit-policy"] == '"3-per-3600s";q=3;w=3600'
            assert r.headers.get_list("ratelimit") == [
                f'"3-per-3600s";r={max(0, 2 - n)};t={1200 * min(n + 1, 3)}'
            ]
        assert answers[3].headers["retry-after"] == "1200"
        assert answers[3].json()["error"] == "rate_limited"
        assert "ratelimit" not in (await http.get("/free", headers=alice)).headers
        assert (await http.get("/lenient", headers=alice)).status_code == 200
        assert (await http.get("/lenient", headers=alice)).status_code == 429
        fault_server.kill()
        for _ in range(3):
            closed = await http.post("/exports", headers=alice)
            assert closed.status_code == 503
            assert closed.headers["retry-after"]
            opened = await http.get("/lenient", headers=alice)
            assert opened.status_code == 200  # fails open: served, unlimited
            assert "ratelimit" not in opened.headers
        assert runs == ["export", "export", "again"]


async def test_the_decorator_on_fastapi_endpoints_keeps_their_answer_and_adds_the_fields(
    client: RedisClient, make_token: Any, http_for: Any
) -> None:
    # It handed FastAPI a plain ASGI function: FastAPI answered 200 "{}" (the endpoint's
    # Response lost) or 500 (returned data).
    app, store = fastapi_app(client)
    shared = PlainTextResponse("shared")  # the same object every time: never changed

    @app.get("/own")
    @rate_limited("3/h", store=store, name="fastapi-own")
    async def own(request: Request) -> JSONResponse:
        return JSONResponse({"own": True}, headers={"RateLimit": "forged"})

    @app.get("/shared")
    @rate_limited("3/h", store=store, name="fastapi-shared")
    async def same(request: Request) -> PlainTextResponse:
        return shared

    @app.get("/data")
    @rate_limited("3/h", store=store, name="fastapi-data")
    async def data(request: Request) -> dict[str, bool]:
        return {"data": True}

    http = await http_for(app)
    alice = auth(make_token, "alice")
    for path, body in (("/own", '{"own":true}'), ("/shared", "shared"), ("/data", '{"data":true}')):
        answers = [await http.get(path, headers=alice) for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429], path
        assert [r.text for r in answers[:3]] == [body] * 3
        for n, r in enumerate(answers):
            assert r.headers.get_list("ratelimit-policy") == ['"3-per-3600s";q=3;w=3600']
            assert r.headers.get_list("ratelimit") == [
                f'"3-per-3600s";r={max(0, 2 - n)};t={1200 * min(n + 1, 3)}'
            ]
    assert not any(name.startswith(b"ratelimit") for name, _ in shared.raw_headers)


def test_the_decorator_needs_an_async_endpoint_with_a_request(client: RedisClient) -> None:
    limit = rate_limited("1/s", store=RateLimitStore(client), name="x")

    def sync(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def no_request(conn: Request) -> JSONResponse:
        return JSONResponse({})

    for endpoint in (sync, no_request):
        with pytest.raises(TypeError, match="request"):
            limit(endpoint)
    with pytest.raises(ValueError, match="name"):
        rate_limited("1/s", store=RateLimitStore(client), name="no spaces")

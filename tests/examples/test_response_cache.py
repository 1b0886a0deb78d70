"""The example's response cache (issue 16): ``GET /api/cached/{item}`` and its invalidation,
on two in-process gateway instances sharing one Redis (each with its own client, bus, L1
and ``computed`` counter)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx

from examples.gateway import create_app
from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env


def bearer(app: Any, sub: str, roles: tuple[str, ...] = ("user",)) -> dict[str, str]:
    token, _ = app.state.keys.issue(sub, roles)
    return {"Authorization": f"Bearer {token}"}


async def test_cached_item_contract_etag_304_and_invalidation(inprocess_gateway: Any) -> None:
    app, http = await inprocess_gateway()
    bob, alice = bearer(app, "bob"), bearer(app, "alice", ("admin",))
    first = await http.get("/api/cached/42", headers=bob)
    assert first.status_code == 200
    body = first.json()
    assert body["item"] == "42"
    assert body["user"] == "bob"
    assert isinstance(body["computed"], int)
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert not etag.startswith("W/")
    control = first.headers["cache-control"]
    assert control.startswith("private, max-age=")
    assert 0 < int(control.split("=")[1]) <= 30
    again = await http.get("/api/cached/42", headers=bob)
    assert again.json() == body
    assert again.headers["etag"] == etag
    not_modified = await http.get("/api/cached/42", headers={**bob, "If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    other = await http.get("/api/cached/42", headers={**bob, "If-None-Match": '"nope"'})
    assert other.status_code == 200
    # no-cache from the client: recomputed
    fresh = await http.get("/api/cached/42", headers={**bob, "Cache-Control": "no-cache"})
    assert fresh.json()["computed"] > body["computed"]
    # invalidation: needs admin:read
    assert (await http.post("/api/cached/42/invalidate", headers=bob)).status_code == 403
    r = await http.post("/api/cached/42/invalidate", headers=alice)
    assert r.status_code == 200
    assert r.json() == {"invalidated": True}
    after = await http.get("/api/cached/42", headers=bob)
    assert after.json()["computed"] > fresh.json()["computed"]
    assert after.headers["etag"] != etag


async def test_a_token_whose_sub_names_an_api_key_never_gets_that_keys_entry(
    inprocess_gateway: Any,
) -> None:
    """Subjects are unique only within one kind of authentication: a JWT with ``sub`` =
    ``apikey:ci`` (any issuer the gateway trusts may mint one) and the API key ``ci``
    (subject ``apikey:ci``, same role) must not share cache entries, in either order."""
    key = "ci-Hn3kR8wQ1zT6vY9pM2cX5b"
    app, http = await inprocess_gateway(GATEWAY_API_KEYS=f"ci:{key}:user")
    api_key, token = {"X-API-Key": key}, bearer(app, "apikey:ci", ("user",))
    assert (await http.get("/api/me", headers=api_key)).json() == (
        await http.get("/api/me", headers=token)
    ).json()  # the two callers look the same to the app
    for item, (first, second) in enumerate([(api_key, token), (token, api_key)]):
        one = await http.get(f"/api/cached/k{item}", headers=first)
        assert (await http.get(f"/api/cached/k{item}", headers=first)).json() == one.json()
        other = await http.get(f"/api/cached/k{item}", headers=second)
        assert other.status_code == one.status_code == 200
        assert other.json()["computed"] > one.json()["computed"], "served the other's entry"
        assert other.headers["etag"] != one.headers["etag"]


async def test_per_user_responses_never_cross_users(inprocess_gateway: Any) -> None:
    app_a, http_a = await inprocess_gateway()
    _app_b, http_b = await inprocess_gateway()
    users = [f"user{i}" for i in range(25)]
    headers = {u: bearer(app_a, u) for u in users}
    wrong: list[str] = []

    async def ask(http: httpx.AsyncClient, user: str, item: int) -> None:
        r = await http.get(f"/api/cached/{item}", headers=headers[user])
        assert r.status_code == 200
        got = r.json()
        if got["user"] != user or got["item"] != str(item):
            wrong.append(f"{user} asked {item}, got {got}")

    for _ in range(3):
        await asyncio.gather(
            *(
                ask(http, user, item)
                for http in (http_a, http_b)
                for user in users
                for item in range(4)
            )
        )
    assert wrong == []


async def test_invalidation_on_a_is_seen_by_b(inprocess_gateway: Any) -> None:
    app_a, http_a = await inprocess_gateway()
    _app_b, http_b = await inprocess_gateway()
    bob, alice = bearer(app_a, "bob"), bearer(app_a, "alice", ("admin",))
    figures = []
    for round_ in range(5):
        item = f"inv{round_}"
        before = (await http_b.get(f"/api/cached/{item}", headers=bob)).json()
        assert (await http_b.get(f"/api/cached/{item}", headers=bob)).json() == before  # L1
        started = time.perf_counter()
        r = await http_a.post(f"/api/cached/{item}/invalidate", headers=alice)
        assert r.status_code == 200
        sent = time.perf_counter()
        while (await http_b.get(f"/api/cached/{item}", headers=bob)).json() == before:
            assert time.perf_counter() - sent < 2.0, "invalidation not seen by B in 2 s"
            await asyncio.sleep(0.001)
        figures.append((time.perf_counter() - sent) * 1000)
        del started
    print(f"invalidation seen by B after {sorted(figures)} ms (median {sorted(figures)[2]:.1f})")


async def computed(http: httpx.AsyncClient, headers: dict[str, str]) -> int:
    """The instance's ``computed`` counter, read by computing a fresh item (+1)."""
    r = await http.get(f"/api/cached/probe-{uuid.uuid4().hex}", headers=headers)
    assert r.status_code == 200
    value: int = r.json()["computed"]
    return value


def resyncs(app: Any) -> int:
    """How often the instance's invalidation bus regained sync. Each time, the response
    L1 is flushed (invalidations may have been missed), so the next request for a key
    computes again: on a loaded machine the client can miss a liveness check, lose the bus
    and resync while the test runs. Everything else (Redis marked down, the bus out of
    sync) leaves L1 answering."""
    count: int = app.state.bus.resyncs
    return count


async def test_cold_key_under_1000_concurrent_requests_computes_once_per_instance(
    inprocess_gateway: Any,
) -> None:
    app_a, http_a = await inprocess_gateway()
    app_b, http_b = await inprocess_gateway()
    bob = bearer(app_a, "bob")
    # warm the token on both instances (an uncached route)
    assert (await http_a.get("/api/me", headers=bob)).status_code == 200
    assert (await http_b.get("/api/me", headers=bob)).status_code == 200
    synced = resyncs(app_a)
    before = await computed(http_a, bob)
    bodies_a = await asyncio.gather(
        *(http_a.get("/api/cached/cold", headers=bob) for _ in range(1000))
    )
    runs_one = await computed(http_a, bob) - before - 1
    resynced = resyncs(app_a) - synced
    assert {r.status_code for r in bodies_a} == {200}
    assert 1 <= runs_one <= 1 + resynced  # once on A (and once more per resync of its bus)
    assert len({r.content for r in bodies_a}) == runs_one
    # both instances at once on another cold key: at most one computation each
    synced_a, synced_b = resyncs(app_a), resyncs(app_b)
    before_a, before_b = await computed(http_a, bob), await computed(http_b, bob)
    both = await asyncio.gather(
        *(
            http.get("/api/cached/cold2", headers=bob)
            for _ in range(500)
            for http in (http_a, http_b)
        )
    )
    runs_a = await computed(http_a, bob) - before_a - 1
    runs_b = await computed(http_b, bob) - before_b - 1
    resynced_a, resynced_b = resyncs(app_a) - synced_a, resyncs(app_b) - synced_b
    assert {r.status_code for r in both} == {200}
    assert runs_a <= 1 + resynced_a
    assert runs_b <= 1 + resynced_b
    assert runs_a + runs_b >= 1
    assert len({r.content for r in both}) == runs_a + runs_b
    print(
        f"1,000 concurrent requests for a cold key: the endpoint ran {runs_one} time(s) on one "
        f"instance ({resynced} resyncs); on two instances at once: {runs_a} + {runs_b} "
        f"({resynced_a} + {resynced_b} resyncs)"
    )


async def test_redis_down_still_answers(
    redis_server: EmbeddedRedis, fault_server: EmbeddedRedis
) -> None:
    app = create_app(gateway_env(fault_server.url))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        assert await app.state.bus.wait_synced(5)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://t")
        )
        bob, alice = bearer(app, "bob"), bearer(app, "alice", ("admin",))
        known = (await http.get("/api/cached/1", headers=bob)).json()
        fault_server.kill()
        statuses, bodies = [], {}
        for i in range(20):
            r = await http.get(f"/api/cached/{i % 3}", headers=bob)
            statuses.append(r.status_code)
            if r.status_code == 200:
                assert r.json()["user"] == "bob"
                bodies.setdefault(i % 3, set()).add(r.content)
        assert set(statuses) == {200}, statuses
        # served from L1: the entry cached before the outage, and one computation for each
        # of the others, kept in L1 meanwhile
        assert {len(seen) for seen in bodies.values()} == {1}
        assert (await http.get("/api/cached/1", headers=bob)).json() == known
        r = await http.post("/api/cached/1/invalidate", headers=alice)
        assert r.status_code == 503
        fault_server.start()


def test_two_uvicorn_gateways_invalidation_latency(
    launch_gateway: Any, redis_server: EmbeddedRedis
) -> None:
    """Black box: two ``uvicorn examples.gateway:app`` processes; an invalidation on A is
    seen by B well within a generous bound (the figure is printed)."""
    a = launch_gateway(redis_server.url, GATEWAY_COOKIE_SECURE="0")
    b = launch_gateway(redis_server.url, GATEWAY_COOKIE_SECURE="0")
    figures = []
    with (
        httpx.Client(base_url=a, timeout=5) as http_a,
        httpx.Client(base_url=b, timeout=5) as http_b,
    ):
        tokens = {}
        for user in ("alice", "bob"):
            r = http_a.post("/auth/login", json={"username": user, "password": f"{user}-password"})
            assert r.status_code == 200, r.text
            tokens[user] = {"Authorization": f"Bearer {r.json()['access_token']}"}
            http_a.cookies.clear()
        bob, alice = tokens["bob"], tokens["alice"]
        for round_ in range(5):
            path = f"/api/cached/x{round_}"
            first = http_b.get(path, headers=bob)
            assert first.status_code == 200
            assert first.json()["user"] == "bob"
            assert http_b.get(path, headers=bob).json() == first.json()
            r = http_a.post(path + "/invalidate", headers=alice)
            assert r.status_code == 200
            sent = time.perf_counter()
            while http_b.get(path, headers=bob).json() == first.json():
                assert time.perf_counter() - sent < 2.0, "invalidation not seen by B in 2 s"
            figures.append((time.perf_counter() - sent) * 1000)
    figures.sort()
    print(f"two processes: invalidation seen by B after {[round(f, 1) for f in figures]} ms")

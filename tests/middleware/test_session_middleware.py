"""Session middleware: cookies, request.session, saves that never resurrect, L1 coherence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis
from starlette.types import ASGIApp, Message

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.sessions import SessionStore
from middleware import (
    SessionCookie,
    SessionManager,
    SessionMiddleware,
)
from tests.middleware.sessionapp import build, cookie_of

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
Hooks = dict[str, Callable[[], Awaitable[None]]]


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def store(client: RedisClient) -> SessionStore:
    return client.sessions


@pytest.fixture
async def manager(store: SessionStore, bus: InvalidationBus, client: RedisClient) -> SessionManager:
    manager = SessionManager(client=client)
    assert await bus.wait_synced(5)
    return manager


async def test_login_sets_a_host_prefixed_secure_httponly_lax_cookie(
    manager: SessionManager, http_client: HttpFactory
) -> None:
    async with http_client(build(manager)) as http:
        r = await http.post("/login", json={"user": "alice"})
        assert r.status_code == 200
        morsel = cookie_of(r)["__Host-session"]
        assert morsel["path"] == "/"
        assert morsel["secure"] is True
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Lax"
        assert 86_000 < int(morsel["max-age"]) <= 86_400
        assert not morsel["domain"]
        assert r.headers["cache-control"] == "no-store"
        r = await http.get("/show")
        assert r.json()["data"] == {"name": "alice"}
        assert r.json()["user"] == "alice"


def test_cookie_settings_are_validated() -> None:
    assert SessionCookie(secure=False).name == "session"
    assert SessionCookie(domain="example.com").name == "session"
    with pytest.raises(ValueError, match="__Host-"):
        SessionCookie(name="__Host-x", secure=False)
    with pytest.raises(ValueError, match="SameSite"):
        SessionCookie(secure=False, samesite="none")
    with pytest.raises(ValueError, match="token"):
        SessionCookie(name="bad name")


async def test_only_changed_fields_are_saved_and_nested_changes_count(
    manager: SessionManager, store: SessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(manager)) as http:
        await http.post("/login", json={"user": "alice"})
        session_id = http.cookies["__Host-session"]
        # Another writer changes a field this request does not touch: it must survive.
        await store.update(session_id, {"other": 1})
        manager.forget(session_id)
        r = await http.post("/write", json={"theme": "dark"})
        assert r.json()["data"] == {"name": "alice", "other": 1, "theme": "dark"}
        await http.post("/append", params={"item": "apple"})
        await http.post("/append", params={"item": "pear"})
        await http.post("/write", json={"theme": None})
        stored = await store.get(session_id)
        assert dict(stored.metadata) == {"name": "alice", "other": 1, "cart": ["apple", "pear"]}


async def test_forged_or_unknown_ids_are_never_persisted_and_the_cookie_is_cleared(
    manager: SessionManager, http_client: HttpFactory, redis_admin: redis.Redis
) -> None:
    async with http_client(build(manager)) as http:
        forged = "0123456789ab." + "A" * 43
        for value in (forged, "garbage"):
            http.cookies.set("__Host-session", value)
            r = await http.post("/write", json={"x": 1})
            assert r.status_code == 200
            assert cookie_of(r)["__Host-session"]["max-age"] == "0"
            http.cookies.clear()
    assert [k for k in redis_admin.keys("gw:*") if b"session" in k] == []


async def test_regenerate_rotates_the_id_and_keeps_data(
    manager: SessionManager, store: SessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(manager)) as http:
        await http.post("/login", json={"user": "alice"})
        old = http.cookies["__Host-session"]
        r = await http.post("/rotate")
        new = cookie_of(r)["__Host-session"].value
        assert new != old
        http.cookies.clear()
        http.cookies.set("__Host-session", new)
        assert (await http.get("/show")).json()["data"] == {"name": "alice", "elevated": True}
        http.cookies.set("__Host-session", old)
        r = await http.get("/show")
        assert r.json()["user"] is None


async def test_logout_deletes_and_clears_the_cookie(
    manager: SessionManager, store: SessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(manager)) as http:
        await http.post("/login", json={"user": "alice"})
        session_id = http.cookies["__Host-session"]
        r = await http.post("/logout")
        morsel = cookie_of(r)["__Host-session"]
        assert morsel.value == ""
        assert morsel["max-age"] == "0"
        assert "__Host-session" not in http.cookies
        assert await store.get_user_sessions("alice") == []
        http.cookies.set("__Host-session", session_id)
        assert (await http.get("/show")).json()["user"] is None


async def test_a_slow_save_after_a_concurrent_logout_does_not_resurrect(
    manager: SessionManager, store: SessionStore, http_client: HttpFactory
) -> None:
    app = build(manager)
    async with http_client(app) as http:
        await http.post("/login", json={"user": "alice"})
        session_id = http.cookies["__Host-session"]
        entered, release = asyncio.Event(), asyncio.Event()

        async def stall() -> None:
            entered.set()
            await release.wait()

        app.state.hooks["write"] = stall
        slow = asyncio.create_task(http.post("/write", json={"cart": ["stale"]}))
        await entered.wait()
        app.state.hooks.clear()
        assert (await http.post("/logout")).status_code == 200
        release.set()
        r = await slow
        assert r.status_code == 200
        assert cookie_of(r)["__Host-session"]["max-age"] == "0"
    with pytest.raises(KeyError):
        await store.get(session_id)
    assert await store.get_user_sessions("alice") == []


async def test_sliding_refresh_touches_at_most_once_per_interval(
    manager: SessionManager, http_client: HttpFactory
) -> None:
    async with http_client(build(manager, refresh_interval=0.3)) as http:
        await http.post("/login", json={"user": "alice"})
        first = (await http.get("/show")).json()["last"]
        for _ in range(5):
            assert (await http.get("/show")).json()["last"] == first
        await asyncio.sleep(0.35)
        touched = (await http.get("/show")).json()["last"]
        assert touched > first
        assert (await http.get("/show")).json()["last"] == touched


async def test_header_transport_issues_and_reads_the_id(
    manager: SessionManager, http_client: HttpFactory
) -> None:
    app = build(manager, cookie=None, header_name="X-Session-ID")
    async with http_client(app) as http:
        r = await http.post("/login", json={"user": "bob"})
        session_id = r.headers["x-session-id"]
        assert "set-cookie" not in r.headers
        r = await http.get("/show", headers={"X-Session-ID": session_id})
        assert r.json()["user"] == "bob"
        r = await http.post("/logout", headers={"X-Session-ID": session_id})
        assert r.headers["x-session-id"] == ""


async def test_conflicting_cookies_are_not_trusted(
    manager: SessionManager, http_client: HttpFactory
) -> None:
    async with http_client(build(manager)) as http:
        await http.post("/login", json={"user": "alice"})
        real = http.cookies["__Host-session"]
        other = "0123456789ab." + "B" * 43
        headers = {"cookie": f"__Host-session={other}; __Host-session={real}"}
        r = await http.get("/show", headers=headers)
    assert r.json()["user"] is None


@pytest.fixture
async def second_instance(
    redis_config: RedisConfig,
) -> AsyncIterator[SessionManager]:
    async with RedisClient(redis_config) as c2:
        bus2 = c2.invalidation
        assert await bus2.wait_synced(5)
        manager = SessionManager(client=c2)
        assert await bus2.wait_synced(5)
        yield manager


async def test_changes_reach_a_second_instance_l1_within_100_ms(
    manager: SessionManager, second_instance: SessionManager, http_client: HttpFactory
) -> None:
    async with http_client(build(manager)) as http_a, http_client(build(second_instance)) as http_b:
        await http_a.post("/login", json={"user": "alice"})
        http_b.cookies.set("__Host-session", http_a.cookies["__Host-session"])
        for _ in range(2):  # warm B's L1
            assert (await http_b.get("/show")).json()["data"] == {"name": "alice"}
        started = time.perf_counter()
        await http_a.post("/write", json={"theme": "dark"})
        while (await http_b.get("/show")).json()["data"].get("theme") != "dark":
            assert time.perf_counter() - started < 0.1
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        await http_a.post("/logout")
        while (await http_b.get("/show")).json()["user"] is not None:
            assert time.perf_counter() - started < 0.1
            await asyncio.sleep(0.001)
        took = time.perf_counter() - started
    print(f"logout seen by the second instance after {took * 1000:.2f} ms")


async def test_websocket_scope_loads_and_saves_the_session(
    manager: SessionManager, store: SessionStore
) -> None:
    session = await manager.create("carol", {"n": 1})
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["data"] = dict(scope["session"])
        scope["session"]["n"] = 2

    middleware = SessionMiddleware(app, sessions=manager)
    scope = {
        "type": "websocket",
        "path": "/ws",
        "root_path": "",
        "headers": [(b"cookie", f"__Host-session={session.id}".encode())],
    }

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    await middleware(scope, receive, send)
    assert seen["data"] == {"n": 1}
    assert (await store.get(session.id)).metadata["n"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "path", "expected"),
    [
        ({}, "/show", 503),
        ({"on_unavailable": "anonymous"}, "/show", 200),
        ({"on_unavailable": "anonymous", "required_paths": ["/show"]}, "/show", 503),
        ({"optional_paths": ["/open/*"]}, "/open/show", 200),
    ],
)
async def test_redis_outage_policy(
    fault_server: EmbeddedRedis,
    http_client: HttpFactory,
    options: dict[str, Any],
    path: str,
    expected: int,
) -> None:
    config = RedisConfig(url=fault_server.url, probe_interval=0.2, operation_timeout=0.5)
    async with RedisClient(config) as c:
        b = c.invalidation
        assert await b.wait_synced(5)
        manager = SessionManager(client=c)
        async with http_client(build(manager, **options)) as http:
            await http.post("/login", json={"user": "alice"})
            fault_server.kill()
            await _until(lambda: not b.healthy)  # until then L1 rightly serves the session
            r = await http.get(path)
            assert r.status_code == expected
            if expected == 503:
                assert r.headers["retry-after"] == "1"
            else:
                assert r.json()["user"] is None
                assert "set-cookie" not in r.headers  # the cookie is kept for later
            http.cookies.clear()
            assert (await http.get(path)).status_code == 200  # no session ID: no Redis needed


@pytest.mark.slow
async def test_a_save_that_hits_an_outage_becomes_a_503(
    fault_server: EmbeddedRedis, http_client: HttpFactory
) -> None:
    config = RedisConfig(url=fault_server.url, probe_interval=0.2, operation_timeout=0.5)
    async with RedisClient(config) as c:
        b = c.invalidation
        assert await b.wait_synced(5)
        app = build(SessionManager(client=c))
        async with http_client(app) as http:
            await http.post("/login", json={"user": "alice"})

            async def kill() -> None:
                await asyncio.to_thread(fault_server.kill)

            app.state.hooks["write"] = kill
            r = await http.post("/write", json={"x": 1})
            assert r.status_code == 503
            assert r.json()["error"] == "unavailable"


async def test_a_delete_through_the_plain_client_api_reaches_other_instances(
    manager: SessionManager, second_instance: SessionManager, http_client: HttpFactory
) -> None:
    """An admin tool calling ``client.delete_session`` (no manager involved) still ends the
    session on every instance: the manager listens to the client's session changes."""
    async with http_client(build(manager)) as http_a, http_client(build(second_instance)) as http_b:
        await http_a.post("/login", json={"user": "alice"})
        session_id = http_a.cookies["__Host-session"]
        http_b.cookies.set("__Host-session", session_id)
        for _ in range(2):  # warm B's L1
            assert (await http_b.get("/show")).json()["user"] == "alice"
        started = time.perf_counter()
        await manager.store.client.delete_session(session_id)
        while (await http_b.get("/show")).json()["user"] is not None:
            assert time.perf_counter() - started < 0.1
            await asyncio.sleep(0.001)

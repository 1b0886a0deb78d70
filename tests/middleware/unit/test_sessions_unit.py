"""SessionMiddleware and SessionManager(store=...) on the in-memory session store: no Redis."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
import pytest
from starlette.types import ASGIApp

from gateway_redis import SessionNotFound
from middleware import SessionManager
from tests.middleware.sessionapp import build, cookie_of
from tests.twins import ManualClock, MemorySessionStore

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
COOKIE = "__Host-session"
ID_SHAPE = re.compile(r"[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


async def test_login_issues_a_secure_host_cookie_holding_a_store_issued_id(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        r = await http.post("/login", json={"user": "alice"})
        morsel = cookie_of(r)[COOKIE]
        assert ID_SHAPE.fullmatch(morsel.value)
        assert store.ids() == [morsel.value]
        assert morsel["path"] == "/"
        assert morsel["secure"] is True
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Lax"
        assert 86_000 < int(morsel["max-age"]) <= 86_400
        assert r.headers["cache-control"] == "no-store"
        r = await http.get("/show")
    assert r.json()["data"] == {"name": "alice"}
    assert r.json()["user"] == "alice"


async def test_a_warm_session_is_served_from_l1_without_reading_the_store(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        await http.post("/login", json={"user": "alice"})
        reads = store.calls["get"]
        for _ in range(5):
            assert (await http.get("/show")).json()["user"] == "alice"
    assert store.calls["get"] == reads
    assert store.calls["touch"] == 0


async def test_writes_are_merged_so_another_writers_fields_survive(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        await http.post("/login", json={"user": "alice"})
        session_id = http.cookies[COOKIE]
        await store.update(session_id, {"other": 1})  # its event drops the L1 copy
        r = await http.post("/write", json={"theme": "dark"})
        assert r.json()["data"] == {"name": "alice", "other": 1, "theme": "dark"}
        await http.post("/write", json={"theme": None})
    assert dict((await store.get(session_id)).metadata) == {"name": "alice", "other": 1}


async def test_a_request_that_writes_nothing_saves_nothing(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        await http.post("/login", json={"user": "alice"})
        await http.get("/show")
        await http.post("/write", json={})
    assert store.calls["update"] == 0


async def test_logout_deletes_the_session_and_clears_the_cookie(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        await http.post("/login", json={"user": "alice"})
        session_id = http.cookies[COOKIE]
        r = await http.post("/logout")
        morsel = cookie_of(r)[COOKIE]
        assert morsel.value == ""
        assert morsel["max-age"] == "0"
        http.cookies.set(COOKIE, session_id)
        assert (await http.get("/show")).json()["user"] is None
    assert store.ids() == []


async def test_a_slow_save_after_a_concurrent_logout_does_not_resurrect_the_session(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    app = build(sessions)
    async with http_client(app) as http:
        await http.post("/login", json={"user": "alice"})
        session_id = http.cookies[COOKIE]
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
    assert cookie_of(r)[COOKIE]["max-age"] == "0"
    with pytest.raises(SessionNotFound):
        await store.get(session_id)
    assert store.ids() == []


async def test_regenerate_rotates_the_id_keeps_the_data_and_retires_the_old_id(
    sessions: SessionManager, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        await http.post("/login", json={"user": "alice"})
        old = http.cookies[COOKIE]
        new = cookie_of(await http.post("/rotate"))[COOKIE].value
        assert new != old
        assert new[:12] != old[:12]  # nothing links the new ID to the old
        http.cookies.clear()
        http.cookies.set(COOKIE, new)
        assert (await http.get("/show")).json()["data"] == {"name": "alice", "elevated": True}
        http.cookies.set(COOKIE, old)
        assert (await http.get("/show")).json()["user"] is None


@pytest.mark.parametrize("value", ["0123456789ab." + "A" * 43, "garbage"], ids=["forged", "junk"])
async def test_unknown_ids_are_never_stored_and_their_cookie_is_cleared(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory, value: str
) -> None:
    async with http_client(build(sessions)) as http:
        http.cookies.set(COOKIE, value)
        r = await http.post("/write", json={"x": 1})
    assert r.status_code == 200
    assert cookie_of(r)[COOKIE]["max-age"] == "0"
    assert store.ids() == []


async def test_a_session_is_touched_at_most_once_per_refresh_interval(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions, refresh_interval=0.05)) as http:
        await http.post("/login", json={"user": "alice"})
        first = (await http.get("/show")).json()["last"]
        for _ in range(3):
            assert (await http.get("/show")).json()["last"] == first
        assert store.calls["touch"] == 0
        await asyncio.sleep(0.06)
        touched = (await http.get("/show")).json()["last"]
        assert touched > first
        assert (await http.get("/show")).json()["last"] == touched
    assert store.calls["touch"] == 1


@pytest.mark.parametrize(
    ("store_options", "elapsed"),
    [({"default_ttl": 60}, 61), ({"idle_timeout": 30}, 31)],
    ids=["absolute", "idle"],
)
async def test_an_ended_session_is_not_served_from_l1_and_its_cookie_is_cleared(
    http_client: HttpFactory, store_options: dict[str, float], elapsed: float
) -> None:
    clock = ManualClock()
    store = MemorySessionStore(clock=clock, **store_options)
    manager = SessionManager(store=store, clock=clock)
    async with http_client(build(manager)) as http:
        await http.post("/login", json={"user": "alice"})
        assert (await http.get("/show")).json()["user"] == "alice"
        clock.advance(elapsed)
        r = await http.get("/show")
    assert r.json()["user"] is None
    assert cookie_of(r)[COOKIE]["max-age"] == "0"


async def test_log_out_everywhere_from_an_admin_tool_ends_the_cached_sessions(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as laptop, http_client(build(sessions)) as phone:
        await laptop.post("/login", json={"user": "alice"})
        await phone.post("/login", json={"user": "alice"})
        for http in (laptop, phone):
            assert (await http.get("/show")).json()["user"] == "alice"  # in L1
        assert await store.delete_user_sessions("alice") == 2
        for http in (laptop, phone):
            assert (await http.get("/show")).json()["user"] is None
    assert store.events[-1]["op"] == "drop_user"


async def test_an_unavailable_store_answers_503_to_requests_carrying_a_session(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions)) as http:
        await http.post("/login", json={"user": "alice"})
        sessions.forget(http.cookies[COOKIE])
        store.down = True
        r = await http.get("/show")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        http.cookies.clear()
        assert (await http.get("/show")).status_code == 200  # no session ID: no store needed


async def test_anonymous_mode_serves_without_the_session_while_the_store_is_down(
    sessions: SessionManager, store: MemorySessionStore, http_client: HttpFactory
) -> None:
    async with http_client(build(sessions, on_unavailable="anonymous")) as http:
        await http.post("/login", json={"user": "alice"})
        sessions.forget(http.cookies[COOKIE])
        store.down = True
        r = await http.get("/show")
        assert r.status_code == 200
        assert r.json()["user"] is None
        assert "set-cookie" not in r.headers  # the cookie is left alone


def test_a_manager_takes_exactly_one_of_client_and_store(store: MemorySessionStore) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SessionManager()
    with pytest.raises(ValueError, match="exactly one"):
        SessionManager(client=object(), store=store)  # type: ignore[arg-type]
    assert SessionManager(store=store).store is store

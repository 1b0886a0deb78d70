"""What the middleware remembers per request is bounded in bytes as well as entries, and a
value that cannot be valid (a malformed session ID, a token over the size cap) is never
remembered nor looked up (issue 13, items 1-2). Without Redis: the in-memory twins."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway_redis.errors import SessionNotFound
from middleware import (
    JWTAuthenticator,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionCookie,
    SessionManager,
    SessionMiddleware,
    StaticRolePermissions,
    _memo,
)
from middleware.errors import InvalidToken
from tests.twins import MemorySessionStore, MemoryValidator

MiB = 1 << 20
MAX_KEY = 4096  # the longest header value a parse memo keeps
WELL_FORMED = "0123456789ab." + "A" * 42 + "A"  # the shape the store issues; no such session
MALFORMED = (
    "x" * (1 << 20),  # a 1 MiB cookie value
    WELL_FORMED[:-1] + "B",  # the last character cannot end 32 random bytes
    WELL_FORMED + "A",
    "0123456789ab" + "A" * 44,
)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _held(memo: dict[Any, Any], size: Any = lambda k, v: len(k) + len(v)) -> int:
    """The bytes of a memo's keys and values (without the objects' fixed overheads)."""
    return sum(size(k, v) for k, v in memo.items())


def test_a_memo_holds_at_most_its_budget_whatever_the_entries() -> None:
    memo: _memo.Memo[bytes, str] = _memo.Memo()
    for i in range(3000):
        key = b"%06d" % i + b"k" * (MAX_KEY - 6)  # the largest key a memo keeps
        memo.remember(key, "v" * MAX_KEY, len(key), MAX_KEY)
        assert _held(memo.entries) + _memo.ENTRY_OVERHEAD * len(memo) <= _memo.BUDGET
    assert memo.entries
    memo.remember(b"k" * (MAX_KEY + 1), "v", MAX_KEY + 1)
    assert b"k" * (MAX_KEY + 1) not in memo
    small: _memo.Memo[int, int] = _memo.Memo(max_entries=8)
    for i in range(100):
        small.remember(i, i, 1)
        assert len(small) <= 8


async def test_a_malformed_session_id_is_never_remembered_nor_looked_up() -> None:
    store = MemorySessionStore()
    manager = SessionManager(store=store)
    for session_id in MALFORMED:
        assert manager.entry(session_id) is None
        assert manager.pin(session_id) is None
        with pytest.raises(SessionNotFound):
            await manager.get(session_id)
    assert not manager._digests
    assert store.calls["get"] == 0
    with pytest.raises(SessionNotFound):
        await manager.get(WELL_FORMED)  # well formed: the store is asked, the digest kept
    assert store.calls["get"] == 1
    assert list(manager._digests) == [WELL_FORMED]


async def test_a_flood_of_malformed_session_cookies_leaves_nothing_behind() -> None:
    store = MemorySessionStore()
    manager = SessionManager(store=store)
    middleware = SessionMiddleware(_ok, sessions=manager, cookie=SessionCookie())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="https://t"
    ) as http:
        for value in (*MALFORMED, *(f"{i}" * 56 for i in range(10))):
            response = await http.get("/", headers={"cookie": f"__Host-session={value}"})
            assert response.status_code == 200
            # As for an unknown session: the client is told to drop the cookie.
            assert "__Host-session=" in response.headers["set-cookie"]
    assert store.calls["get"] == 0
    assert not middleware._ids
    assert not manager._digests


async def test_well_formed_ids_in_large_cookie_headers_stay_within_the_budget() -> None:
    store = MemorySessionStore()
    manager = SessionManager(store=store)
    middleware = SessionMiddleware(_ok, sessions=manager, cookie=SessionCookie())
    for i in range(2000):
        session_id = f"{i:012x}." + "A" * 42 + "A"
        cookie = f"pad={'p' * (MAX_KEY - 100)}; __Host-session={session_id}".encode()
        assert middleware._read_id({"headers": [(b"cookie", cookie)]}) == session_id
        assert _held(middleware._ids) <= MiB
        assert manager.entry(session_id) is None
        assert _held(manager._digests) <= MiB


async def test_a_token_over_the_cap_is_never_looked_up_and_bad_tokens_cost_a_digest() -> None:
    validator = MemoryValidator()
    authenticator = JWTAuthenticator(validator, client=None, max_token_bytes=8192)

    class Untouchable:
        def get(self, key: Any) -> Any:
            raise AssertionError("looked up")

        stamp = get

    l1 = authenticator._l1
    authenticator._l1 = Untouchable()  # type: ignore[assignment]
    assert authenticator.cached("t" * 8193) is None
    assert authenticator.pin("t" * 8193) is None
    with pytest.raises(InvalidToken, match="too_large"):
        await authenticator.authenticate("t" * (1 << 20))
    authenticator._l1 = l1
    for i in range(50):
        with pytest.raises(InvalidToken):
            await authenticator.authenticate(f"{i:04d}" + "t" * 8000)
    assert validator.calls == 50
    keys = list(authenticator._negative._data)
    assert len(keys) == 50
    assert all(len(k) == 64 for k in keys)
    with pytest.raises(InvalidToken):  # the verdict is remembered
        await authenticator.authenticate("0000" + "t" * 8000)
    assert validator.calls == 50


def test_rule_requirements_of_long_paths_are_not_memoized() -> None:
    cache = PermissionCache(StaticRolePermissions({"admin": ["*"]}), client=None)
    rbac = RBACMiddleware(_ok, permissions=cache, rules=[Rule("/admin/**", "admin:read")])
    for i in range(400):
        assert rbac.required("GET", f"/docs/{i:05d}" + "p" * 60_000) == ()
        assert rbac.required("GET", f"/admin/{i:05d}" + "p" * 60_000) == ("admin:read",)
    assert not rbac._requirements
    for i in range(3000):
        path = f"/docs/{i:05d}" + "p" * 2000
        assert rbac.required("GET", path) == ()
        assert _held(rbac._requirements, lambda k, v: len(k[0]) + len(k[1])) <= MiB
    assert rbac._requirements

"""The hot path's shortcuts give the same answers as the full parses they skip, and every
memo they keep stays bounded."""

from __future__ import annotations

from typing import Any

import pytest

from gateway_redis import RedisClient
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    CallablePermissions,
    NotAuthenticated,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionCookie,
    SessionManager,
    SessionMiddleware,
    _memo,
)
from middleware.jwt.middleware import _extract


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def _reference_read_id(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The session middleware's original cookie parse, kept here as the specification."""
    found: set[str] = set()
    for key, value in headers:
        if key == b"cookie":
            for item in value.decode("latin-1").split(";"):
                k, sep, v = item.strip().partition("=")
                if sep and k == name and v:
                    found.add(v.strip('"'))
    return found.pop() if len(found) == 1 else None


SID = "0123456789ab.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGhIjk"
COOKIE_HEADERS = [
    f"__Host-session={SID}",
    f"a=1; __Host-session={SID}",
    f"a=1;__Host-session={SID}; b=2",
    f"a=1;  __Host-session={SID}",
    f"\t__Host-session={SID}",
    f'__Host-session="{SID}"',
    f"__Host-session={SID} ",
    f"__Host-session= {SID}",
    f"__Host-session={SID};__Host-session={SID}",
    f"__Host-session={SID}; __Host-session=other",
    f"x__Host-session={SID}",
    f"a=__Host-session={SID}",
    f"a=b__Host-session=x; __Host-session={SID}",
    "__Host-session=",
    "__Host-session",
    f"__Host-session ={SID}",
    f"__Host-session={SID}\xa0",
    f"\xa0__Host-session={SID}",
    f"__Host-session={SID[:20]}%20{SID[20:]}",
    f"__Host-session={SID};",
    f";__Host-session={SID}",
    "",
]


@pytest.fixture
async def sessions(client: Any, bus: InvalidationBus) -> SessionManager:
    manager = SessionManager(client=client)
    assert await bus.wait_synced(5)
    return manager


@pytest.mark.parametrize("header", COOKIE_HEADERS)
async def test_cookie_shortcut_agrees_with_the_full_parse(
    header: str, sessions: SessionManager
) -> None:
    middleware = SessionMiddleware(_app, sessions=sessions, cookie=SessionCookie())
    for headers in (
        [(b"cookie", header.encode("latin-1"))],
        [(b"host", b"x"), (b"cookie", header.encode("latin-1")), (b"cookie", b"z=1")],
        [(b"cookie", header.encode("latin-1")), (b"cookie", f"__Host-session={SID}".encode())],
    ):
        expected = _reference_read_id(headers, "__Host-session")
        for _ in range(2):  # the second time from the memo
            assert middleware._read_id({"headers": headers}) == expected, headers


async def test_parse_memos_stay_bounded(sessions: SessionManager, authenticator: Any) -> None:
    middleware = SessionMiddleware(_app, sessions=sessions, cookie=SessionCookie())
    tokens: _memo.Memo[bytes, str] = _memo.Memo()
    for i in range(3 * _memo.MAX_ENTRIES):
        sid = f"{SID[:-6]}{i:06d}"
        assert (
            middleware._read_id({"headers": [(b"cookie", f"__Host-session={sid}".encode())]}) == sid
        )
        scope = {"type": "http", "headers": [(b"authorization", f"Bearer t{i}".encode())]}
        assert _extract(scope, None, True, tokens) == (f"t{i}", False)
        assert len(middleware._ids) <= _memo.MAX_ENTRIES
        assert len(tokens) <= _memo.MAX_ENTRIES
        assert len(sessions._digests) <= 10_000
    huge = b"Bearer " + b"x" * (_memo.MAX_KEY + 1)
    scope = {"type": "http", "headers": [(b"authorization", huge)]}
    assert _extract(scope, None, True, tokens)[0] == huge[7:].decode()
    assert huge not in tokens


def test_bearer_parse_edge_cases() -> None:
    tokens: _memo.Memo[bytes, str] = _memo.Memo()

    def token(*values: bytes) -> Any:
        scope = {"type": "http", "headers": [(b"authorization", v) for v in values]}
        return _extract(scope, None, True, tokens)[0]

    for _ in range(2):  # and again from the memo
        assert token(b"Bearer abc") == "abc"
        assert token(b"bearer   abc  ") == "abc"
        assert token(b"  BEARER abc") == "abc"
        assert token(b"Basic abc") is None
        with pytest.raises(NotAuthenticated):
            token(b"Bearer ")
        with pytest.raises(NotAuthenticated):
            token(b"Bearer abc", b"Bearer abc")


async def test_rule_requirements_are_memoized_and_bounded(
    bus: InvalidationBus, client: RedisClient
) -> None:
    async def lookup(subject: str) -> list[str]:
        return []

    cache = PermissionCache(CallablePermissions(lookup), client=client)
    rbac = RBACMiddleware(
        _app,
        permissions=cache,
        rules=[
            Rule("/orders/{id}", "orders:read", methods=["GET"]),
            Rule("/orders/**", "orders:any"),
            Rule("/orders/{id}", "orders:read"),
        ],
    )
    assert rbac.required("GET", "/orders/1") == ("orders:read", "orders:any")
    assert rbac.required("POST", "/orders/1") == ("orders:any", "orders:read")
    assert rbac.required("GET", "/other") == ()
    for i in range(5000):
        assert rbac.required("GET", f"/orders/{i}/x") == ("orders:any",)
        assert len(rbac._requirements) <= 2048
    empty = RBACMiddleware(_app, permissions=cache)
    assert empty.required("GET", "/orders/1") == ()
    assert not empty._requirements


def test_untouched_session_data_notes_every_kind_of_write() -> None:
    from middleware.sessions.handle import SessionData, _Untouched

    writes = [
        lambda d: d.__setitem__("a", 2),
        lambda d: d.__delitem__("a"),
        lambda d: d.__ior__({"b": 1}),
        lambda d: d.clear(),
        lambda d: d.pop("a"),
        lambda d: d.pop("zz", None),
        lambda d: d.popitem(),
        lambda d: d.setdefault("a", 3),
        lambda d: d.update(b=1),
        lambda d: d.update({"b": 1}),
    ]
    for write in writes:
        data = _Untouched({"a": 1, "s": "x"})
        assert isinstance(data, dict)
        assert data == {"a": 1, "s": "x"}
        write(data)
        assert type(data) is SessionData
    data = _Untouched({"a": 1})
    assert (data["a"], data.get("b"), list(data), dict(data), data.copy()) == (
        1, None, ["a"], {"a": 1}, {"a": 1},
    )  # fmt: skip
    assert type(data) is _Untouched  # reading is not writing


async def test_fused_tickets_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
    authenticator: Any,
    bus: InvalidationBus,
    make_token: Any,
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from middleware import GatewayMiddleware, JWTMiddleware

    monkeypatch.setattr(_memo, "MAX_ENTRIES", 8)

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    gateway = GatewayMiddleware(
        Starlette(routes=[Route("/", ok)]),
        jwt=Middleware(JWTMiddleware, authenticator=authenticator),
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway), base_url="https://t"
    ) as http:
        for i in range(30):
            bearer = {"authorization": f"Bearer {make_token(f'u{i}')}"}
            for _ in range(2):  # the second is a warm one: it leaves a ticket behind
                assert (await http.get("/", headers=bearer)).status_code == 200
            assert len(gateway._tickets) <= 8
    assert gateway._tickets

"""GatewayMiddleware (sessions + JWT + RBAC in one layer) against the three separate ones,
and the security rules of the synchronous L1 fast paths that both use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    CallablePermissions,
    GatewayMiddleware,
    JWTAuthenticator,
    JWTMiddleware,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionManager,
    SessionMiddleware,
    StaticRolePermissions,
    get_claims,
    get_permission_context,
    get_session,
    get_session_handle,
)
from middleware.jwt import JWTValidator

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
COOKIE = "__Host-session"
KINDS = ("separate", "fused")


async def login(request: Request) -> JSONResponse:
    await get_session_handle(request).create(get_claims(request).sub, {"n": 1})
    return JSONResponse({})


async def logout(request: Request) -> JSONResponse:
    await get_session_handle(request).delete()
    return JSONResponse({})


async def show(request: Request) -> JSONResponse:
    session = get_session(request)
    granted = await get_permission_context(request).permissions()
    return JSONResponse(
        {
            "user": request.user.identity if request.user.is_authenticated else None,
            "session": session.user_id if session else None,
            "data": dict(request.session),
            "granted": sorted(granted),
        }
    )


async def write(request: Request) -> JSONResponse:
    request.session.update(await request.json())
    return JSONResponse({})


def build(
    kind: str,
    authenticator: JWTAuthenticator,
    permissions: PermissionCache,
    sessions: SessionManager,
    **options: Any,
) -> Starlette:
    rules = [Rule("/orders/**", "orders:read"), Rule("/admin/**", "admin:read")]
    public = ["/public"]
    if kind == "fused":
        middleware = [
            Middleware(
                GatewayMiddleware,
                sessions=Middleware(SessionMiddleware, sessions=sessions, **options),
                jwt=Middleware(JWTMiddleware, authenticator=authenticator, public_paths=public),
                rbac=Middleware(RBACMiddleware, permissions=permissions, rules=rules),
            )
        ]
    else:
        middleware = [
            Middleware(SessionMiddleware, sessions=sessions, **options),
            Middleware(JWTMiddleware, authenticator=authenticator, public_paths=public),
            Middleware(RBACMiddleware, permissions=permissions, rules=rules),
        ]
    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/write", write, methods=["POST"]),
            Route("/orders/{id}", show),
            Route("/admin/x", show),
            Route("/public", show),
        ],
        middleware=middleware,
    )


def gateway_of(app: Starlette) -> GatewayMiddleware:
    """The GatewayMiddleware instance Starlette built (after the first request)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, GatewayMiddleware):
        layer = layer.app
    return layer


class Orders:
    """A cacheable permission source that counts how often it is asked."""

    def __init__(self, granted: Iterable[str] = ("orders:read",)) -> None:
        self.granted = set(granted)
        self.calls = 0

    async def __call__(self, subject: str) -> list[str]:
        self.calls += 1
        return sorted(self.granted)


@pytest.fixture
async def parts(
    authenticator: JWTAuthenticator, bus: InvalidationBus, client: RedisClient
) -> tuple[JWTAuthenticator, PermissionCache, SessionManager]:
    permissions = PermissionCache(CallablePermissions(Orders()), client=client)
    sessions = SessionManager(client=client)
    assert await bus.wait_synced(5)
    return authenticator, permissions, sessions


def _outcome(response: httpx.Response) -> tuple[Any, ...]:
    cookies = response.headers.get_list("set-cookie")
    body: Any = response.json() if response.content else None
    return (
        response.status_code,
        body,
        response.headers.get("www-authenticate"),
        ["cleared" if "Max-Age=0" in c else "issued" for c in cookies],
    )


async def _script(http: httpx.AsyncClient, token: str, stranger: str) -> list[tuple[Any, ...]]:
    bearer = {"authorization": f"Bearer {token}"}
    steps: list[httpx.Response] = [
        await http.get("/orders/1"),
        await http.get("/orders/1", headers={"authorization": "Bearer not.a.token"}),
        await http.get("/public"),
        await http.get("/public", headers={"authorization": "Bearer not.a.token"}),
        await http.post("/login", headers=bearer),
    ]
    steps += [await http.get("/orders/1", headers=bearer) for _ in range(3)]  # warm
    steps += [
        await http.get("/admin/x", headers=bearer),  # 403 from L1
        await http.get("/orders/1", headers={"authorization": f"bearer {token}"}),
        await http.get("/orders/1", headers=[("authorization", f"Bearer {token}")] * 2),
        await http.post("/write", headers=bearer, json={"n": 2, "tags": ["a"]}),
        await http.get("/orders/2", headers=bearer),
        await http.get("/orders/2", headers={"authorization": f"Bearer {stranger}"}),
    ]
    sid = http.cookies[COOKIE]
    steps.append(
        await http.get(
            "/orders/3", headers={**bearer, "cookie": f"{COOKIE}=forged; {COOKIE}={sid}"}
        )
    )
    steps.append(await http.post("/logout", headers=bearer))
    steps.append(await http.get("/orders/4", headers={**bearer, "cookie": f"{COOKIE}={sid}"}))
    return [_outcome(r) for r in steps]


async def test_fused_middleware_answers_like_the_three_separate_ones(
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    transcripts = {}
    for kind in KINDS:
        async with http_client(build(kind, *parts)) as http:
            transcripts[kind] = await _script(http, make_token("alice"), make_token("bob"))
    assert transcripts["fused"] == transcripts["separate"]
    steps = transcripts["fused"]
    assert [step[0] for step in steps] == [
        401, 401, 200, 200, 200, 200, 200, 200, 403, 200, 401, 200, 200, 200, 200, 200, 200,
    ]  # fmt: skip
    assert steps[4][3] == ["issued"]  # login
    assert steps[12][1]["data"] == {"n": 2, "tags": ["a"]}
    assert steps[13][1]["user"] != steps[12][1]["user"]  # another token, the same session
    assert steps[14][1]["session"] is None  # two different session cookies: neither
    assert steps[15][3] == ["cleared"]  # logout
    assert steps[16][1]["session"] is None
    assert steps[16][3] == ["cleared"]


async def test_warm_requests_are_served_by_the_fused_layer_alone(
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    app = build("fused", *parts)
    bearer = {"authorization": f"Bearer {make_token('carol')}"}
    async with http_client(app) as http:
        await http.post("/login", headers=bearer)
        assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        gateway = gateway_of(app)
        chain, calls = gateway._chain, [0]

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            calls[0] += 1
            await chain(scope, receive, send)

        gateway._chain = counting
        for i in range(5):
            r = await http.get(f"/orders/{i}", headers=bearer)
            assert r.status_code == 200
            assert r.json()["session"] == "carol"
            assert r.json()["granted"] == ["orders:read"]
        assert calls[0] == 0
        assert (await http.get("/orders/1")).status_code == 401  # no token: the chain
        assert (await http.get("/admin/x", headers=bearer)).status_code == 403
        assert calls[0] == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_exp_is_checked_on_every_l1_hit(
    kind: str,
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    authenticator = parts[0]
    # exp is whole seconds: mint just after a second starts, so the token has a full
    # second left for the warm-up requests (minted at x.95 s it had 50 ms: a flake).
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
    token = make_token(ttl=1)
    bearer = {"authorization": f"Bearer {token}"}
    exp = int(time.time()) + 1
    async with http_client(build(kind, *parts)) as http:
        for _ in range(3):
            assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        assert authenticator.cached(token) is not None  # L1 would keep it for 60 s
        await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
        assert authenticator.cached(token) is None
        assert (await http.get("/orders/1", headers=bearer)).status_code == 401


def count_calls(obj: Any, name: str) -> list[int]:
    """Count the calls of ``obj.name`` (an async method), still calling it."""
    original, calls = getattr(obj, name), [0]

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


@pytest.mark.parametrize("kind", KINDS)
async def test_session_expiry_is_checked_on_every_l1_hit(
    kind: str,
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    make_token: Any,
    http_client: HttpFactory,
    bus: InvalidationBus,
    client: RedisClient,
) -> None:
    clock: list[Callable[[], float]] = [time.time]
    sessions = SessionManager(client=client, clock=lambda: clock[0]())
    bearer = {"authorization": f"Bearer {make_token('dora')}"}
    reads = count_calls(sessions.store, "get")
    async with http_client(build(kind, parts[0], parts[1], sessions)) as http:
        await http.post("/login", headers=bearer)
        sid = http.cookies[COOKIE]
        for _ in range(3):
            assert (await http.get("/orders/1", headers=bearer)).json()["session"] == "dora"
        session = sessions.cached(sid)
        assert session is not None
        # Just before the absolute expiry the L1 copy is still served; just after, never.
        clock[0] = lambda: session.expires_at.timestamp() - 1
        assert sessions.cached(sid) is session
        before = reads[0]
        assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        assert reads[0] == before  # from L1
        clock[0] = lambda: session.expires_at.timestamp() + 0.001
        assert sessions.cached(sid) is None
        await http.get("/orders/1", headers=bearer)
        assert reads[0] == before + 1  # asked Redis (where, by the real clock, it lives)


@pytest.mark.parametrize("kind", KINDS)
async def test_sliding_refresh_still_touches_warm_sessions(
    kind: str,
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    sessions = parts[2]
    touches = count_calls(sessions.store, "touch")
    bearer = {"authorization": f"Bearer {make_token('finn')}"}
    async with http_client(build(kind, *parts, refresh_interval=0.3)) as http:
        await http.post("/login", headers=bearer)
        for _ in range(5):
            assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        assert touches[0] == 0
        await asyncio.sleep(0.35)
        for _ in range(5):
            assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        assert touches[0] == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_l1_is_bypassed_while_the_invalidation_channel_is_out_of_sync(
    kind: str,
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    bus: InvalidationBus,
    validator: JWTValidator,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    authenticator, permissions, sessions = parts
    token = make_token("erin")
    bearer = {"authorization": f"Bearer {token}"}
    async with http_client(build(kind, *parts)) as http:
        await http.post("/login", headers=bearer)
        sid = http.cookies[COOKIE]
        assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        claims = await validator.validate(token)
        assert authenticator.cached(token) is not None
        assert permissions.cached(claims) is not None
        assert sessions.cached(sid) is not None
        reads = count_calls(sessions.store, "get")
        gate = asyncio.Event()

        async def held() -> None:
            await gate.wait()

        bus.on_resync(held)  # out of sync at once (L1 flushed), and kept so until the gate opens
        assert not bus.healthy
        assert authenticator.cached(token) is None
        assert permissions.cached(claims) is None
        assert sessions.cached(sid) is None
        # Still served, from Redis every time, and nothing is put back into L1 meanwhile.
        for i in range(3):
            r = await http.get("/orders/1", headers=bearer)
            assert r.status_code == 200
            assert r.json()["session"] == "erin"
            assert reads[0] == i + 1
            assert authenticator.cached(token) is None
            assert sessions.cached(sid) is None
        gate.set()
        assert await bus.wait_synced(5)


@pytest.fixture
async def second(
    redis_config: RedisConfig, validator: JWTValidator
) -> AsyncIterator[tuple[JWTAuthenticator, PermissionCache, SessionManager, Orders]]:
    """The same components on a second instance (own client and invalidation bus)."""
    async with RedisClient(redis_config) as c2:
        bus2 = c2.invalidation
        source = Orders()
        parts = (
            JWTAuthenticator(validator, client=c2),
            PermissionCache(CallablePermissions(source), client=c2),
            SessionManager(client=c2),
        )
        assert await bus2.wait_synced(5)
        yield (*parts, source)


async def _until_status(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], check: Callable[[Any], bool]
) -> float:
    started = time.perf_counter()
    while True:
        r = await http.get(path, headers=headers)
        if check(r):
            return time.perf_counter() - started
        assert time.perf_counter() - started < 0.1, "change not seen in 100 ms"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("kind", KINDS)
async def test_changes_on_another_instance_end_the_fast_path_within_100_ms(
    kind: str,
    parts: tuple[JWTAuthenticator, PermissionCache, SessionManager],
    second: tuple[JWTAuthenticator, PermissionCache, SessionManager, Orders],
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    authenticator, permissions, sessions = parts
    *remote, source = second
    token = make_token("frank")
    bearer = {"authorization": f"Bearer {token}"}
    async with http_client(build(kind, *remote)) as http:  # instance B
        await http.post("/login", headers=bearer)
        for _ in range(2):  # warm B's L1
            assert (await http.get("/orders/1", headers=bearer)).status_code == 200
        # A session delete on instance A: B stops serving the session.
        session = remote[2].cached(http.cookies[COOKIE])
        assert session is not None
        await sessions.delete(session.id)
        await _until_status(http, "/orders/1", bearer, lambda r: r.json()["session"] is None)
        # A policy change on A: B asks its source again and now refuses.
        source.granted = {"other:read"}
        await permissions.bump_policy_version()
        await _until_status(http, "/orders/1", bearer, lambda r: r.status_code == 403)
        source.granted = {"orders:read"}
        await permissions.bump_policy_version()
        await _until_status(http, "/orders/1", bearer, lambda r: r.status_code == 200)
        # A revocation on A: B answers 401.
        await authenticator.revoke(token)
        took = await _until_status(http, "/orders/1", bearer, lambda r: r.status_code == 401)
    print(f"{kind}: revocation seen by the second instance after {took * 1000:.2f} ms")


async def test_static_role_permissions_are_answered_without_await_or_cache(
    authenticator: JWTAuthenticator,
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    validator: JWTValidator,
    http_client: HttpFactory,
) -> None:
    source = StaticRolePermissions({"user": ["orders:read"], "admin": ["*"]})
    permissions = PermissionCache(source, client=client)
    sessions = SessionManager(client=client)
    assert await bus.wait_synced(5)
    user, admin = make_token("gina"), make_token("hal", roles=["admin", "user"])
    for token, granted in ((user, {"orders:read"}), (admin, {"*", "orders:read"})):
        claims = await validator.validate(token)
        assert permissions.cached(claims) == granted
        assert await source.permissions(claims) == granted
    for kind in KINDS:
        async with http_client(build(kind, authenticator, permissions, sessions)) as http:
            for token, admin_status in ((user, 403), (admin, 200)):
                bearer = {"authorization": f"Bearer {token}"}
                assert (await http.get("/orders/1", headers=bearer)).status_code == 200
                assert (await http.get("/admin/x", headers=bearer)).status_code == admin_status


def test_fused_middleware_checks_its_arguments(
    authenticator: JWTAuthenticator,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    jwt = Middleware(JWTMiddleware, authenticator=authenticator)
    with pytest.raises(ValueError, match="permissions"):
        GatewayMiddleware(
            app,
            jwt=jwt,
            rbac=Middleware(RBACMiddleware, permissions=None, rules=[Rule("/x", "x:read")]),
        )
    with pytest.raises(ValueError, match="authenticator"):
        GatewayMiddleware(app, jwt=Middleware(JWTMiddleware, authenticator=object()))
    GatewayMiddleware(app, jwt=jwt)  # JWT alone is a valid stack

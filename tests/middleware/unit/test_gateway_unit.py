"""GatewayMiddleware on the twins: the fused layer answers exactly as the three separate
layers do, request for request, and serves warm requests without the chain. No Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from middleware import (
    GatewayMiddleware,
    JWTAuthenticator,
    JWTMiddleware,
    PermissionCache,
    RBACMiddleware,
    Rule,
    SessionManager,
    SessionMiddleware,
    get_claims,
    get_permission_context,
    get_session,
    get_session_handle,
)
from tests.twins import MemoryPermissions, MemorySessionStore, MemoryValidator

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]
COOKIE = "__Host-session"
RULES = [Rule("/orders/**", "orders:read", methods=("GET",)), Rule("/admin/**", "admin:read")]


async def login(request: Request) -> JSONResponse:
    await get_session_handle(request).create(get_claims(request).sub, {"n": 1})
    return JSONResponse({})


async def logout(request: Request) -> JSONResponse:
    await get_session_handle(request).delete()
    return JSONResponse({})


async def show(request: Request) -> JSONResponse:
    session = get_session(request)
    granted = await get_permission_context(request).permissions()
    if request.method == "POST":
        request.session["n"] = request.session.get("n", 0) + 1
    return JSONResponse(
        {
            "user": request.user.identity if request.user.is_authenticated else None,
            "session": session.user_id if session else None,
            "data": dict(request.session),
            "granted": sorted(granted),
        }
    )


class CountingJWT(JWTMiddleware):
    """JWTMiddleware that counts the requests reaching it (the chain's, in the fused layer)."""

    def __init__(self, app: ASGIApp, *, calls: list[str], **options: Any) -> None:
        super().__init__(app, **options)
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope["path"])
        await super().__call__(scope, receive, send)


class Stack:
    """One set of twins and components, and an app of the given kind over them."""

    def __init__(self, kind: str) -> None:
        self.tokens = MemoryValidator()
        self.source = MemoryPermissions({"user": ["orders:read"], "admin": ["*"]})
        self.store = MemorySessionStore()
        self.authenticator = JWTAuthenticator(self.tokens, client=None)
        self.permissions = PermissionCache(self.source, client=None)
        self.sessions = SessionManager(store=self.store)
        self.chain_calls: list[str] = []
        sessions = Middleware(SessionMiddleware, sessions=self.sessions)
        jwt = Middleware(
            CountingJWT,
            calls=self.chain_calls,
            authenticator=self.authenticator,
            public_paths=["/public"],
        )
        rbac = Middleware(RBACMiddleware, permissions=self.permissions, rules=RULES)
        layers = (
            [Middleware(GatewayMiddleware, sessions=sessions, jwt=jwt, rbac=rbac)]
            if kind == "fused"
            else [sessions, jwt, rbac]
        )
        paths = ["/orders/{id}", "/admin/panel", "/public", "/login", "/logout"]
        endpoints = {"/login": login, "/logout": logout}
        self.app = Starlette(
            routes=[Route(p, endpoints.get(p, show), methods=["GET", "POST"]) for p in paths],
            middleware=layers,
        )


Step = Callable[[httpx.AsyncClient, Stack, dict[str, str]], Awaitable[httpx.Response]]


def get(path: str, token: str | None = "alice", method: str = "GET") -> Step:
    async def step(http: httpx.AsyncClient, stack: Stack, issued: dict[str, str]) -> Any:
        headers = {"Authorization": f"Bearer {issued[token]}"} if token else {}
        return await http.request(method, path, headers=headers)

    return step


def revoke(token: str) -> Step:
    async def step(http: httpx.AsyncClient, stack: Stack, issued: dict[str, str]) -> Any:
        await stack.authenticator.revoke(issued[token])
        return await get("/orders/1", token)(http, stack, issued)

    return step


def withdraw_admin() -> Step:
    async def step(http: httpx.AsyncClient, stack: Stack, issued: dict[str, str]) -> Any:
        stack.source.roles["admin"] = frozenset({"orders:read"})
        await stack.permissions.bump_policy_version()
        return await get("/admin/panel", "root")(http, stack, issued)

    return step


SCRIPT: list[Step] = [
    get("/orders/1", None),  # 401: no token
    get("/public", None),  # anonymous on a public path
    get("/orders/1"),  # cold: every layer asks its twin
    get("/orders/1"),  # warm
    get("/orders/1", method="HEAD"),  # a GET rule covers HEAD
    get("/admin/panel"),  # 403
    get("/login", method="POST"),  # session issued
    get("/orders/1"),
    get("/orders/1"),  # warm, with the session
    get("/orders/2", method="POST"),  # no rule for POST: allowed; writes the session
    get("/orders/2"),
    get("/admin/panel", "root"),
    get("/admin/panel", "root"),
    withdraw_admin(),  # 403 after the policy bump
    get("/orders/1", "bogus"),  # 401: unknown token
    get("/logout", method="POST"),  # cookie cleared
    get("/orders/1"),
    revoke("alice"),  # 401 at once
]


def outcome(response: httpx.Response) -> tuple[Any, ...]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    cookie = jar[COOKIE]["max-age"] if COOKIE in jar else None
    issued = cookie not in (None, "0")
    body = response.content if response.request.method != "HEAD" else b""
    return (
        response.status_code,
        body,
        issued,
        cookie == "0",
        response.headers.get("www-authenticate"),
        response.headers.get("retry-after"),
    )


async def run(kind: str, http_client: HttpFactory) -> tuple[list[tuple[Any, ...]], Stack]:
    stack = Stack(kind)
    issued = {
        "alice": stack.tokens.issue("alice", roles=["user"]),
        "root": stack.tokens.issue("root", roles=["admin"]),
        "bogus": "never-issued",
    }
    outcomes = []
    async with http_client(stack.app) as http:
        for step in SCRIPT:
            outcomes.append(outcome(await step(http, stack, issued)))
    return outcomes, stack


async def test_the_fused_layer_answers_every_request_as_the_separate_layers_do(
    http_client: HttpFactory,
) -> None:
    separate, _ = await run("separate", http_client)
    fused, _ = await run("fused", http_client)
    for number, (expected, got) in enumerate(zip(separate, fused, strict=True)):
        assert got == expected, f"step {number}"
    statuses = [o[0] for o in separate]
    assert statuses[:14] == [401, 200, 200, 200, 200, 403, 200, 200, 200, 200, 200, 200, 200, 403]
    assert statuses[14:] == [401, 200, 200, 401]


async def test_the_fused_layer_serves_warm_requests_without_the_chain(
    http_client: HttpFactory,
) -> None:
    _, separate = await run("separate", http_client)
    _, fused = await run("fused", http_client)
    assert len(separate.chain_calls) == len(SCRIPT)  # one request per step
    # Warm steps (token, permissions and any session all in L1, allowed): 3, 4, 6-10, 12.
    assert len(fused.chain_calls) == len(SCRIPT) - 8
    # The twins were asked the same number of times either way.
    assert fused.tokens.calls == separate.tokens.calls
    assert fused.source.calls == separate.source.calls
    assert fused.store.calls == separate.store.calls

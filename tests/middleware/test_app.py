"""The composition root, :class:`middleware.Gateway`: the README's quick start end to end,
lifespan order and ownership, install rules, and the WebSocket path's authentication."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.types import Message

from gateway_redis import ClientState, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.sessions import SessionStore
from middleware import (
    ChannelPolicy,
    ChannelRule,
    CSRFMiddleware,
    Gateway,
    GatewayMiddleware,
    JWTMiddleware,
    JWTSettings,
    RBACMiddleware,
    Rule,
    SessionMiddleware,
    SessionSettings,
    WebSocketSettings,
)
from tests.middleware.conftest import AUDIENCE, ISSUER, SECRET
from tests.websocket.wsutil import closed_with, next_message, serve_app, subscribe

ROOT = Path(__file__).resolve().parents[2]
QUICK_START_HEADING = "## Quick start: FastAPI"
POLICY = ChannelPolicy([ChannelRule("notifications:{sub}", subscribe=True)])
SETTINGS = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)


def quick_start_source() -> str:
    """The first ``python`` block of the README's quick start section, verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert QUICK_START_HEADING in readme, "the README lost its quick start section"
    section = readme.split(QUICK_START_HEADING, 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the quick start section has no python block"
    return found.group(1)


def token(secret: str, sub: str, roles: list[str], *, iss: str, aud: str) -> str:
    now = int(time.time())
    claims = {"sub": sub, "roles": roles, "iss": iss, "aud": aud, "iat": now,
              "exp": now + 300, "jti": uuid.uuid4().hex}  # fmt: skip
    return jwt.encode(claims, secret, algorithm="HS256")


async def test_readme_quick_start_serves_jwt_rbac_sessions_and_websocket(
    redis_server: EmbeddedRedis, redis_admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "quick-start-secret-0123456789-abcdefghijkl"
    for name in ("REDIS_HOST", "REDIS_PORT", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("JWT_SECRET", secret)
    namespace: dict[str, Any] = {"__name__": "readme_quick_start"}
    exec(compile(quick_start_source(), "README.md (quick start)", "exec"), namespace)
    app, gateway = namespace["app"], namespace["gateway"]
    assert isinstance(app, FastAPI)
    assert isinstance(gateway, Gateway)

    def mint(sub: str, *roles: str) -> str:
        return token(secret, sub, list(roles), iss="https://id.example", aud="my-api")

    alice, bob = mint("alice", "admin"), mint("bob", "user")
    async with serve_app(app) as served, httpx.AsyncClient(base_url=served.http) as http:
        assert await gateway.bus.wait_synced(5)
        assert (await http.post("/me")).status_code == 401  # JWT
        headers = {"Authorization": f"Bearer {bob}"}
        assert (await http.get("/admin/users", headers=headers)).status_code == 403  # RBAC
        admin = await http.get("/admin/users", headers={"Authorization": f"Bearer {alice}"})
        assert admin.status_code == 404  # allowed by the rule; no such route
        first = await http.post("/me", headers=headers)  # a session is created
        assert first.status_code == 200
        assert first.json() == {"sub": "bob", "session": {"roles": ["user"]}}
        cookie = first.headers["set-cookie"].split(";", 1)[0]
        assert cookie.startswith("__Host-session=")
        again = await http.post("/me", headers={**headers, "Cookie": cookie})
        assert again.json()["session"] == {"roles": ["user"]}
        assert "set-cookie" not in again.headers  # the same session, found from its cookie

        by_token = await served.connect(bob)  # /ws: not in public_paths, served anyway
        by_cookie = await served.connect(cookie=cookie)  # the session cookie alone
        for ws in (by_token, by_cookie):
            await subscribe(ws, "notifications:bob")
        assert await gateway.client.publish("notifications:bob", {"n": 1}) >= 1
        for ws in (by_token, by_cookie):
            message = await next_message(ws)
            assert message["channel"] == "notifications:bob"
            assert message["data"] == {"n": 1}
        await by_token.close()
    # Closed by the server's shutdown (uvicorn's 1012) or the bridge's (1001).
    assert await closed_with(by_cookie, 5) in (1001, 1012)
    assert gateway.client.state is ClientState.CLOSED  # built from a RedisConfig: owned


class Socket:
    """One WebSocket handshake driven in process (ASGI messages, no server), so the close
    code of a refusal and the moment each message is sent are visible."""

    def __init__(self, app: Starlette, headers: list[tuple[bytes, bytes]]) -> None:
        self.scope: dict[str, Any] = {
            "type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws",
            "http_version": "1.1", "path": "/ws", "raw_path": b"/ws", "root_path": "",
            "query_string": b"", "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "subprotocols": [],
        }  # fmt: skip
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: asyncio.Queue[Message] = asyncio.Queue()
        self.on_send: list[Any] = []
        self.task: asyncio.Task[None] | None = None

    async def _send(self, message: Message) -> None:
        for hook in self.on_send:
            hook(message)
        await self.sent.put(message)

    async def start(self) -> Message:
        """Connect; the server's first message (accept or close)."""
        await self.inbox.put({"type": "websocket.connect"})
        self.task = asyncio.get_running_loop().create_task(
            self.app(self.scope, self.inbox.get, self._send)
        )
        return await asyncio.wait_for(self.sent.get(), 5)

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.inbox.put({"type": "websocket.receive", "text": json.dumps(frame)})
        message = await asyncio.wait_for(self.sent.get(), 5)
        reply: dict[str, Any] = json.loads(message["text"])
        return reply

    async def finish(self) -> None:
        await self.inbox.put({"type": "websocket.disconnect", "code": 1000})
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)


def bearer(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {value}".encode())]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layers"])
async def test_the_ws_path_is_public_to_jwt_but_the_bridge_refuses_no_credentials(
    client: RedisClient, make_token: Any, fused: bool
) -> None:
    gateway = Gateway(client, jwt=SETTINGS, permissions={"user": ["a:read"]}, websocket=POLICY)
    app = Starlette(lifespan=gateway.lifespan)
    gateway.install(app, rules=[Rule("/api/**", "a:read")], fused=fused)
    layer = GatewayMiddleware if fused else JWTMiddleware
    assert app.user_middleware[1].cls is layer  # [0]: the WebSocket handoff
    async with app.router.lifespan_context(app):
        anonymous = Socket(app, [])
        assert await anonymous.start() == {"type": "websocket.close", "code": 1008}
        bad = Socket(app, bearer("not-a-token"))
        assert (await bad.start())["code"] == 1008  # a token presented and refused
        good = Socket(app, bearer(make_token("u1")))
        assert (await good.start())["type"] == "websocket.accept"
        reply = await good.request({"type": "subscribe", "channels": ["notifications:u1"]})
        assert reply["type"] == "subscribed"
        await good.finish()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://testserver"
        ) as http:
            assert (await http.get("/api/x")).status_code == 401  # not public: the JWT layer
            # Public to JWT (no 401); a WebSocket route, so HTTP finds nothing there.
            assert (await http.get("/ws")).status_code == 404


async def test_lifespan_closes_the_bridge_before_the_client_and_keeps_a_given_client(
    client: RedisClient, make_token: Any
) -> None:
    gateway = Gateway(client, jwt=SETTINGS, websocket=POLICY)
    states: list[ClientState] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:  # the app's own, composed
        async with gateway.lifespan(app):
            yield
        states.append(client.state)

    app = FastAPI(lifespan=lifespan)
    gateway.install(app)
    async with app.router.lifespan_context(app):
        assert await gateway.bus.wait_synced(5)
        socket = Socket(app, bearer(make_token("u1")))
        socket.on_send.append(
            lambda m: states.append(client.state) if m["type"] == "websocket.close" else None
        )
        assert (await socket.start())["type"] == "websocket.accept"
    close = await asyncio.wait_for(socket.sent.get(), 5)
    assert close == {"type": "websocket.close", "code": 1001, "reason": "server shutting down"}
    # The 1001 went out while the client was connected; after the lifespan it still is.
    assert states == [ClientState.CONNECTED, ClientState.CONNECTED]
    # The bus is the client's: it runs until the client (the caller's) is closed.
    assert gateway.bus.healthy
    await socket.finish()
    await client.ping()  # still open: the caller's to close
    with pytest.raises(RuntimeError, match="one lifespan"):
        async with gateway.lifespan(app):
            pass


async def test_a_gateway_built_from_a_config_closes_its_client_after_the_bridge(
    redis_config: RedisConfig, make_token: Any
) -> None:
    gateway = Gateway(redis_config, jwt=SETTINGS, websocket=POLICY)
    app = Starlette(lifespan=gateway.lifespan)
    gateway.install(app)
    closing: list[ClientState] = []
    async with app.router.lifespan_context(app):
        assert gateway.client.state is ClientState.CONNECTED
        socket = Socket(app, bearer(make_token("u1")))
        socket.on_send.append(
            lambda m: (
                closing.append(gateway.client.state) if m["type"] == "websocket.close" else None
            )
        )
        assert (await socket.start())["type"] == "websocket.accept"
    assert closing == [ClientState.CONNECTED]
    assert gateway.client.state is ClientState.CLOSED
    await socket.finish()


async def test_install_twice_or_after_serving_raises(client: RedisClient) -> None:
    gateway = Gateway(client, jwt=SETTINGS)
    app = Starlette()
    gateway.install(app, public_paths=["/health"])
    with pytest.raises(RuntimeError, match="already"):
        gateway.install(app)
    late = Starlette()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=late), base_url="http://t") as h:
        await h.get("/")  # the app has served: its middleware stack is built
    with pytest.raises(RuntimeError, match="before the app serves"):
        Gateway(client, jwt=SETTINGS).install(late)


async def test_install_adds_only_the_configured_layers(client: RedisClient) -> None:
    cookie_only = SessionSettings(on_unavailable="anonymous", required_paths=("/auth/*",))
    gateway = Gateway(client, jwt=SETTINGS, permissions={"admin": ["*"]}, sessions=cookie_only)
    app = Starlette()
    gateway.install(app, fused=False)
    layers = [m.cls for m in app.user_middleware]
    # CSRF is on by default where a cookie carries credentials, innermost (after sessions).
    assert layers == [SessionMiddleware, JWTMiddleware, RBACMiddleware, CSRFMiddleware]
    assert app.user_middleware[-1].kwargs["cookie_names"] == ["__Host-session"]
    off = Starlette()
    Gateway(client, jwt=SETTINGS, sessions=cookie_only).install(off, csrf=None)
    assert [m.cls for m in off.user_middleware] == [GatewayMiddleware]
    with pytest.raises(ValueError, match="csrf must be"):
        Gateway(client, jwt=SETTINGS, sessions=cookie_only).install(Starlette(), csrf={})  # type: ignore[arg-type]
    assert [r.path for r in app.routes] == []  # no channel policy: no WebSocket endpoint
    jwt_only = Gateway(client, jwt=SETTINGS)
    assert jwt_only.permissions is None
    assert jwt_only.sessions is None
    assert jwt_only.bridge is None
    fused = Starlette()
    jwt_only.install(fused)
    spec = fused.user_middleware[0]
    assert spec.cls is GatewayMiddleware
    assert spec.kwargs["rbac"] is None
    assert spec.kwargs["sessions"] is None


def settings_of(settings: SessionSettings) -> dict[str, Any]:
    names = ("default_ttl", "idle_timeout", "max_per_user", "tag_key")
    return {name: getattr(settings, name) for name in names}


async def test_session_settings_reach_the_clients_store(client: RedisClient) -> None:
    key = "k3y-" * 8
    settings = SessionSettings(default_ttl=600, idle_timeout=60, max_per_user=7, tag_key=key)
    assert key not in repr(settings)
    Gateway(client, jwt=SETTINGS, sessions=settings)
    assert client.sessions.settings[:3] == (600, 60, 7)
    assert client.sessions.settings == SessionStore(client, **settings_of(settings)).settings
    assert (
        client.sessions.settings
        != SessionStore(client, default_ttl=600, idle_timeout=60, max_per_user=7).settings
    )  # no key
    assert SessionSettings().max_per_user == SessionStore(client).max_per_user == 100


BAD_ARGUMENTS: list[tuple[Any, str]] = [
    (lambda c: Gateway("redis://x", jwt=SETTINGS), "RedisClient or a RedisConfig"),
    (lambda c: Gateway(c, jwt="secret"), "JWTSettings or a TokenValidator"),
    (lambda c: Gateway(c, jwt=SETTINGS, permissions=["admin"]), "PermissionSource"),
    (lambda c: Gateway(c, jwt=SETTINGS, permissions={"r": "p:read"}), "roles must map"),
    (lambda c: Gateway(c, jwt=SETTINGS, sessions={"ttl": 1}), "SessionSettings"),
    (lambda c: Gateway(c, jwt=SETTINGS, websocket="*"), "ChannelPolicy"),
    (lambda c: SessionSettings(default_ttl=0), "default_ttl"),
    (lambda c: SessionSettings(max_per_user=0), "max_per_user"),
    (lambda c: SessionSettings(max_per_user=True), "max_per_user"),
    (lambda c: SessionSettings(tag_key="short"), "tag_key must be at least 32 bytes"),
    (lambda c: SessionSettings(tag_key=32), "tag_key must be str or bytes"),
    (lambda c: SessionSettings(cookie=None), "cookie, a header_name or both"),
    (lambda c: SessionSettings(required_paths="/auth/*"), "not one string"),
    (lambda c: SessionSettings(on_unavailable="ignore"), "on_unavailable"),
    (lambda c: WebSocketSettings(policy=POLICY, allowed_origins="https://a"), "one string"),
    (
        lambda c: Gateway(
            c, jwt=SETTINGS, websocket=WebSocketSettings(policy=POLICY, allowed_origins=("x",))
        ),
        "not an origin",
    ),
]


@pytest.mark.parametrize(("build", "match"), BAD_ARGUMENTS)
async def test_bad_arguments_raise_value_error(client: RedisClient, build: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(client)


async def test_install_validates_its_arguments(client: RedisClient) -> None:
    gateway = Gateway(client, jwt=SETTINGS, websocket=POLICY)
    with pytest.raises(ValueError, match="rules need a permission source"):
        gateway.install(Starlette(), rules=[Rule("/a", "a:read")])
    with pytest.raises(ValueError, match="not one string"):
        gateway.install(Starlette(), public_paths="/health")
    with pytest.raises(ValueError, match="websocket_path"):
        gateway.install(Starlette(), websocket_path="ws")
    app = Starlette()
    gateway.install(app, websocket_path="/live")  # the failed calls installed nothing
    assert [r.path for r in app.routes] == ["/live"]

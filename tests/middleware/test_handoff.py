"""The WebSocket handoff (``middleware._handoff``): the Gateway's layers check a handshake
and return; the bridge then runs without their coroutines suspended under it, for the
socket's whole life. Refusals, session saves, middleware installed before the Gateway and
routes that win over the bridge's keep working as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway_redis import RedisClient
from middleware import Gateway, Rule, SessionMiddleware, SessionSettings
from middleware._handoff import HandoffPoint, HandoffTail, WebSocketHandoff
from tests.middleware.test_app import POLICY, SETTINGS, Socket, bearer

# Coroutines that must not stay suspended under a socket's bridge.
LAYERS = (
    "GatewayMiddleware", "SessionMiddleware", "JWTMiddleware", "RBACMiddleware",
    "CSRFMiddleware", "ExceptionMiddleware", "Router", "WebSocketRoute",
)  # fmt: skip
SESSIONS = SessionSettings(on_unavailable="anonymous", required_paths=("/auth/*",))


def chain(task: asyncio.Task[Any] | None) -> list[str]:
    """The qualified names of the coroutines ``task`` is suspended in, outermost first."""
    assert task is not None
    names: list[str] = []
    step: Any = task.get_coro()
    while step is not None and len(names) < 80:
        code = getattr(step, "cr_code", None)
        names.append(step.__qualname__ if code is not None else type(step).__qualname__)
        step = getattr(step, "cr_await", None)
    return names


def gateway_app(client: RedisClient, fused: bool, before: ASGIApp | None = None) -> Starlette:
    gateway = Gateway(
        client, jwt=SETTINGS, permissions={"user": ["a:read"]}, sessions=SESSIONS,
        websocket=POLICY,
    )  # fmt: skip
    app = Starlette(lifespan=gateway.lifespan)
    app.state.gateway = gateway
    if before is not None:
        app.add_middleware(Recorder, seen=before)
    gateway.install(app, rules=[Rule("/api/**", "a:read")], fused=fused)
    return app


class Recorder:
    """An application's own middleware: records the scope types it sees."""

    def __init__(self, app: ASGIApp, seen: Any) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope["type"])
        await self.app(scope, receive, send)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layers"])
async def test_a_bridge_socket_keeps_no_layer_suspended(
    client: RedisClient, make_token: Any, fused: bool
) -> None:
    app = gateway_app(client, fused)
    specs = [m.cls for m in app.user_middleware]
    assert (specs[0], specs[-1]) == (WebSocketHandoff, HandoffTail)  # around all our layers
    async with app.router.lifespan_context(app):
        socket = Socket(app, bearer(make_token("u1")))
        assert (await socket.start())["type"] == "websocket.accept"
        reply = await socket.request({"type": "subscribe", "channels": ["notifications:u1"]})
        assert reply["type"] == "subscribed"
        names = chain(socket.task)
        assert "WebSocketBridge.__call__" in names
        assert [n for n in names if n.split(".")[0] in LAYERS] == [], names
        # The layers did their work: the token's claims, the RBAC context, the session.
        for key in ("gateway.claims", "gateway.permissions", "gateway.session"):
            assert key in socket.scope
        assert not {"gateway.handoff", "endpoint", "router"} & set(socket.scope)  # kept small
        assert socket.scope["headers"] == []  # read at the handshake; the server keeps the scope
        await socket.finish()
        refused = Socket(app, bearer("not-a-token"))  # the JWT layer's refusal, as before
        assert (await refused.start())["code"] == 1008
        await refused.finish()


async def test_the_session_layer_saves_when_the_socket_ends(
    client: RedisClient, make_token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[str] = []

    async def save_quietly(self: SessionMiddleware, handle: Any) -> None:
        saved.append("saved")

    monkeypatch.setattr(SessionMiddleware, "_save_quietly", save_quietly)
    app = gateway_app(client, fused=False)
    async with app.router.lifespan_context(app):
        socket = Socket(app, bearer(make_token("u1")))
        assert (await socket.start())["type"] == "websocket.accept"
        assert (await socket.request({"type": "ping", "id": 1}))["type"] == "pong"
        assert saved == []  # not at the handoff: when the socket ends
        await socket.finish()
        assert saved == ["saved"]
        anonymous = Socket(app, [])  # refused by the bridge: saved once all the same
        assert (await anonymous.start())["code"] == 1008
        await anonymous.finish()
        assert saved == ["saved", "saved"]


async def test_middleware_installed_before_the_gateway_still_sees_the_socket(
    client: RedisClient, make_token: Any
) -> None:
    seen: list[str] = []
    app = gateway_app(client, fused=True, before=seen)
    async with app.router.lifespan_context(app):
        socket = Socket(app, bearer(make_token("u1")))
        assert (await socket.start())["type"] == "websocket.accept"
        assert seen == ["websocket"]
        names = chain(socket.task)
        assert "Recorder.__call__" in names  # resumed through the rest of the application
        assert "GatewayMiddleware.__call__" not in names
        await socket.finish()


async def test_a_route_defined_before_the_bridges_still_wins(
    client: RedisClient, make_token: Any
) -> None:
    gateway = Gateway(client, jwt=SETTINGS, websocket=POLICY)
    app = Starlette(lifespan=gateway.lifespan)

    async def mine(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("mine")
        await websocket.close()

    app.router.routes.append(WebSocketRoute("/ws", mine))
    gateway.install(app)
    async with app.router.lifespan_context(app):
        socket = Socket(app, bearer(make_token("u1")))
        assert (await socket.start())["type"] == "websocket.accept"
        assert (await asyncio.wait_for(socket.sent.get(), 5))["text"] == "mine"
        await socket.finish()


def test_the_layers_are_asgi3_for_asgiref() -> None:
    # OpenTelemetry's ASGI middleware wraps its app with asgiref, which takes a plain
    # __call__ for ASGI 2 and called the layers with the scope alone (every request 500).
    from asgiref.compatibility import guarantee_single_callable
    from starlette.routing import Router

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    route = WebSocketRoute("/ws", app)
    point = HandoffPoint(Router(routes=[route]), route, app, direct=True)
    for layer in (WebSocketHandoff(app, point=point), HandoffTail(app, point=point)):
        assert guarantee_single_callable(layer) is layer

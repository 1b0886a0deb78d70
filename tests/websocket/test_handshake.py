"""Handshake authentication, Origin checks and the per-user connection limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import Gateway, mint, request, subscribe


async def _refused(gateway: Gateway, *args: Any, **kwargs: Any) -> None:
    # A close before accept: uvicorn answers the upgrade with 403, nothing is subscribed.
    with pytest.raises(InvalidStatus) as info:
        await gateway.connect(*args, **kwargs)
    assert info.value.response.status_code == 403


async def asgi_handshake(gateway: Gateway, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    """Drive the app's ASGI interface directly: what it sends for a handshake."""
    assert gateway.app is not None
    sent: list[Any] = []
    events = [{"type": "websocket.connect"}]

    async def receive() -> Any:
        if events:
            return events.pop(0)
        await asyncio.sleep(3600)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/ws",
        "raw_path": b"/ws", "root_path": "", "query_string": b"", "headers": headers,
        "subprotocols": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", gateway.port),
        "state": {},
    }  # fmt: skip
    await asyncio.wait_for(gateway.app(scope, receive, send), 5)
    return sent


async def test_refusals_are_close_1008_before_accept(gateway: Gateway) -> None:
    host = (b"host", f"127.0.0.1:{gateway.port}".encode())
    for headers in (
        [host],
        [host, (b"authorization", b"Bearer not-a-token")],
        [host, (b"sec-websocket-protocol", b"bearer, not.a.token")],
        [host, (b"cookie", b"session=unknown-session-id")],
    ):
        assert await asgi_handshake(gateway, headers) == [
            {"type": "websocket.close", "code": 1008}
        ], headers


async def test_missing_bad_expired_and_revoked_tokens_are_refused(gateway: Gateway) -> None:
    await _refused(gateway)
    await _refused(gateway, "garbage.token.value")
    await _refused(gateway, "garbage.token.value", via="header")
    await _refused(gateway, mint("bob", ttl=-10))
    token, cookie = await gateway.login("bob", "bob-password")
    await _refused(gateway, token + "x", cookie=cookie)  # a bad token is not rescued by a cookie
    assert gateway.app is not None
    await gateway.app.state.authenticator.revoke(token)
    await _refused(gateway, token)


async def test_token_by_header_subprotocol_and_the_session_cookie(gateway: Gateway) -> None:
    token, cookie = await gateway.login("bob", "bob-password")
    async with await gateway.connect(token, via="header") as ws:
        assert ws.subprotocol is None
        await subscribe(ws, "notifications:bob")
    async with await gateway.connect(token) as ws:
        assert ws.subprotocol == "bearer"
        await subscribe(ws, "notifications:bob")
    async with await gateway.connect(cookie=cookie) as ws:
        await subscribe(ws, "notifications:bob", "system:broadcast")
        reply = await request(ws, {"type": "subscribe", "channels": ["notifications:alice"]})
        assert reply["code"] == "forbidden"


async def test_cookie_sessions_get_permissions_from_their_roles(gateway: Gateway) -> None:
    _, cookie = await gateway.login("alice", "alice-password")
    async with await gateway.connect(cookie=cookie) as ws:
        reply = await request(
            ws, {"type": "publish", "channel": "notifications:bob", "data": {"a": 1}, "id": 1}
        )
        assert (reply["type"], reply["id"]) == ("published", 1)  # with the history position


async def test_origin_checks(gateway_factory: GatewayFactory) -> None:
    allowed = "http://app.example:3000"
    async with gateway_factory(GATEWAY_WS_ORIGINS=allowed + ", https://other.example") as gw:
        token, cookie = await gw.login("bob", "bob-password")
        same = f"http://127.0.0.1:{gw.port}"
        for origin in (None, same, allowed, "HTTP://APP.EXAMPLE:3000", "https://other.example:443"):
            async with await gw.connect(cookie=cookie, origin=origin) as ws:
                await subscribe(ws, "notifications:bob")
        for origin in (
            "http://evil.example",
            "http://app.example:3001",
            "https://app.example:3000",
            f"https://127.0.0.1:{gw.port}",
            "null",
        ):
            await _refused(gw, cookie=cookie, origin=origin)
            await _refused(gw, token, origin=origin)  # "always" also covers tokens by default


async def test_per_user_connection_limit(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(GATEWAY_WS_MAX_PER_USER="3") as gw:
        first = [await gw.connect(mint("busy")) for _ in range(3)]
        await _refused_while_open(gw, mint("busy"))
        async with await gw.connect(mint("someone-else")):
            pass
        await first[0].close()
        await asyncio.sleep(0.2)
        again = await gw.connect(mint("busy"))
        for ws in [*first[1:], again]:
            await ws.close()


async def _refused_while_open(gateway: Gateway, token: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await gateway.connect(token)
    assert info.value.response.status_code == 403

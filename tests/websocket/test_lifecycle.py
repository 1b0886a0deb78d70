"""Sockets end when their credentials end (on every instance), when idle, at shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import (
    Gateway,
    closed_with,
    frames,
    mint,
    next_message,
    request,
    subscribe,
)


async def test_logout_closes_the_sessions_and_tokens_sockets_within_1s(gateway: Gateway) -> None:
    token, cookie = await gateway.login("bob", "bob-password")
    other_token, _ = await gateway.login("bob", "bob-password")  # another device
    by_token = await gateway.connect(token)
    by_cookie = await gateway.connect(cookie=cookie)
    other = await gateway.connect(other_token)
    for ws in (by_token, by_cookie, other):
        await subscribe(ws, "notifications:bob")
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        started = time.monotonic()
        response = await http.post(
            "/auth/logout", headers={"Authorization": f"Bearer {token}", "Cookie": cookie}
        )
        assert response.status_code == 200
    assert await closed_with(by_token) == 4401
    assert await closed_with(by_cookie) in (4401, 4403)  # its session's token is revoked too
    assert time.monotonic() - started < 1.0
    assert await request(other, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    await other.close()


async def test_other_instances_close_revoked_and_logged_out_users_sockets(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert b.app is not None
        token, cookie = await a.login("bob", "bob-password")
        alice = await a.connect(mint("alice", roles=("admin",)))
        bob_token = await a.connect(token)
        bob_cookie = await a.connect(cookie=cookie)
        bob_other = await a.connect(mint("bob"))
        started = time.monotonic()
        await b.app.state.authenticator.revoke(token)  # on the other instance
        assert await closed_with(bob_token) == 4401
        assert time.monotonic() - started < 1.0
        assert await request(bob_cookie, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        started = time.monotonic()
        assert await b.app.state.sessions.delete_user_sessions("bob") == 1  # log out everywhere
        assert await closed_with(bob_cookie) == 4403
        assert await closed_with(bob_other) == 4403  # every socket of the user
        assert time.monotonic() - started < 1.0
        assert await request(alice, {"type": "ping", "id": 2}) == {"type": "pong", "id": 2}
        await alice.close()


async def test_session_updates_keep_sockets_and_deletion_closes_them(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert b.app is not None
        _, cookie = await a.login("bob", "bob-password")
        session_id = cookie.split("=", 1)[1]
        ws = await a.connect(cookie=cookie)
        await subscribe(ws, "notifications:bob")
        await b.app.state.sessions.update(session_id, {"theme": "dark"})
        await asyncio.sleep(0.3)
        assert await request(ws, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        await b.app.state.sessions.delete(session_id)
        assert await closed_with(ws) == 4403


async def test_token_expiry_closes_the_socket(gateway: Gateway) -> None:
    ws = await gateway.connect(mint("brief", ttl=2))
    await subscribe(ws, "notifications:brief")
    started = time.monotonic()
    assert await closed_with(ws, timeout=4) == 4401
    assert time.monotonic() - started < 3.0  # exp is 2 s after the token was made


async def test_silent_clients_are_pinged_then_dropped(gateway_factory: GatewayFactory) -> None:
    timing = {"GATEWAY_WS_PING_INTERVAL": "0.5", "GATEWAY_WS_IDLE_TIMEOUT": "1.5"}
    async with gateway_factory(**timing) as gateway:
        deaf = await gateway.connect(mint("deaf"))
        lively = await gateway.connect(mint("lively"))
        await subscribe(lively, "system:broadcast")
        pings = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                batch = await frames(lively, timeout=deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
            for frame in batch:
                if frame["type"] == "ping":
                    pings += 1
                    await lively.send('{"type":"pong"}')
        assert pings >= 2
        assert await request(lively, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        # "deaf" never answered: it was closed after the idle timeout.
        assert await closed_with(deaf, timeout=2) == 4408
        await lively.close()


async def test_bridge_aclose_closes_1001_and_refuses_new_sockets(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gateway:
        assert gateway.app is not None
        ws = await gateway.connect(mint("shut"))
        await subscribe(ws, "system:broadcast")
        await gateway.app.state.bridge.aclose()
        assert await closed_with(ws) == 1001
        with pytest.raises(InvalidStatus):
            await gateway.connect(mint("late"))
        assert gateway.app.state.bridge.stats().connections == 0


async def test_server_shutdown_closes_sockets(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory() as gateway:
        ws = await gateway.connect(mint("shut"))
        await subscribe(ws, "system:broadcast")
    # uvicorn closes open sockets with 1012 before the lifespan (and bridge.aclose) runs.
    assert await closed_with(ws) in (1001, 1012)


@pytest.mark.parametrize(
    "ws",
    [
        # uvicorn's legacy protocol: deprecated by uvicorn and by websockets.
        pytest.param(
            "websockets",
            marks=[
                pytest.mark.filterwarnings("ignore::DeprecationWarning"),
                pytest.mark.filterwarnings("ignore::uvicorn.config.UvicornDeprecationWarning"),
            ],
        ),
        "websockets-sansio",
        "middleware.uvicorn_protocol:LeanWebSocketProtocol",
    ],
)
async def test_a_socket_has_one_task_of_the_bridge(
    gateway_factory: GatewayFactory, ws: str
) -> None:
    # Density: the writer runs in the server's own task for the socket and only the reader
    # is a task of its own, so 20,000 sockets are 20,000 bridge tasks, not 60,000; they
    # still deliver and close.
    async with gateway_factory(uvicorn_options={"ws": ws}) as gw:
        sockets = [await gw.connect(mint(f"density-{i}")) for i in range(5)]
        for socket in sockets:
            await subscribe(socket, "system:broadcast")
        bridge_code = str(Path("middleware", "websocket"))
        ours = [
            t
            for t in asyncio.all_tasks()
            if bridge_code in t.get_coro().cr_code.co_filename
            and t.get_coro().__qualname__.startswith("Connection.")
        ]
        assert len(ours) == 5
        async with httpx.AsyncClient(base_url=gw.http) as http:
            admin = {"Authorization": f"Bearer {mint('root', roles=('admin',))}"}
            reply = await http.post(
                "/api/channels/system:broadcast/publish", json={"n": 1}, headers=admin
            )
        assert reply.status_code == 200, reply.text
        for socket in sockets:
            assert (await next_message(socket))["data"] == {"n": 1}  # join frames skipped
            await socket.close()
        deadline = time.monotonic() + 5
        while gw.app.state.bridge.stats().connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert gw.app.state.bridge.stats().connections == 0

"""Log out everywhere for tokens (issue 13 item 7), on two example gateways sharing one
Redis: a subject cut-off made on one instance closes the subject's token sockets on both
(4401), the old tokens cannot reconnect nor call the API on either, other users are
untouched, and tokens issued after the cut-off work."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import Gateway, closed_with, mint, request, subscribe


async def status(gateway: Gateway, path: str, token: str, method: str = "GET") -> int:
    async with httpx.AsyncClient(base_url=gateway.http) as http:
        response = await http.request(method, path, headers={"Authorization": f"Bearer {token}"})
    return response.status_code


async def after_second_of(cutoff: float) -> None:
    # iat has whole-second resolution: the next token must be issued in a later second.
    await asyncio.sleep(max(0.0, int(cutoff) + 1 - time.time()) + 0.01)


async def test_a_cut_off_closes_and_refuses_the_subjects_tokens_on_every_instance(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert a.app is not None
        token, _cookie = await b.login("bob", "bob-password")
        other_device = mint("bob")
        sockets = [await a.connect(token), await a.connect(other_device), await b.connect(token)]
        alice = await a.connect(mint("alice", roles=("admin",)))
        for ws in (*sockets, alice):
            await subscribe(ws, "system:broadcast")
        assert await status(b, "/api/me", token) == 200  # warm both instances' caches
        assert await status(a, "/api/me", other_device) == 200
        started = time.monotonic()
        cutoff = await a.app.state.authenticator.revoke_subject("bob")  # on instance A
        for ws in sockets:
            assert await closed_with(ws, timeout=2) == 4401
        assert time.monotonic() - started < 2.0
        for gateway in (a, b):
            for old in (token, other_device):
                with pytest.raises(InvalidStatus):
                    await gateway.connect(old)
                assert await status(gateway, "/api/me", old) == 401
        assert await request(alice, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        await alice.close()
        await after_second_of(cutoff)
        fresh, _ = await a.login("bob", "bob-password")
        for gateway in (a, b):
            assert await status(gateway, "/api/me", fresh) == 200
            ws = await gateway.connect(fresh)
            assert await request(ws, {"type": "ping", "id": 2}) == {"type": "pong", "id": 2}
            await ws.close()


async def test_the_example_log_out_everywhere_route_cuts_the_tokens_off(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        token, cookie = await a.login("bob", "bob-password")
        on_b = await b.connect(token)
        by_cookie = await b.connect(cookie=cookie)
        assert await status(b, "/api/me", token) == 200
        async with httpx.AsyncClient(base_url=a.http) as http:
            response = await http.post(
                "/auth/logout-all", headers={"Authorization": f"Bearer {token}"}
            )
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "logged_out_everywhere", "sessions": 1}
        assert await closed_with(on_b, timeout=2) == 4401
        assert await closed_with(by_cookie, timeout=2) in (4401, 4403)
        for gateway in (a, b):
            assert await status(gateway, "/api/me", token) == 401
            with pytest.raises(InvalidStatus):
                await gateway.connect(token)
        assert await status(a, "/auth/logout-all", mint("carol"), "POST") == 200

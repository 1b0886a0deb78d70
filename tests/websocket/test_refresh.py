"""Live token refresh (issue 15, "Live sockets"), on two example gateways sharing one Redis.

A token socket is told ``refresh_required`` before ``exp`` (at once when less than the
notice is left), a ``refresh`` with a token of the same subject moves its expiry (and the
revocation it follows), a refused one changes nothing, and an unrefreshed socket is closed
with 4401 within 2 s after ``exp`` plus the leeway (``GATEWAY_JWT_LEEWAY``). Revocations
are made on the other instance: they reach the socket through the invalidation bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import jwt

from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import SECRET, closed_with, frames, mint, next_message, request
from tests.websocket.wsutil import subscribe as subscribe_to

LEEWAY = 2


def exp_of(token: str) -> float:
    claims: dict[str, Any] = jwt.decode(token, SECRET, algorithms=["HS256"], options={
        "verify_aud": False, "verify_exp": False})  # fmt: skip
    return float(claims["exp"])


async def first_frame_of_type(ws: Any, kind: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for frame in await frames(ws, max(0.01, deadline - time.monotonic())):
            if frame["type"] == kind:
                return frame


async def alive(ws: Any, request_id: int) -> bool:
    reply = await request(ws, {"type": "ping", "id": request_id})
    return reply == {"type": "pong", "id": request_id}


async def test_refresh_required_comes_before_exp_and_a_refresh_outlives_the_old_exp(
    gateway_factory: GatewayFactory,
) -> None:
    leeway = {"GATEWAY_JWT_LEEWAY": str(LEEWAY)}
    async with gateway_factory(**leeway) as a, gateway_factory(**leeway) as b:
        assert a.app is not None
        old = mint("renee", ttl=3)  # less than the notice left: told at once
        ws = await b.connect(old)
        told = await first_frame_of_type(ws, "refresh_required", timeout=2)
        assert told == {"type": "refresh_required"}
        await subscribe_to(ws, "system:broadcast")
        new = mint("renee", ttl=60)
        reply = await request(ws, {"type": "refresh", "token": new, "id": 7})
        assert reply == {"type": "refreshed", "id": 7}
        await asyncio.sleep(max(0.0, exp_of(old) + LEEWAY + 2.5 - time.time()))
        assert await alive(ws, 8)  # past the old exp + leeway + 2 s: still open
        await a.app.state.redis.publish("system:broadcast", {"after": "refresh"})
        assert (await next_message(ws))["data"] == {"after": "refresh"}
        # The socket follows the NEW token's revocation, not the old one's (made on A).
        await a.app.state.authenticator.revoke(mint("renee", ttl=60))  # unrelated token
        await a.app.state.authenticator.revoke(old)
        assert await alive(ws, 9)
        await a.app.state.authenticator.revoke(new)
        assert await closed_with(ws, timeout=2) == 4401


async def test_a_token_with_time_left_is_told_to_refresh_at_least_5_s_before_exp(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gateway:
        token = mint("early", ttl=14)
        ws = await gateway.connect(token)
        assert await alive(ws, 1)  # not told at once: more than the notice is left
        told = await first_frame_of_type(ws, "refresh_required", timeout=10)
        assert told == {"type": "refresh_required"}
        assert time.time() <= exp_of(token) - 5
        await ws.close()


async def test_a_refused_refresh_keeps_the_old_expiry(gateway_factory: GatewayFactory) -> None:
    leeway = {"GATEWAY_JWT_LEEWAY": str(LEEWAY)}
    async with gateway_factory(**leeway) as a, gateway_factory(**leeway) as b:
        assert a.app is not None
        old = mint("rita", ttl=4)
        ws = await b.connect(old)
        refused = {
            "type": "error",
            "code": "invalid_token",
            "message": "The token was not accepted.",
        }
        other = await request(ws, {"type": "refresh", "token": mint("mallory", ttl=60), "id": 1})
        assert other == {**refused, "id": 1}  # another subject
        revoked = mint("rita", ttl=60)
        await a.app.state.authenticator.revoke(revoked)  # on the other instance
        await asyncio.sleep(0.3)  # the revocation crosses the bus
        assert await request(ws, {"type": "refresh", "token": revoked, "id": 2}) == {
            **refused, "id": 2}  # fmt: skip
        forged = jwt.encode({"sub": "rita", "exp": int(time.time()) + 60}, "wrong-key" * 4)
        assert await request(ws, {"type": "refresh", "token": forged, "id": 3}) == {
            **refused, "id": 3}  # fmt: skip
        huge = "e" * 9000  # over the authenticator's max_token_bytes (8192)
        assert await request(ws, {"type": "refresh", "token": huge, "id": 4}) == {
            **refused, "id": 4}  # fmt: skip
        bad = await request(ws, {"type": "refresh", "token": 42, "id": 5})
        assert (bad["code"], bad["id"]) == ("bad_request", 5)
        assert await closed_with(ws, timeout=exp_of(old) + LEEWAY + 2 - time.time()) == 4401
        assert time.time() <= exp_of(old) + LEEWAY + 2


async def test_an_unrefreshed_socket_closes_4401_within_2_s_after_exp_plus_leeway(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(GATEWAY_JWT_LEEWAY=str(LEEWAY)) as gateway:
        token = mint("lapsed", ttl=3)
        ws = await gateway.connect(token)
        await asyncio.sleep(max(0.0, exp_of(token) + LEEWAY - 1.2 - time.time()))
        assert await alive(ws, 1)  # past exp, inside the leeway: still open
        assert await closed_with(ws, timeout=exp_of(token) + LEEWAY + 2 - time.time()) == 4401
        assert exp_of(token) + LEEWAY - 0.1 <= time.time() <= exp_of(token) + LEEWAY + 2


async def test_session_sockets_are_not_asked_and_cannot_refresh(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gateway:
        _token, cookie = await gateway.login("bob", "bob-password")
        ws = await gateway.connect(cookie=cookie)
        reply = await request(ws, {"type": "refresh", "token": mint("bob"), "id": 1})
        assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
        with contextlib.suppress(asyncio.TimeoutError):
            for frame in await frames(ws, timeout=1):
                assert frame["type"] != "refresh_required"
        await ws.close()


async def test_refresh_frames_count_against_the_rate_limit(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(GATEWAY_WS_RATE="1") as gateway:  # burst 2
        ws = await gateway.connect(mint("hasty"))
        token = mint("hasty", ttl=60)
        replies = [
            await request(ws, {"type": "refresh", "token": token, "id": i}) for i in range(3)
        ]
        assert [r["type"] for r in replies[:2]] == ["refreshed", "refreshed"]
        assert replies[2]["code"] == "rate_limited"
        await ws.close()

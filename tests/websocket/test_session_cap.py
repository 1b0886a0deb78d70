"""A login beyond the per-user session cap ends the user's oldest session, and the sockets
bound to it close as after a logout (4403), on every instance."""

from __future__ import annotations

import asyncio
import time

from gateway_redis.sessions.store import MAX_PER_USER
from tests.websocket.conftest import GatewayFactory
from tests.websocket.wsutil import closed_with, request, subscribe


async def test_the_session_ended_by_the_cap_closes_its_sockets(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as a, gateway_factory() as b:
        assert b.app is not None
        sessions = b.app.state.sessions
        assert sessions.store.max_per_user == MAX_PER_USER  # the example keeps the default
        _, oldest = await a.login("bob", "bob-password")
        await asyncio.sleep(0.002)  # age is known to the millisecond
        _, kept = await a.login("bob", "bob-password")
        doomed = await a.connect(cookie=oldest)
        alive = await a.connect(cookie=kept)
        for ws in (doomed, alive):
            await subscribe(ws, "notifications:bob")
        await asyncio.sleep(0.002)
        started = time.monotonic()
        # Logins on the other instance fill bob's sessions up to the cap: the oldest ends.
        for _ in range(MAX_PER_USER - 1):
            await sessions.store.create("bob")
        assert await closed_with(doomed) == 4403
        assert time.monotonic() - started < 5.0
        assert await request(alive, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        await alive.close()

"""Graceful shutdown under uvicorn with a real SIGTERM (issue 14 item 4).

Two example gateways (``tests/examples/shutdownapp.py``: the example plus a slow route
and a shutdown report) run as uvicorn processes on one Redis, with live ``websockets``
clients on both. SIGTERM to one: its clients are closed with 1001 (not uvicorn's 1012), a
request in flight completes with 200, the client, its pool, pub/sub hub and invalidation
bus are closed, and the process exits within 5 s; the other instance carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import httpx
import redis

from gateway_redis.embedded import EmbeddedRedis
from tests.processes import uvicorn_process
from tests.websocket.wsutil import (
    Gateway,
    closed_with,
    gateway_env,
    mint,
    next_message,
    request,
    subscribe,
)

APP = ["tests.examples.shutdownapp:create_app", "--factory", "--ws-max-size", "65536",
       "--ws-per-message-deflate", "false", "--timeout-graceful-shutdown", "3"]  # fmt: skip
# (the shutdown flag of scripts/gateway; docs/production.md, "Graceful shutdown")
SHUTDOWN_BUDGET = 5.0  # seconds from SIGTERM to exit


async def test_sigterm_closes_sockets_with_1001_finishes_requests_and_exits_in_time(
    redis_server: EmbeddedRedis, redis_admin: redis.Redis, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    with contextlib.ExitStack() as stack:
        port_a, proc_a = stack.enter_context(
            uvicorn_process(
                APP,
                gateway_env(redis_server.url, GATEWAY_TEST_SHUTDOWN_REPORT=str(report)),
            )
        )
        port_b, _proc_b = stack.enter_context(uvicorn_process(APP, gateway_env(redis_server.url)))
        a = Gateway(f"http://127.0.0.1:{port_a}", f"ws://127.0.0.1:{port_a}")
        b = Gateway(f"http://127.0.0.1:{port_b}", f"ws://127.0.0.1:{port_b}")
        token = mint("carol")
        on_a = [await a.connect(mint(f"user{i}")) for i in range(5)]
        on_b = [await b.connect(mint(f"user{i}")) for i in range(3)]
        for ws in on_a + on_b:
            await subscribe(ws, "system:broadcast")

        async with httpx.AsyncClient(base_url=a.http, timeout=10) as http:
            in_flight = asyncio.ensure_future(
                http.get(
                    "/test/slow",
                    params={"seconds": 2},
                    headers={"Authorization": f"Bearer {token}"},
                )
            )
            await asyncio.sleep(0.5)  # the request is being served
            assert not in_flight.done()
            started = time.monotonic()
            proc_a.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*(closed_with(ws, SHUTDOWN_BUDGET) for ws in on_a))
            closed_after = time.monotonic() - started
            response = await in_flight
        returncode = await asyncio.to_thread(proc_a.wait, SHUTDOWN_BUDGET + 5)
        shutdown = time.monotonic() - started
        print(
            f"SIGTERM: sockets closed after {closed_after:.3f} s, "
            f"process exited after {shutdown:.3f} s (status {returncode})"
        )

        assert codes == [1001] * len(on_a)  # the bridge's "going away", not uvicorn's 1012
        assert response.status_code == 200
        assert response.json() == {"slept": 2.0}
        assert shutdown < SHUTDOWN_BUDGET
        # uvicorn re-raises the signal once it has shut down cleanly (default action:
        # terminated by SIGTERM); older versions exit with 0.
        assert returncode in (0, -signal.SIGTERM)
        state = json.loads(report.read_text())
        assert state == {
            "bridge": "<WebSocketBridge closed connections=0>",
            "bridge_connections": 0,
            "client": "closed",
            "pool_in_use": 0,
            "pool_idle": 0,
            "pubsub": "<PubSubHub closed subscriptions=0>",
            "pubsub_connected": False,
            "bus": state["bus"],
            "bus_healthy": False,
        }

        # The other instance still serves: HTTP, its sockets, new sockets.
        async with httpx.AsyncClient(base_url=b.http) as http:
            assert (await http.get("/ready")).status_code == 200
        redis_admin.publish("system:broadcast", json.dumps({"after": "shutdown"}))
        for ws in on_b:
            assert (await next_message(ws))["data"] == {"after": "shutdown"}
            assert await request(ws, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        fresh = await b.connect(mint("dave"))
        await subscribe(fresh, "notifications:dave")
        for ws in [*on_b, fresh]:
            await ws.close()

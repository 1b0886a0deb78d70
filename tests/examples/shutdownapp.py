"""The example gateway plus what the SIGTERM test needs (``uvicorn
tests.examples.shutdownapp:create_app --factory``); the example itself is unchanged.

* ``GET /test/slow?seconds=s`` (a token needed, like any non-public path): answers 200
  after ``s`` seconds (at most 10), an in-flight request for a shutdown to wait for.
* With ``GATEWAY_TEST_SHUTDOWN_REPORT`` set to a path, a JSON report is written there once
  the application's lifespan has ended: the state of the bridge, the client, its pool, its
  pub/sub hub and its invalidation bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from examples.gateway import create_app as create_gateway
from middleware import Gateway

__all__ = ["create_app"]


def create_app() -> FastAPI:
    """The example gateway from the environment, with the test route and report."""
    app = create_gateway(os.environ)
    gateway: Gateway = app.state.gateway
    report = os.environ.get("GATEWAY_TEST_SHUTDOWN_REPORT")

    @app.get("/test/slow")
    async def slow(seconds: float = 1.0) -> dict[str, float]:
        await asyncio.sleep(min(max(seconds, 0.0), 10.0))
        return {"slept": seconds}

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with inner(app):
            yield
        if report:
            await asyncio.to_thread(Path(report).write_text, json.dumps(_state(gateway)))

    app.router.lifespan_context = lifespan
    return app


def _state(gateway: Gateway) -> dict[str, Any]:
    client, bridge = gateway.client, gateway.bridge
    return {
        "bridge": repr(bridge),
        "bridge_connections": bridge.stats().connections if bridge is not None else None,
        "client": client.state.value,
        "pool_in_use": client.pool_in_use,
        "pool_idle": client.pool_idle,
        "pubsub": repr(client.pubsub),
        "pubsub_connected": client.pubsub.connected,
        "bus": repr(gateway.bus),
        "bus_healthy": gateway.bus.healthy,
    }

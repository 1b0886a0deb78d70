"""The example gateway: ``uvicorn examples.gateway:app``, configured only by environment.

Redis comes from ``RedisConfig.from_env()`` (``REDIS_URL`` or ``REDIS_HOST``...); with
neither set, an embedded Redis-compatible server is started for the life of the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis

log = logging.getLogger("examples.gateway")


def _redis_configured() -> bool:
    return bool(os.environ.get("REDIS_URL") or os.environ.get("REDIS_HOST"))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    embedded: EmbeddedRedis | None = None
    if _redis_configured():
        config = RedisConfig.from_env()
    else:
        embedded = EmbeddedRedis()
        await embedded.astart()
        log.warning("no REDIS_URL/REDIS_HOST set: using an embedded server at %s", embedded.url)
        config = RedisConfig.from_env({**os.environ, "REDIS_URL": embedded.url})
    client = RedisClient(config)
    await client.connect()
    # The pub/sub hub's liveness check makes /ready follow a lost or frozen server within
    # about 2 s even when no request is running.
    client.pubsub.start()
    app.state.redis = client
    try:
        yield
    finally:
        await client.aclose()
        if embedded is not None:
            embedded.cleanup()


app = FastAPI(title="gateway-redis example", lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    """Always 200 while the process runs; says whether Redis is up."""
    client: RedisClient = app.state.redis
    return {"status": "ok", "redis": client.health.value}


@app.get("/ready")
async def ready() -> JSONResponse:
    """200 only while Redis is available, else 503."""
    client: RedisClient = app.state.redis
    if client.available:
        return JSONResponse({"status": "ready", "redis": "up"})
    return JSONResponse(
        {"status": "unavailable", "redis": client.health.value},
        status_code=503,
        headers={"Retry-After": "1"},
    )

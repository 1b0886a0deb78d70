"""Fixtures for the WebSocket bridge tests (helpers in ``wsutil``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from gateway_redis.embedded import EmbeddedRedis
from tests.websocket.wsutil import Gateway, gateway_env, serve_app

GatewayFactory = Callable[..., "contextlib.AbstractAsyncContextManager[Gateway]"]


@pytest.fixture
def gateway_factory(redis_server: EmbeddedRedis, redis_admin: Any) -> GatewayFactory:
    """``async with gateway_factory(redis_url=None, **GATEWAY_vars) as gw``: the example
    gateway with real-time messaging, served in process."""
    from examples.realtime import create_app

    @contextlib.asynccontextmanager
    async def start(
        redis_url: str | None = None, uvicorn_options: Mapping[str, Any] | None = None, **extra: str
    ) -> AsyncIterator[Gateway]:
        app = create_app(gateway_env(redis_url or redis_server.url, **extra))
        async with serve_app(app, **dict(uvicorn_options or {})) as gateway:
            yield gateway

    return start


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as gw:
        yield gw

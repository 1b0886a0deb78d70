"""Fixtures for the middleware tests: tokens, a started invalidation bus, an authenticator.

Apps are driven with ``httpx.AsyncClient(transport=ASGITransport(app))`` on the test's own
event loop, so they share the real Redis client the fixtures opened.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from starlette.types import ASGIApp

from gateway_redis import RedisClient
from gateway_redis.invalidation import InvalidationBus
from middleware.jwt import JWTSettings, JWTValidator
from middleware.jwt.authenticator import JWTAuthenticator

ISSUER = "https://issuer.test"
AUDIENCE = "gateway"
SECRET = "Zq8v1LmT4xR7cN2pW9sK5bY3hJ6fD0gA-mid"
CACHE_KEY = "l2-seal-Qm4TzX8rV1nB7cK3pW6sJ9yH2fD5gA0"  # seals L2 entries (item 11)

TokenFactory = Callable[..., str]


@pytest.fixture
def make_token() -> TokenFactory:
    """``make_token(sub="u1", roles=[...], ttl=300, **claims)``: a fresh HS256 token.

    A claim given as None is left out; every token gets a unique ``jti``.
    """

    def make(sub: str = "user-1", *, ttl: int = 300, key: str = SECRET, **extra: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "roles": ["user"],
        }
        payload.update(extra)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key, algorithm="HS256")

    return make


@pytest.fixture
def validator() -> JWTValidator:
    return JWTValidator(
        JWTSettings(
            algorithms=("HS256",),
            key=SECRET,
            issuer=ISSUER,
            audience=AUDIENCE,
            cache_key=CACHE_KEY,
        )
    )


@pytest.fixture
async def bus(client: RedisClient) -> InvalidationBus:
    bus = client.invalidation  # the client's own bus: started by it, closed with it
    assert await bus.wait_synced(5)
    return bus


@pytest.fixture
async def authenticator(
    validator: JWTValidator, bus: InvalidationBus, client: RedisClient
) -> JWTAuthenticator:
    auth = JWTAuthenticator(validator, client=client)
    assert await bus.wait_synced(5)  # a new component makes the bus resync once
    return auth


@pytest.fixture
def http_client() -> Callable[[ASGIApp], httpx.AsyncClient]:
    """``http_client(app)``: an httpx client calling ``app`` in process over "https" (so
    Secure cookies round-trip)."""

    def make(app: ASGIApp) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://testserver"
        )

    return make

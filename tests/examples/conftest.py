"""Fixtures for the example gateway: run it as ``uvicorn examples.gateway:app`` (black box)
or in process (its lifespan driven on the test's event loop)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_redis.embedded import EmbeddedRedis
from tests.processes import uvicorn_process

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://issuer.example"
AUDIENCE = "gateway-api"
SECRET = "Vb7qP2mX9kT4rW1nZ6sY3cJ8hL5fD0gQ-gw-tests"
CACHE_KEY = "Hn3kR8wQ1zT6vY9pM2cX5bL7fJ4sD0gA-gw-l2-seal"  # seals L2 verdicts

Launcher = Callable[..., "contextlib.AbstractContextManager[str]"]


@pytest.fixture(scope="session")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path, Path]:
    """An RSA key pair: (private key, private PEM path, public PEM path)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    directory = tmp_path_factory.mktemp("keys")
    private = directory / "private.pem"
    public = directory / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, private, public


def gateway_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_JWT_ISSUER": ISSUER,
        "GATEWAY_JWT_AUDIENCE": AUDIENCE,
        "GATEWAY_CACHE_KEY": CACHE_KEY,
    }
    env.update(extra)
    if not any(k in env for k in ("GATEWAY_JWT_PUBLIC_KEY", "GATEWAY_JWT_PRIVATE_KEY")):
        env.setdefault("GATEWAY_JWT_SECRET", SECRET)
    return env


@contextlib.contextmanager
def _uvicorn(env: Mapping[str, str]) -> Iterator[str]:
    with uvicorn_process(["examples.gateway:app"], env) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def launch_gateway() -> Iterator[Callable[..., str]]:
    """``launch_gateway(redis_url, **GATEWAY_vars) -> base URL``: a uvicorn process,
    stopped at the end of the test."""
    with contextlib.ExitStack() as stack:

        def launch(redis_url: str, **extra: str) -> str:
            return stack.enter_context(_uvicorn(gateway_env(redis_url, **extra)))

        yield launch


@pytest.fixture
async def inprocess_gateway(redis_server: EmbeddedRedis, redis_admin: Any) -> AsyncIterator[Any]:
    """A factory: ``await inprocess_gateway(**GATEWAY_vars)`` -> (app, httpx client over
    https); the app's lifespan runs on this event loop and ends with the test."""
    from examples.gateway import create_app

    async with contextlib.AsyncExitStack() as stack:

        async def start(**extra: str) -> tuple[Any, httpx.AsyncClient]:
            app = create_app(gateway_env(redis_server.url, **extra))
            await stack.enter_async_context(app.router.lifespan_context(app))
            assert await app.state.bus.wait_synced(5)
            http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="https://testserver"
            )
            await stack.enter_async_context(http)
            return app, http

        yield start

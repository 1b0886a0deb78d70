"""Fixtures for the example gateway: run it as ``uvicorn examples.gateway:app`` (black box)
or in process (its lifespan driven on the test's event loop)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_redis.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://issuer.example"
AUDIENCE = "gateway-api"
SECRET = "Vb7qP2mX9kT4rW1nZ6sY3cJ8hL5fD0gQ-gw-tests"

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
    }
    env.update(extra)
    if not any(k in env for k in ("GATEWAY_JWT_PUBLIC_KEY", "GATEWAY_JWT_PRIVATE_KEY")):
        env.setdefault("GATEWAY_JWT_SECRET", SECRET)
    return env


@contextlib.contextmanager
def _uvicorn(env: Mapping[str, str]) -> Iterator[str]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GATEWAY_"))}
    full.update(env)
    # A file, not a pipe: a chatty gateway must never block on a full pipe.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.gateway:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise AssertionError(log.read().decode(errors="replace")[-3000:])
                try:
                    if httpx.get(base + "/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not become ready"
                time.sleep(0.05)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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

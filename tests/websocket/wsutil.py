"""Helpers for the WebSocket bridge tests: the example gateway (with real-time messaging)
served by real uvicorn servers, in process on the test's loop or as a subprocess, and real
``websockets`` clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway_redis.embedded import free_port
from middleware.uvicorn_protocol import LeanWebSocketProtocol
from tests.processes import uvicorn_process

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://issuer.ws-tests"
AUDIENCE = "gateway-api"
SECRET = "Kp4wQ8zR2nV6tY1xM9cB3hJ7fL5gD0sA-ws-tests"
_UNASKED = frozenset({"message", "ping", "resync", "refresh_required", "join", "leave"})


def gateway_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment of the example gateway for these tests (fast heartbeat off by default)."""
    env = {
        "REDIS_URL": redis_url,
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_JWT_ISSUER": ISSUER,
        "GATEWAY_JWT_AUDIENCE": AUDIENCE,
        "GATEWAY_COOKIE_SECURE": "0",
        "GATEWAY_CACHE_KEY": "Wt5nB8xK2qL7rV4mZ9cH1sJ6fD3gY0pA-ws-l2-seal",
    }
    env.update(extra)
    return env


def mint(sub: str, *, roles: tuple[str, ...] = ("user",), ttl: int = 300, **claims: Any) -> str:
    """A token the example gateway accepts."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub, "roles": list(roles), "iat": now, "exp": now + ttl,
        "jti": uuid.uuid4().hex, "iss": ISSUER, "aud": AUDIENCE,
    }  # fmt: skip
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


@dataclass
class Gateway:
    """A running gateway: ``http`` and ``ws`` base URLs, and the app when in process."""

    http: str
    ws: str
    app: Any = None

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    async def login(self, username: str, password: str) -> tuple[str, str]:
        """``(token, session cookie header value)`` from ``POST /auth/login``."""
        async with httpx.AsyncClient(base_url=self.http) as http:
            response = await http.post(
                "/auth/login", json={"username": username, "password": password}
            )
        assert response.status_code == 200, response.text
        cookie = response.headers["set-cookie"].split(";", 1)[0]
        return response.json()["access_token"], cookie

    async def connect(
        self,
        token: str | None = None,
        *,
        via: str = "subprotocol",
        cookie: str | None = None,
        origin: str | None = None,
        **options: Any,
    ) -> ClientConnection:
        """A ``websockets`` client on ``/ws``; ``via`` is ``subprotocol`` (as browsers do)
        or ``header``."""
        headers: dict[str, str] = {}
        if token is not None and via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            options["subprotocols"] = ["bearer", token]
        if cookie is not None:
            headers["Cookie"] = cookie
        if origin is not None:
            options["origin"] = origin
        options.setdefault("open_timeout", 10)
        options.setdefault("compression", None)
        return await websockets.connect(self.ws + "/ws", additional_headers=headers, **options)


async def request(
    ws: ClientConnection, frame: dict[str, Any], timeout: float = 5
) -> dict[str, Any]:
    """Send ``frame`` and return the next frame that is not a message, ping, resync,
    refresh_required, join or leave."""
    await ws.send(json.dumps(frame))
    while True:
        for reply in await frames(ws, timeout):
            if reply["type"] not in _UNASKED:
                return reply


async def frames(ws: ClientConnection, timeout: float = 5) -> list[dict[str, Any]]:
    """The next frame, as a list of frames (``batch`` unwrapped)."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(raw)
    if frame["type"] == "batch":
        return list(frame["messages"])
    return [frame]


async def subscribe(ws: ClientConnection, *channels: str) -> None:
    reply = await request(ws, {"type": "subscribe", "channels": list(channels), "id": 1})
    reply.pop("positions", None)  # channels with history (the example's two) have some
    assert reply == {"type": "subscribed", "channels": list(channels), "id": 1}, reply


async def next_message(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    """The next ``message`` frame (pings answered, other frames skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        for frame in await frames(ws, max(0.01, deadline - time.monotonic())):
            if frame["type"] == "message":
                return frame


async def closed_with(ws: ClientConnection, timeout: float = 1.0) -> int | None:
    """Read (and drop) frames until the server closes; the close code. Fails after
    ``timeout`` seconds."""

    async def drain() -> None:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    await asyncio.wait_for(drain(), timeout)
    return ws.close_code


@contextlib.asynccontextmanager
async def serve_app(app: Any, **config: Any) -> AsyncIterator[Gateway]:
    """Serve ``app`` with uvicorn on this event loop (its lifespan included), with the
    WebSocket protocol ``scripts/gateway`` names unless ``ws`` says otherwise."""
    port = free_port()
    options: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "ws_max_size": 65536, "ws": LeanWebSocketProtocol,
        "ws_per_message_deflate": False, "lifespan": "on", "log_level": "warning",
    }  # fmt: skip
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert not task.done(), "uvicorn stopped during startup"
            assert time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        bus = getattr(app.state, "bus", None)
        assert bus is None or await bus.wait_synced(5)
        yield Gateway(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@contextlib.contextmanager
def gateway_process(
    redis_url: str, **extra: str
) -> Iterator[tuple[Gateway, subprocess.Popen[bytes]]]:
    """The example gateway in its own uvicorn process (a second CPU for load tests)."""
    args = ["examples.realtime:create_app", "--factory", "--ws-max-size", "65536",
            "--ws", "middleware.uvicorn_protocol:LeanWebSocketProtocol",
            "--ws-per-message-deflate", "false", "--backlog", "4096"]  # fmt: skip
    with uvicorn_process(args, gateway_env(redis_url, **extra)) as (port, proc):
        yield Gateway(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"), proc


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")

"""Black box: the example gateway under the uvicorn flags ``scripts/gateway`` gives it
(issue 13, item 4): request headers are bounded and X-Forwarded-For from loopback is not
trusted unless ``FORWARDED_ALLOW_IPS`` says so."""

from __future__ import annotations

import json
import re
import shlex

import httpx
import pytest
from websockets.sync.client import connect

from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env
from tests.processes import ROOT, uvicorn_process


def script_flags() -> list[str]:
    """The uvicorn flags of ``scripts/gateway`` without FORWARDED_ALLOW_IPS."""
    script = (ROOT / "scripts" / "gateway").read_text()
    limits = re.search(r"^LIMITS=\((.*)\)$", script, re.MULTILINE)
    proxy = re.search(r"^else\n  PROXY=\((.*)\)$", script, re.MULTILINE)
    assert limits is not None
    assert proxy is not None
    return shlex.split(limits.group(1)) + shlex.split(proxy.group(1))


def test_the_script_bounds_headers_and_ignores_forwarded_for(
    redis_server: EmbeddedRedis,
) -> None:
    flags = script_flags()
    assert "--ws-max-size" in flags
    assert flags[flags.index("--ws-max-size") + 1] == "65536"
    env = gateway_env(redis_server.url, GATEWAY_LOGIN_LIMIT="1")
    with (
        uvicorn_process(["examples.gateway:app", *flags], env) as (port, _),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        assert http.get("/health", headers={"cookie": "a=" + "x" * 8000}).status_code == 200
        # A 1 MiB header is refused (400, or the connection is closed on it).
        try:
            huge = http.get("/health", headers={"cookie": "a=" + "x" * (1 << 20)})
        except httpx.TransportError:
            pass
        else:
            assert huge.status_code >= 400
        # X-Forwarded-For from loopback is not a client address: the throttle counts both
        # attempts against 127.0.0.1 and refuses the second.
        form = {"username": "bob", "password": "wrong"}
        first = http.post("/auth/login", data=form, headers={"X-Forwarded-For": "10.0.0.1"})
        assert first.status_code == 401
        second = http.post("/auth/login", data=form, headers={"X-Forwarded-For": "10.0.0.2"})
        assert second.status_code == 429


def test_the_scripts_websocket_protocol_serves_the_bridge(redis_server: EmbeddedRedis) -> None:
    # --ws middleware.uvicorn_protocol:LeanWebSocketProtocol, --ws-ping-interval 0: a socket
    # authenticates, subscribes and receives what is published.
    env = gateway_env(redis_server.url)
    with (
        uvicorn_process(["examples.gateway:app", *script_flags()], env) as (port, _),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        login = http.post("/auth/login", json={"username": "alice", "password": "alice-password"})
        assert login.status_code == 200, login.text
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        with connect(f"ws://127.0.0.1:{port}/ws", additional_headers=bearer) as ws:
            ws.send(json.dumps({"type": "subscribe", "channels": ["system:broadcast"], "id": 1}))
            while json.loads(ws.recv(timeout=10)).get("id") != 1:
                pass
            published = http.post(
                "/api/channels/system:broadcast/publish", json={"n": 42}, headers=bearer
            )
            assert published.status_code == 200, published.text
            while (frame := json.loads(ws.recv(timeout=10)))["type"] != "message":
                pass
            assert frame["data"] == {"n": 42}


EXPLAINED_FLAGS = [
    "--h11-max-incomplete-event-size",
    "--forwarded-allow-ips",
    "--ws-max-size",
    "--timeout-graceful-shutdown",
    "--no-proxy-headers",
    "--ws-ping-interval",
    "middleware.uvicorn_protocol:LeanWebSocketProtocol",
]


@pytest.mark.parametrize("flag", EXPLAINED_FLAGS)
def test_the_flags_are_explained_in_the_production_guide(flag: str) -> None:
    production = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    assert "\n## uvicorn flags\n" in production, "docs/production.md lost its uvicorn flags"
    section = production.split("\n## uvicorn flags\n", 1)[1].split("\n## ", 1)[0]
    assert flag in section
    assert flag in (ROOT / "scripts" / "gateway").read_text()

"""The example's login throttle, black box: attempts are counted atomically before the
password is checked (concurrent guesses cannot pass the limit), a per-account budget holds
across addresses, the client address comes from X-Forwarded-For only from a trusted proxy
(GATEWAY_TRUSTED_PROXIES), and 429 carries Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env
from tests.processes import uvicorn_process

WRONG = {"username": "alice", "password": "wrong"}
RIGHT = {"username": "alice", "password": "alice-password"}


@contextlib.asynccontextmanager
async def from_address(app: Any, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose TCP peer (the ASGI ``client``) is ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        yield http


def assert_throttled(r: httpx.Response, window: int) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "too_many_attempts"
    assert 1 <= int(r.headers["retry-after"]) <= window
    assert "set-cookie" not in r.headers


async def test_concurrent_wrong_passwords_are_verified_at_most_limit_times(
    inprocess_gateway: Any,
) -> None:
    _, http = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="5", GATEWAY_LOGIN_WINDOW="60")
    replies = await asyncio.gather(*(http.post("/auth/login", json=WRONG) for _ in range(50)))
    statuses = Counter(r.status_code for r in replies)
    assert statuses[401] <= 5, statuses  # verified (and refused) at most 5 times
    assert statuses[401] + statuses[429] == 50, statuses
    for r in replies:  # past the account budget (20) too: its window (300 s) may be the wait
        if r.status_code == 429:
            assert_throttled(r, 300)
    # The right password is refused too until the window ends.
    assert_throttled(await http.post("/auth/login", json=RIGHT), 300)


async def test_the_account_budget_trips_across_many_addresses(inprocess_gateway: Any) -> None:
    app, _ = await inprocess_gateway(
        GATEWAY_LOGIN_LIMIT="5", GATEWAY_LOGIN_ACCOUNT_LIMIT="8",
        GATEWAY_LOGIN_ACCOUNT_WINDOW="120",
    )  # fmt: skip
    for n in range(8):  # one guess each from eight addresses: under every pair limit
        async with from_address(app, f"198.51.100.{n + 1}") as http:
            assert (await http.post("/auth/login", json=WRONG)).status_code == 401
    async with from_address(app, "198.51.100.200") as http:
        assert_throttled(await http.post("/auth/login", json=WRONG), 120)
        assert_throttled(await http.post("/auth/login", json=RIGHT), 120)
        # Other accounts are not affected.
        bob = {"username": "bob", "password": "bob-password"}
        assert (await http.post("/auth/login", json=bob)).status_code == 200


async def test_a_success_gives_its_attempt_back_to_the_account(inprocess_gateway: Any) -> None:
    app, _ = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="3", GATEWAY_LOGIN_ACCOUNT_LIMIT="3")
    async with from_address(app, "198.51.100.1") as http:
        for _ in range(6):  # logins that succeed are not guesses
            assert (await http.post("/auth/login", json=RIGHT)).status_code == 200
        for _ in range(3):
            assert (await http.post("/auth/login", json=WRONG)).status_code == 401
        assert_throttled(await http.post("/auth/login", json=RIGHT), 300)


async def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="3")  # no trusted proxies
    for n in range(3):
        spoofed = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
        assert (await http.post("/auth/login", json=WRONG, headers=spoofed)).status_code == 401
    fresh = {"X-Forwarded-For": "203.0.113.99"}
    assert_throttled(await http.post("/auth/login", json=WRONG, headers=fresh), 60)


async def test_x_forwarded_for_is_honoured_from_a_trusted_proxy(inprocess_gateway: Any) -> None:
    app, _ = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="3", GATEWAY_TRUSTED_PROXIES="10.0.0.0/8")
    async with from_address(app, "10.0.0.1") as proxy:
        for n in range(3):
            forwarded = {"X-Forwarded-For": f"1.1.1.1, 203.0.113.{n + 1}"}
            r = await proxy.post("/auth/login", json=WRONG, headers=forwarded)
            assert r.status_code == 401
        # Each forwarded client has a budget of its own; a fourth attempt of one trips it.
        client = {"X-Forwarded-For": "203.0.113.1"}
        assert (await proxy.post("/auth/login", json=WRONG, headers=client)).status_code == 401
        assert (await proxy.post("/auth/login", json=WRONG, headers=client)).status_code == 401
        assert_throttled(await proxy.post("/auth/login", json=WRONG, headers=client), 60)
    # The same header from a peer outside the trusted networks is not believed.
    async with from_address(app, "192.0.2.50") as direct:
        for _ in range(3):
            client = {"X-Forwarded-For": "203.0.113.77"}
            assert (await direct.post("/auth/login", json=WRONG, headers=client)).status_code == 401
        client = {"X-Forwarded-For": "203.0.113.78"}
        assert_throttled(await direct.post("/auth/login", json=WRONG, headers=client), 60)


@pytest.mark.parametrize(
    "env",
    [
        {"GATEWAY_LOGIN_ACCOUNT_LIMIT": "0"},
        {"GATEWAY_LOGIN_ACCOUNT_WINDOW": "later"},
        {"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/40"},
        {"GATEWAY_TRUSTED_PROXY_HEADER": "x-real-ip"},
        {"GATEWAY_CSRF_ALLOWED_ORIGINS": "app.example.com"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    from examples.gateway import create_app

    with pytest.raises(ValueError, match=next(iter(env))):
        create_app(gateway_env("redis://127.0.0.1:1", **env))


@pytest.mark.parametrize("trusted", [False, True], ids=["no-proxies", "loopback-trusted"])
def test_the_served_gateway_takes_the_address_from_the_trusted_proxy_setting(
    redis_server: EmbeddedRedis, redis_admin: object, trusted: bool
) -> None:
    # As scripts/gateway runs it: uvicorn reads no proxy headers; the gateway decides.
    extra = {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"} if trusted else {}
    env = gateway_env(redis_server.url, GATEWAY_LOGIN_LIMIT="2", **extra)
    with (
        uvicorn_process(["examples.gateway:app", "--no-proxy-headers"], env) as (port, _),
        httpx.Client(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        statuses = [
            http.post(
                "/auth/login", json=WRONG, headers={"X-Forwarded-For": f"203.0.113.{n + 1}"}
            ).status_code
            for n in range(4)
        ]
    # Trusted: four clients with one guess each. Not: one client (the peer), throttled.
    assert statuses == ([401] * 4 if trusted else [401, 401, 429, 429])

"""Two ``uvicorn examples.gateway:app`` processes sharing one Redis: revocation and logout
on one are seen by the other within 100 ms, and warm requests cost Redis nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from gateway_redis.embedded import EmbeddedRedis

BACKGROUND = {"info", "publish", "ping", "subscribe", "unsubscribe", "client", "hello"}


def data_commands(admin: redis.Redis) -> int:
    stats: Any = admin.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_").split("|")[0] not in BACKGROUND
    )


def login(http: httpx.Client, user: str) -> tuple[str, str]:
    r = http.post("/auth/login", json={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    cookie = next(
        h.split(";")[0] for h in r.headers.get_list("set-cookie") if h.startswith("session=")
    )
    return r.json()["access_token"], cookie


def test_logout_on_one_gateway_is_seen_by_the_other_within_100_ms(
    launch_gateway: Callable[..., str], redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    a = launch_gateway(redis_server.url, GATEWAY_COOKIE_SECURE="0")
    b = launch_gateway(redis_server.url, GATEWAY_COOKIE_SECURE="0")
    with (
        httpx.Client(base_url=a, timeout=5) as http_a,
        httpx.Client(base_url=b, timeout=5) as http_b,
    ):
        token, cookie = login(http_a, "alice")
        auth = {"Authorization": f"Bearer {token}"}
        for _ in range(3):  # warm B's L1 for the token and the session
            assert http_b.get("/api/admin", headers=auth).status_code == 200
            assert http_b.get("/api/session", headers={"cookie": cookie}).status_code == 200
        before = data_commands(redis_admin)
        for _ in range(50):
            assert http_b.get("/api/admin", headers={**auth, "cookie": cookie}).status_code == 200
        warm = data_commands(redis_admin) - before
        http_a.cookies.clear()
        started = time.perf_counter()
        assert http_a.post("/auth/logout", headers={**auth, "cookie": cookie}).status_code == 200
        after_logout = time.perf_counter()
        while http_b.get("/api/me", headers=auth).status_code != 401:
            assert time.perf_counter() - after_logout < 0.1, "revocation not seen in 100 ms"
        while http_b.get("/api/session", headers={"cookie": cookie}).status_code != 401:
            assert time.perf_counter() - after_logout < 0.1, "logout not seen in 100 ms"
        seen = time.perf_counter()
    assert warm == 0, f"{warm} Redis commands for 50 warm requests"
    print(
        f"logout took {(after_logout - started) * 1000:.1f} ms; seen by gateway B "
        f"{(seen - after_logout) * 1000:.1f} ms later; 50 warm requests: 0 Redis commands"
    )

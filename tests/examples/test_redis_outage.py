"""Redis killed under load: the example gateway keeps answering token-only routes correctly.

No 5xx, no 401 for a valid token, no 403 for a permitted one, no 200 for a revoked or
forged token, while the server is killed and restarted under concurrent traffic.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import httpx
import pytest

from gateway_redis.embedded import EmbeddedRedis

pytestmark = pytest.mark.slow


async def test_killed_redis_under_load_breaks_no_token_only_route(
    launch_gateway: Callable[..., str], fault_server: EmbeddedRedis
) -> None:
    base = launch_gateway(fault_server.url)
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        tokens = {}
        for user in ("alice", "bob", "carol"):
            name = user if user != "carol" else "alice"
            r = await http.post(
                "/auth/login", json={"username": name, "password": f"{name}-password"}
            )
            tokens[user] = r.json()["access_token"]
            http.cookies.clear()
        revoked = tokens.pop("carol")
        r = await http.post("/auth/login", json={"username": "alice", "password": "alice-password"})
        session_cookie = "__Host-session=" + http.cookies["__Host-session"]
        alice = {"Authorization": f"Bearer {r.json()['access_token']}"}
        http.cookies.clear()
        r = await http.post("/auth/logout", headers={"Authorization": f"Bearer {revoked}"})
        assert r.status_code == 200
        http.cookies.clear()
        cases = [
            ("/api/me", tokens["alice"], 200),
            ("/api/admin", tokens["alice"], 200),
            ("/api/me", tokens["bob"], 200),
            ("/api/admin", tokens["bob"], 403),
            ("/api/me", revoked, 401),
            ("/api/admin", revoked, 401),
            ("/api/me", "forged.token.value", 401),
            ("/api/me", None, 401),
            ("/health", None, 200),
        ]
        outcomes: collections.Counter[str] = collections.Counter()
        phase = ["up"]  # then down, then back: the cases each phase saw are kept
        seen: dict[str, set[int]] = {"up": set(), "down": set(), "back": set()}
        wrong: list[str] = []
        stop = asyncio.Event()

        async def worker(offset: int) -> None:
            i = offset
            while not stop.is_set():
                case = i % len(cases)
                path, token, expected = cases[case]
                i += 1
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                r = await http.get(path, headers=headers)
                outcomes[str(r.status_code)] += 1
                seen[phase[0]].add(case)
                if r.status_code != expected:
                    wrong.append(f"{path} expected {expected} got {r.status_code}: {r.text[:60]}")

        workers = [asyncio.create_task(worker(n)) for n in range(12)]
        await asyncio.sleep(0.7)
        fault_server.kill()
        phase[0] = "down"
        killed = time.monotonic()
        while (await http.get("/ready")).status_code != 503:
            assert time.monotonic() - killed < 2.5, "/ready did not notice the outage"
            await asyncio.sleep(0.02)
        # Session routes say "try again" during the outage; they never fail with a 500.
        r = await http.post("/auth/login", json={"username": "bob", "password": "bob-password"})
        assert r.status_code == 503
        assert r.headers["retry-after"]
        r = await http.get("/api/session", headers={"cookie": session_cookie})
        assert r.status_code == 503
        r = await http.get("/api/me", headers={"cookie": session_cookie, **alice})
        assert r.status_code == 200  # a token-only route ignores the unreachable session
        await asyncio.sleep(1.0)
        fault_server.start()
        phase[0] = "back"
        started = time.monotonic()
        while (await http.get("/ready")).status_code != 200:
            assert time.monotonic() - started < 5, "/ready did not notice the recovery"
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
    total = sum(outcomes.values())
    print(f"{total} requests through kill and restart: {dict(outcomes)}")
    assert not wrong, "\n".join(wrong[:20])
    assert not any(code.startswith("5") for code in outcomes)
    # Traffic all along: every case was asked before the kill, during the outage and after.
    assert all(len(cases_seen) == len(cases) for cases_seen in seen.values()), seen

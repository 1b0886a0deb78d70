"""Invalidation: how long after a change on instance A does instance B reject?

Instance B is the ``ours`` benchmark app under uvicorn (its own process, RedisClient and
InvalidationBus, L1 warm for the credential under test). Instance A is this process with
its own RedisClient and a :class:`~middleware.Gateway` (authenticator, permissions, sessions).
Each trial warms B's L1 for a fresh credential (two 200s), then starts the clock, makes the
change on A and polls B back to back until it rejects: latency = first rejection - start
of the call on A (so it includes A's own Redis writes and one HTTP round trip of polling).

- ``revoke``: ``authenticator.revoke(claims)`` on A; B's ``/api/me`` answers 401.
- ``bump_policy_version``: the subject's grant is removed from the permission "database",
  then ``permissions.bump_policy_version()`` on A; B's ``/api/data`` answers 403.
- ``delete_session``: ``sessions.delete(id)`` on A; B's ``/api/session`` answers 401.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from benchmarks import _common as c
from benchmarks.apps import COOKIE, GRANTS_KEY, PERMISSION
from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from middleware import CallablePermissions, Gateway, JWTSettings, SessionSettings

ISSUER = "https://issuer.bench"
AUDIENCE = "bench-api"
SECRET = "invalidation-secret-" + "z" * 40
POLL_LIMIT = 2.0  # seconds: a trial that takes longer counts as a timeout


@dataclass
class Kind:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)
    polls: list[int] = field(default_factory=list)
    timeouts: int = 0
    failures: int = 0


def _token(subject: str) -> str:
    now = int(time.time())
    claims = {
        "sub": subject, "roles": ["user"], "iat": now, "exp": now + 3600,
        "jti": uuid.uuid4().hex, "iss": ISSUER, "aud": AUDIENCE,
    }  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def _status(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with http.get(url, headers=headers) as reply:
        await reply.read()
        return reply.status


async def _trial(
    kind: Kind,
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    change: Callable[[], Awaitable[Any]],
    rejected: int,
) -> None:
    for _ in range(2):
        if await _status(http, url, headers) != 200:
            kind.failures += 1
            return
    start = time.perf_counter()
    await change()
    kind.call_ms.append((time.perf_counter() - start) * 1000)
    polls = 0
    while time.perf_counter() - start < POLL_LIMIT:
        polls += 1
        status = await _status(http, url, headers)
        if status == rejected:
            kind.latencies_ms.append((time.perf_counter() - start) * 1000)
            kind.polls.append(polls)
            return
        if status != 200:
            kind.failures += 1
            return
    kind.timeouts += 1


async def _run(
    redis_url: str, base: str, trials: int, progress: Callable[[str], None]
) -> list[Kind]:
    client = RedisClient(RedisConfig(url=redis_url))
    settings = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)

    async def grants(subject: str) -> list[str]:
        key = client.key(GRANTS_KEY + subject)
        members: Any = await client.execute("grants", lambda r: r.smembers(key))
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    # Instance A: the same components as the served app (instance B), without HTTP.
    gateway = Gateway(
        client, jwt=settings, permissions=CallablePermissions(grants), sessions=SessionSettings()
    )
    authenticator = gateway.authenticator
    permissions: Any = gateway.permissions
    sessions: Any = gateway.sessions
    kinds = [Kind("revoke"), Kind("bump_policy_version"), Kind("delete_session")]
    try:
        async with gateway.lifespan(), aiohttp.ClientSession() as http:
            await gateway.bus.wait_synced(5)
            for i in range(trials):
                subject = f"inv-{i}"
                token = _token(subject)
                claims = await authenticator.validator.validate(token)
                await _trial(
                    kinds[0], http, base + "/api/me", {"Authorization": f"Bearer {token}"},
                    lambda claims=claims: authenticator.revoke(claims), 401,
                )  # fmt: skip

                token = _token(subject)
                grants_key = client.key(GRANTS_KEY + subject)
                await client.execute("grant", lambda r, k=grants_key: r.sadd(k, PERMISSION))

                async def bump(k: str = grants_key) -> None:
                    await client.execute("revoke-grant", lambda r: r.srem(k, PERMISSION))
                    await permissions.bump_policy_version()

                await _trial(
                    kinds[1], http, base + "/api/data", {"Authorization": f"Bearer {token}"},
                    bump, 403,
                )  # fmt: skip

                session = await sessions.create(subject, {"trial": i})
                await _trial(
                    kinds[2], http, base + "/api/session", {"Cookie": f"{COOKIE}={session.id}"},
                    lambda sid=session.id: sessions.delete(sid), 401,
                )  # fmt: skip
                if (i + 1) % 50 == 0:
                    progress(f"  {i + 1}/{trials} trials")
    finally:
        await client.aclose()
    return kinds


def run(*, trials: int = 200, progress: Callable[[str], None] = c.progress) -> list[Kind]:
    server = EmbeddedRedis()
    server.start()
    try:
        if server.pid is not None:
            c.pin_pid(server.pid, c.LOAD_CPU)
        env = {
            "BENCH_VARIANT": "ours", "REDIS_URL": server.url, "BENCH_SECRET": SECRET,
            "BENCH_ISSUER": ISSUER, "BENCH_AUDIENCE": AUDIENCE,
        }  # fmt: skip
        with c.serving("benchmarks.apps:create", env) as b:
            kinds = asyncio.run(_run(server.url, b.url, trials, progress))
    finally:
        server.cleanup()
    for k in kinds:
        progress(
            f"  {k.name:<20} p50 {c.percentile(k.latencies_ms, 50):6.2f} ms  "
            f"p99 {c.percentile(k.latencies_ms, 99):6.2f} ms  max {max(k.latencies_ms or [0]):6.2f}"
            f" ms  timeouts {k.timeouts}  failures {k.failures}"
        )
    return kinds


def table(kinds: list[Kind]) -> str:
    rows = [
        [k.name, len(k.latencies_ms), f"{c.percentile(k.latencies_ms, 50):.2f}",
         f"{c.percentile(k.latencies_ms, 99):.2f}", f"{max(k.latencies_ms or [float('nan')]):.2f}",
         f"{c.percentile(k.call_ms, 50):.2f}", f"{c.percentile(k.polls, 50):.0f}",
         k.timeouts, k.failures]
        for k in kinds
    ]  # fmt: skip
    return c.md_table(
        ["change on A", "trials", "p50 ms", "p99 ms", "max ms", "A's call p50 ms",
         "polls p50", "timeouts", "failures"],
        rows,
    )  # fmt: skip


def goals(kinds: list[Kind]) -> list[tuple[str, bool, str]]:
    worst = max(c.percentile(k.latencies_ms, 99) for k in kinds)
    ok = all(not k.timeouts and not k.failures for k in kinds) and worst < 50
    return [("invalidation p99 < 50 ms (revoke, policy bump, session delete)", ok,
             f"worst p99 {worst:.2f} ms")]  # fmt: skip

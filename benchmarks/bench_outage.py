"""Outage: Redis is killed (SIGKILL) for 10 s while the example gateway is under load.

The example gateway (``examples.gateway:app``, one uvicorn worker on its own core) runs on an
embedded Redis with an append-only file (``appendfsync always``), so the restarted server on
the same port has the login's session back, as a persistent production Redis would. A load
generator in a separate process (aiohttp, 8 workers per route, each paced at
``rate`` requests/s, every request with a 5 s timeout) calls the token-only route
``GET /api/me`` (bearer token) and the session route ``GET /api/session`` (cookie only) from
``before`` seconds ahead of the kill until ``after`` seconds past the restart.

Counted per route and phase (before / outage / after, by send time): 5xx, 401/403 (wrong
everywhere: the credentials stay valid), client errors, latency percentiles; recovery =
end of the last non-200 answer sent after Redis answered PING again, minus that moment.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from gateway_redis.embedded import EmbeddedRedis

SECRET = "outage-secret-" + "o" * 40
ROUTES = {"token": "/api/me", "session": "/api/session"}


async def _load(
    base: str, token: str, cookie: str, start_at: float, seconds: float, rate: float, workers: int
) -> list[tuple[str, float, float, int]]:
    import aiohttp

    records: list[tuple[str, float, float, int]] = []
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"token": {"Authorization": f"Bearer {token}"}, "session": {"Cookie": cookie}}
    connector = aiohttp.TCPConnector(limit=2 * workers)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

        async def worker(route: str, offset: float) -> None:
            url = base + ROUTES[route]
            n = 0
            end = start_at + seconds
            while True:
                due = start_at + offset + n / rate
                n += 1
                if due >= end:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.monotonic()
                try:
                    async with http.get(url, headers=headers[route]) as reply:
                        await reply.read()
                        status = reply.status
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    status = -1
                records.append((route, sent - start_at, time.monotonic() - sent, status))

        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        await asyncio.gather(*(
            worker(route, i / (rate * workers))
            for route in ROUTES for i in range(workers)
        ))  # fmt: skip
    return records


def _load_main(conn: Connection, args: dict[str, Any], cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    conn.send(asyncio.run(_load(**args)))


@dataclass
class Phase:
    route: str
    phase: str
    requests: int
    ok: int
    http_5xx: int
    http_503: int
    wrong_401_403: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Outcome:
    phases: list[Phase]
    kill_at: float
    restart_at: float
    recovery_s: dict[str, float]
    first_503_after_kill_s: float
    duration: float
    records: list[tuple[str, float, float, int]]


def _login(base: str) -> tuple[str, str]:
    import urllib.request

    body = json.dumps({"username": "alice", "password": "alice-password"}).encode()
    request = urllib.request.Request(
        base + "/auth/login", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        token = json.loads(reply.read())["access_token"]
        cookie = reply.headers["Set-Cookie"].split(";", 1)[0]
    return token, cookie


def run(
    *,
    before: float = 4.0,
    outage: float = 10.0,
    after: float = 8.0,
    rate: float = 100.0,
    workers: int = 8,
    progress: Callable[[str], None] = c.progress,
) -> Outcome:
    server = EmbeddedRedis(args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    try:
        if server.pid is not None:
            c.pin_pid(server.pid, c.LOAD_CPU)
        env = {"REDIS_URL": server.url, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_COOKIE_SECURE": "0"}
        with c.serving("examples.gateway:app", env, factory=False) as gateway:
            token, cookie = _login(gateway.url)
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            start_at = time.monotonic() + 1.5  # the child needs a moment to import
            total = before + outage + after
            args = {
                "base": gateway.url, "token": token, "cookie": cookie, "start_at": start_at,
                "seconds": total, "rate": rate, "workers": workers,
            }  # fmt: skip
            cpu = int(c.LOAD_CPU) if c.can_pin() else None
            loader = ctx.Process(target=_load_main, args=(child, args, cpu), daemon=True)
            loader.start()
            time.sleep(max(0.0, start_at + before - time.monotonic()))
            kill_at = time.monotonic() - start_at
            server.kill()
            progress(f"  Redis killed at t={kill_at:.2f}s; restarting in {outage:g}s")
            time.sleep(max(0.0, start_at + before + outage - time.monotonic()))
            server.start()
            if server.pid is not None:
                c.pin_pid(server.pid, c.LOAD_CPU)
            restart_at = time.monotonic() - start_at
            progress(f"  Redis answers PING again at t={restart_at:.2f}s")
            if not parent.poll(total + 60):
                raise TimeoutError("load generator did not finish")
            records: list[tuple[str, float, float, int]] = parent.recv()
            loader.join(10)
    finally:
        server.cleanup()
    return _analyse(records, kill_at, restart_at, total)


def _analyse(
    records: list[tuple[str, float, float, int]], kill_at: float, restart_at: float, total: float
) -> Outcome:
    def phase_of(t: float) -> str:
        return "before" if t < kill_at else "outage" if t < restart_at else "after"

    phases = []
    for route in ROUTES:
        for name in ("before", "outage", "after"):
            rs = [r for r in records if r[0] == route and phase_of(r[1]) == name]
            lat = [r[2] * 1000 for r in rs]
            phases.append(Phase(
                route, name, len(rs), sum(r[3] == 200 for r in rs),
                sum(500 <= r[3] < 600 for r in rs), sum(r[3] == 503 for r in rs),
                sum(r[3] in (401, 403) for r in rs), sum(r[3] == -1 for r in rs),
                c.percentile(lat, 50), c.percentile(lat, 99), max(lat, default=float("nan")),
            ))  # fmt: skip
    recovery = {}
    for route in ROUTES:
        bad_ends = [r[1] + r[2] for r in records if r[0] == route and r[1] >= restart_at
                    and r[3] != 200]  # fmt: skip
        recovery[route] = max(0.0, max(bad_ends, default=restart_at) - restart_at)
    first_503 = min(
        (r[1] + r[2] for r in records if r[0] == "session" and r[3] == 503 and r[1] >= kill_at),
        default=float("nan"),
    )
    return Outcome(phases, kill_at, restart_at, recovery, first_503 - kill_at, total, records)


def chart(o: Outcome, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    colors = {200: "#3b7dd8", 503: "#e0a100"}
    for ax, route in zip(axes, ROUTES, strict=True):
        rs = [r for r in o.records if r[0] == route]
        for status in sorted({r[3] for r in rs}):
            pts = [r for r in rs if r[3] == status]
            ax.scatter([r[1] for r in pts], [r[2] * 1000 for r in pts], s=2,
                       color=colors.get(status, "#d62728"), label=str(status))  # fmt: skip
        ax.axvspan(o.kill_at, o.restart_at, color="#eeeeee", zorder=0)
        ax.set_yscale("log")
        ax.set_ylabel("latency ms")
        ax.set_title(f"{route} route {ROUTES[route]} (grey: Redis down)")
        ax.legend(markerscale=5, loc="upper right")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(o: Outcome) -> str:
    rows = [
        [f"{p.route} (`{ROUTES[p.route]}`)", p.phase, p.requests, p.ok, p.http_5xx, p.http_503,
         p.wrong_401_403, p.errors, f"{p.p50_ms:.1f}", f"{p.p99_ms:.1f}", f"{p.max_ms:.1f}"]
        for p in o.phases
    ]  # fmt: skip
    head = c.md_table(
        ["route", "phase", "requests", "200", "5xx", "of which 503", "401/403 (wrong)",
         "client errors", "p50 ms", "p99 ms", "max ms"],
        rows,
    )  # fmt: skip
    return (
        f"{head}\n\nRedis killed at t={o.kill_at:.2f} s, answering again at "
        f"t={o.restart_at:.2f} s. Recovery (last non-200 answer after the restart): token "
        f"route {o.recovery_s['token']:.2f} s, session route {o.recovery_s['session']:.2f} s. "
        f"First 503 on the session route {o.first_503_after_kill_s * 1000:.0f} ms after the kill."
    )


def goals(o: Outcome) -> list[tuple[str, bool, str]]:
    token = [p for p in o.phases if p.route == "token"]
    session_outage = next(p for p in o.phases if p.route == "session" and p.phase == "outage")
    t5xx = sum(p.http_5xx for p in token)
    twrong = sum(p.wrong_401_403 for p in token)
    terr = sum(p.errors for p in token)
    wrong_session = sum(p.wrong_401_403 for p in o.phases if p.route == "session")
    detected = o.kill_at + o.first_503_after_kill_s
    # Requests sent once the gateway had noticed the outage must all get 503.
    late_non_503 = sum(
        1 for r in o.records
        if r[0] == "session" and detected <= r[1] < o.restart_at and r[3] != 503
    )  # fmt: skip
    recovery = max(o.recovery_s.values())
    return [
        ("token-only route: 0 5xx and 0 wrong 401/403 through the outage",
         t5xx == 0 and twrong == 0 and terr == 0,
         f"{t5xx} 5xx, {twrong} 401/403, {terr} client errors"),
        ("session route answers 503 within 100 ms during the outage",
         late_non_503 == 0 and session_outage.max_ms <= 100 and wrong_session == 0
         and o.first_503_after_kill_s <= 0.1,
         f"{session_outage.http_503}/{session_outage.requests} answered 503 (the others "
         f"were answered before the kill was noticed, {o.first_503_after_kill_s * 1000:.0f} ms "
         f"after it; {late_non_503} non-503 after that), p99 {session_outage.p99_ms:.1f} ms, "
         f"max {session_outage.max_ms:.1f} ms, {wrong_session} wrong 401/403"),
        ("full recovery < 2 s after Redis returns", recovery < 2, f"{recovery:.2f} s"),
    ]  # fmt: skip

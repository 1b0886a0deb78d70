"""Response cache hit (L1) against bare Starlette serving a constant: over HTTP and in process.

``--wrk`` (the figure to report): the hot-path harness (:mod:`benchmarks.bench_hotpath`,
uvicorn + wrk, rounds alternating, same-run baseline) on three of its cases: ``bare``
(Starlette serving a constant JSON body), ``cached`` (the warm one-layer gateway stack,
JWT + RBAC + sessions, with a per-caller cache rule on the same route: every measured
request is an L1 hit) and ``warm-fused`` (the same stack without the cache).

Without ``--wrk``: in process.

Both apps are driven by calling the ASGI app directly with a prebuilt scope (no server,
no sockets), so the ratio compares the full per-request cost of the two apps, nothing
else. ``bare``: Starlette, one route returning a constant ``PlainTextResponse``.
``cached``: the same app behind :class:`ResponseCacheMiddleware` with a public rule on a
real (embedded) Redis, warmed so that every measured request is an L1 hit. ``cached-user``:
a private rule keyed by the subject a small stand-in layer sets in ``scope["user"]``.
Rounds alternate the cases; the goal is ``cached / bare >= 0.9`` (median of per-round
ratios).

    PYTHONPATH=$PWD python -m benchmarks.bench_responsecache --wrk [--rounds R]
    PYTHONPATH=$PWD python -m benchmarks.bench_responsecache [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import SimpleUser
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks import bench_hotpath
from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from middleware import CacheRule, ResponseCache, ResponseCacheMiddleware, ResponseCacheSettings


async def constant(request: Request) -> Response:
    return PlainTextResponse("hello, world")


class _User:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.user = SimpleUser("bench-user")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["user"] = self.user
        await self.app(scope, receive, send)


def _scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def _run(app: ASGIApp, path: str, n: int) -> float:
    """Requests per second over ``n`` sequential requests."""
    template = _scope(path)
    started = time.perf_counter()
    for _ in range(n):
        await app(dict(template), _receive, _send)
    return n / (time.perf_counter() - started)


async def main(requests: int, rounds: int) -> None:
    server = EmbeddedRedis()
    server.start()
    try:
        async with RedisClient(RedisConfig(url=server.url)) as client:
            assert await client.invalidation.wait_synced(5)
            bare = Starlette(routes=[Route("/data", constant)])
            rules = [
                CacheRule("/data", ttl=3600, public=True),
                CacheRule("/mine", ttl=3600),
            ]
            cache = ResponseCache(client, ResponseCacheSettings(rules))
            inner = Starlette(routes=[Route("/data", constant), Route("/mine", constant)])
            cached: ASGIApp = ResponseCacheMiddleware(inner, cache=cache)
            per_user: ASGIApp = _User(cached)
            cases: dict[str, tuple[ASGIApp, str]] = {
                "bare": (bare, "/data"),
                "cached": (cached, "/data"),
                "cached-user": (per_user, "/mine"),
            }
            for app, path in cases.values():  # warm: fill L1, import everything
                await _run(app, path, 2000)
            results: dict[str, list[float]] = {k: [] for k in cases}
            for i in range(rounds):
                order = list(cases) if i % 2 == 0 else list(reversed(cases))
                for name in order:
                    app, path = cases[name]
                    results[name].append(await _run(app, path, requests))
            ratio: Callable[[str], list[float]] = lambda k: [  # noqa: E731
                x / y for x, y in zip(results[k], results["bare"], strict=True)
            ]
            for name, rates in results.items():
                print(f"{name:12} median {statistics.median(rates):>10,.0f} req/s")
            for name in ("cached", "cached-user"):
                rs = ratio(name)
                print(
                    f"{name} / bare: median {statistics.median(rs):.2f} "
                    f"(rounds: {', '.join(f'{r:.2f}' for r in rs)})"
                )
            hits: Any = cache.l1
            print(f"L1 entries: {len(hits)}")
    finally:
        server.cleanup()


def over_http(rounds: int) -> None:
    """The hot-path harness on ``bare``, ``cached`` and ``warm-fused``."""
    results = bench_hotpath.run(rounds=rounds, otel=False, only=["bare", "cached", "warm-fused"])
    print(bench_hotpath.table(results))
    by_key = {m.case.key: m for m in results}
    for key in ("cached", "warm-fused"):
        ratio = bench_hotpath.paired_ratio(by_key[key], by_key["bare"])
        rounds_text = ", ".join(
            f"{x.rps / y.rps:.2f}"
            for x, y in zip(by_key[key].runs, by_key["bare"].runs, strict=False)
        )
        print(f"{key} / bare: {ratio:.2f} (per round: {rounds_text})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wrk", action="store_true", help="over HTTP (uvicorn + wrk)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.wrk:
        over_http(args.rounds)
    else:
        asyncio.run(main(args.requests, args.rounds))

"""Per-request cost of each stack in process (no server, no sockets), plus a cProfile of one.

    .venv/bin/python -m benchmarks.profile_hotpath            # µs/request, every stack
    .venv/bin/python -m benchmarks.profile_hotpath warm       # + cProfile of that stack
    .venv/bin/python -m benchmarks.profile_hotpath --stacks otel-bare,otel-warm

Drives the ASGI app directly with a minimal receive/send, so the numbers are the
middleware's own CPU cost per request (what uvicorn adds is the same for every stack), in
CPU time of this thread (Redis round trips of the naive and L1-off stacks count only their
client side; the OpenTelemetry SDK's export thread, which ran whenever its batch filled,
is left out: it made the span stacks' numbers jump by tens of µs between runs). Each
request gets fresh header objects, as from a server, so no hash is cached between them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import bench_hotpath as hp
from benchmarks.apps import COOKIE, create
from gateway_redis import telemetry
from gateway_redis.embedded import EmbeddedRedis

STACKS = {
    "bare": {"BENCH_VARIANT": "bare"},
    "probe": {"BENCH_VARIANT": "probe"},
    "hs256": {"BENCH_VARIANT": "pyjwt-hs256"},
    "naive": {"BENCH_VARIANT": "naive"},
    "l1off": {"BENCH_VARIANT": "ours", "BENCH_L1": "off"},
    "warm": {"BENCH_VARIANT": "ours"},
    "warm-fused": {"BENCH_VARIANT": "ours", "BENCH_FUSED": "1"},
    "cached": {"BENCH_VARIANT": "ours", "BENCH_FUSED": "1", "BENCH_CACHE": "1"},
    "warm-session": {"BENCH_VARIANT": "ours", "BENCH_ONLY": "session"},
    "warm-jwt": {"BENCH_VARIANT": "ours", "BENCH_ONLY": "jwt"},
    "warm-jwt-rbac": {"BENCH_VARIANT": "ours", "BENCH_ONLY": "jwt,rbac"},
    "otel-bare": {"BENCH_VARIANT": "bare", "BENCH_OTEL": "1"},
    "otel-warm": {"BENCH_VARIANT": "ours", "BENCH_OTEL": "1"},
    "otel-warm-fused": {"BENCH_VARIANT": "ours", "BENCH_OTEL": "1", "BENCH_FUSED": "1"},
    # Our spans skipped by patching telemetry.tracing_enabled() during its batches only.
    "otel-warm-nospans": {"BENCH_VARIANT": "ours", "BENCH_OTEL": "1"},
}


def _scope() -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/data", "raw_path": b"/api/data", "root_path": "",
        "query_string": b"", "headers": [], "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def _batch(app: Any, headers: list[tuple[bytes, bytes]], count: int) -> float:
    """CPU seconds per request over ``count`` requests (CPU time of this thread: the
    embedded Redis is another process, and other work on the machine inflates wall-clock
    time, not this)."""
    base = _scope()
    base["headers"] = headers
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    # Fresh objects per request, as a server makes them: a header value's hash is not
    # cached yet (reusing one bytes object made every lookup keyed by it look cheaper).
    scopes = []
    for _ in range(count):
        scope = dict(base)
        scope["headers"] = [(name, bytes(bytearray(value))) for name, value in headers]
        scope["path"] = "".join(base["path"])
        scopes.append(scope)
    started = time.thread_time()
    for scope in scopes:
        await app(scope, receive, send)
    elapsed = time.thread_time() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {statuses}")  # a 401 would look fast
    return elapsed / count


def _build(stack: str, fx: hp.Fixture) -> Any:
    env = {
        **STACKS[stack], "REDIS_URL": fx.redis_url, "BENCH_SECRET": hp.SECRET,
        "BENCH_PUBLIC_KEY": fx.public_key_path, "BENCH_ISSUER": hp.ISSUER,
        "BENCH_AUDIENCE": hp.AUDIENCE,
    }  # fmt: skip
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return create()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _starlette(app: Any) -> Any:
    while not hasattr(app, "router"):
        app = app.app  # unwrap OpenTelemetryMiddleware
    return app


async def measure(
    stacks: list[str], fx: hp.Fixture, count: int, rounds: int, profile: list[str]
) -> dict[str, float]:
    """Best µs/request of each stack over ``rounds`` interleaved batches of ``count``."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {fx.hs_token}".encode()),
        (b"cookie", f"{COOKIE}={fx.session_id}".encode()),
    ]
    best = dict.fromkeys(stacks, float("inf"))
    async with contextlib.AsyncExitStack() as exits:
        apps = {}
        for stack in stacks:
            app = _build(stack, fx)
            inner = _starlette(app)
            await exits.enter_async_context(inner.router.lifespan_context(inner))
            await _batch(app, headers, 200)  # warm up (L1 fill, code paths)
            apps[stack] = app
        original = telemetry.tracing_enabled
        for _ in range(rounds):
            for stack in stacks:
                if stack.endswith("-nospans"):
                    telemetry.tracing_enabled = lambda: False
                try:
                    best[stack] = min(best[stack], await _batch(apps[stack], headers, count))
                finally:
                    telemetry.tracing_enabled = original
        for stack in profile:
            print(f"== cProfile: {stack}")
            if stack.endswith("-nospans"):
                telemetry.tracing_enabled = lambda: False
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                await _batch(apps[stack], headers, count * 2)
            finally:
                profiler.disable()
                telemetry.tracing_enabled = original
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            print(out.getvalue())
    return {k: v * 1e6 for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", nargs="*", default=[], help="stacks to cProfile")
    parser.add_argument("--count", type=int, default=2_000, help="requests per batch")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved batches per stack")
    parser.add_argument("--stacks", type=lambda v: v.split(","), default=None)
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    server = EmbeddedRedis()
    server.start()
    try:
        hs, rs, sid, public = asyncio.run(hp._prepare(server.url))
        fx = hp.Fixture(hs, rs, sid, public, server.url, [])
        stacks = args.stacks or [s for s in STACKS if not s.startswith("otel-")]
        results = asyncio.run(measure(stacks, fx, args.count, args.rounds, args.profile))
        if args.json:
            print("PROFILEJSON " + json.dumps(results))
        for stack, us in results.items():
            print(f"{stack:<26} {us:7.1f} µs/request")
    finally:
        server.cleanup()


def run_subprocess(stacks: list[str], rounds: int = 8, count: int = 1000) -> dict[str, float]:
    """Run this module in a fresh process (the OpenTelemetry SDK, once installed, stays)."""
    cmd = [
        sys.executable, "-m", "benchmarks.profile_hotpath", "--json", "--stacks",
        ",".join(stacks), "--rounds", str(rounds), "--count", str(count),
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("PROFILEJSON "):
            data: dict[str, float] = json.loads(line[len("PROFILEJSON ") :])
            return data
    raise RuntimeError(f"profile_hotpath failed:\n{done.stdout}\n{done.stderr}")


if __name__ == "__main__":
    main()

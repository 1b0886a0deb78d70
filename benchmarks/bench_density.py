"""Density: N authenticated, subscribed WebSockets on one gateway process, and one broadcast.

The example gateway (``examples.realtime``, through ``benchmarks.density_app``) under
uvicorn, one worker, pinned to its own core, with the deployment's WebSocket flags
(``DEPLOYMENT_WS``, as in ``scripts/gateway``); an embedded Redis on a free loopback port.
The file-descriptor limit is raised as a deployment would (``ulimit -n`` / systemd's
``LimitNOFILE``): here ``setrlimit`` in the harness (soft up to hard, and hard up to what N
needs when running as root), inherited by the server and the client processes.

Clients: several processes (``multiprocessing``, one asyncio loop each, on the other core),
each from its own source address ``127.0.0.x``. Every socket has its own subject and
token, authenticates with ``Authorization: Bearer`` and subscribes to ``system:broadcast``;
it counts once the ``subscribed`` reply came. Server RSS is read before the first socket
(after one warm-up socket came and went) and once all N are subscribed (and again after the
broadcast): per-socket memory = growth / N. Then one message is published with redis-py
(``PUBLISH``, a timestamp inside) and every socket's receive latency is collected.

``python -m benchmarks.bench_density [--sockets N] [--ws IMPL] [--probe]``: one run;
``--probe`` also prints the server's live objects by type (``/_density/memory``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import redis.asyncio as aioredis

from benchmarks import _common as c
from benchmarks import _densityclient
from gateway_redis.embedded import EmbeddedRedis

CHANNEL = "system:broadcast"
SECRET = "density-secret-" + "d" * 40
ISSUER, AUDIENCE = "https://gateway.example", "gateway-api"
# What scripts/gateway passes uvicorn for WebSockets and proxies (docs/production.md,
# "uvicorn flags"); the implementation (--ws) is the run's variable.
DEPLOYMENT_WS = [
    "--ws-max-size", "65536", "--ws-per-message-deflate", "false", "--ws-ping-interval", "0",
    "--no-proxy-headers",
]  # fmt: skip
DEPLOYMENT_IMPL = "middleware.uvicorn_protocol:LeanWebSocketProtocol"
STOCK_IMPL = "websockets-sansio"  # uvicorn 0.55's own (its `auto`), for comparison
DESCRIPTION = (
    "The example gateway (`examples.realtime`, uvicorn, one worker on its own core, "
    "`--ws-per-message-deflate false --ws-max-size 65536 --ws-ping-interval 0 "
    "--no-proxy-headers`, as in `scripts/gateway`) on an embedded Redis; the "
    "file-descriptor limit raised in the harness (`setrlimit`, inherited by the server and "
    "clients). Four client processes on the other core, each from its own source address "
    "(127.0.0.10-13); every socket has its own subject and token (`Authorization: Bearer`) "
    "and subscribes to `system:broadcast` (a channel with history and positions). Per-socket "
    "memory = server RSS growth from idle (one warm-up socket came and went) to all sockets "
    "subscribed, / N. Then one `PUBLISH` with a timestamp; latency = receipt - timestamp "
    "over every socket. The first row is what `scripts/gateway` runs "
    "(`--ws middleware.uvicorn_protocol:LeanWebSocketProtocol`); the second, uvicorn's own "
    "sans-I/O protocol (`websockets-sansio`, what its `auto` picks), same N, same flags."
)
FD_SPARE = 256  # descriptors beyond one per socket: Redis pool, listeners, files


@dataclass
class Density:
    sockets: int
    ws: str
    failed: int = 0
    first_error: str = ""
    rss_idle_mb: float = float("nan")
    rss_full_mb: float = float("nan")
    rss_after_mb: float = float("nan")
    connect_s: float = float("nan")
    received: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    nofile: tuple[int, int] = (0, 0)
    closed: int = 0  # sockets the server closed (or that broke) before the end
    resyncs: int = 0

    @property
    def per_socket_kb(self) -> float:
        opened = self.sockets - self.failed
        return (self.rss_full_mb - self.rss_idle_mb) * 1024 / opened if opened else float("nan")


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE of this process (inherited by its children): the soft limit to
    the hard one, and both to ``need`` when the hard limit is lower and we may (root with
    CAP_SYS_RESOURCE; a container may drop it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need, need
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class _Clients:
    """``processes`` client processes, each on its own source address."""

    def __init__(self, port: int, processes: int) -> None:
        ctx = mp.get_context("spawn")
        cpu = int(c.LOAD_CPU) if c.can_pin() else None
        self.pipes, self.procs = [], []
        for i in range(processes):
            cfg = {
                "host": "127.0.0.1", "port": port, "source": f"127.0.0.{10 + i}",
                "prefix": f"d{i}", "secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE,
                "channel": CHANNEL,
            }  # fmt: skip
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_densityclient.main, args=(child, cfg, cpu), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def call_all(self, commands: Sequence[tuple[Any, ...]], timeout: float) -> list[Any]:
        for pipe, command in zip(self.pipes, commands, strict=True):
            pipe.send(command)
        deadline = time.monotonic() + timeout
        out = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a client process did not answer in {timeout}s")
            out.append(pipe.recv())
        return out

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, OSError, EOFError):
            self.call_all([("close",)] * len(self.pipes), 30)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _probe(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_density/memory", timeout=60) as reply:
        return dict(json.loads(reply.read()))


def _settled_rss(pid: int, seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def _publish(redis_url: str, phase: int) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await redis.publish(CHANNEL, json.dumps({"p": phase, "ts": time.time()}))
    finally:
        await redis.aclose()


def measure(
    sockets: int,
    *,
    ws: str = DEPLOYMENT_IMPL,
    processes: int = 4,
    probe: bool = False,
    trace: int = 0,
    progress: Callable[[str], None] = c.progress,
) -> tuple[Density, list[dict[str, Any]]]:
    """One run with ``sockets`` sockets; the result and, with ``probe``, the server's memory
    reports (idle, full)."""
    nofile = raise_nofile(sockets + FD_SPARE)
    if nofile[0] - FD_SPARE < sockets:  # the hard limit could not be raised (not root)
        progress(
            f"  RLIMIT_NOFILE is {nofile[0]}: {sockets} sockets capped to {nofile[0] - FD_SPARE}"
        )
        sockets = nofile[0] - FD_SPARE
    result = Density(sockets, ws)
    result.nofile = nofile
    redis = EmbeddedRedis()
    redis.start()
    reports: list[dict[str, Any]] = []
    try:
        if redis.pid is not None:
            c.pin_pid(redis.pid, c.LOAD_CPU)
        env = {
            "REDIS_URL": redis.url, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_COOKIE_SECURE": "0",
            **({"DENSITY_TRACEMALLOC": str(trace)} if trace else {}),
        }  # fmt: skip
        # asgi3: the probe layer's __call__ is a plain function returning an awaitable, which
        # uvicorn's auto-detection takes for ASGI 2.
        args = [*DEPLOYMENT_WS, "--ws", ws, "--backlog", "4096", "--interface", "asgi3"]
        with c.serving("benchmarks.density_app:create", env, extra_args=args) as server:
            clients = _Clients(server.port, processes)
            try:
                clients.call_all([("connect", 1)] + [("connect", 0)] * (processes - 1), 60)
                asyncio.run(_publish(redis.url, 0))  # warm: one socket, one delivery
                clients.call_all([("expect", 0, 10.0)] * processes, 30)
                if probe:
                    reports.append(_probe(server.url))
                result.rss_idle_mb = _settled_rss(server.pid)
                share = [sockets // processes + (i < sockets % processes) for i in range(processes)]
                started = time.monotonic()
                answers = clients.call_all(
                    [("connect", n) for n in share], max(120.0, sockets / 40)
                )
                result.connect_s = time.monotonic() - started
                result.failed = sum(a[2] for a in answers)
                result.first_error = next((a[3] for a in answers if a[3]), "")
                result.rss_full_mb = _settled_rss(server.pid, 2.0)
                if probe:
                    reports.append(_probe(server.url))
                asyncio.run(_publish(redis.url, 1))
                stats = clients.call_all([("expect", 1, 30.0)] * processes, 60)
                result.rss_after_mb = _settled_rss(server.pid, 0.5)
            finally:
                clients.close()
    finally:
        redis.cleanup()
    result.closed = sum(s["closed"] for s in stats)
    missing = [m for s in stats for m in s["missing"]]
    if missing or any(s["twice"] for s in stats):
        progress(f"  twice: {[s['twice'] for s in stats]}; last frames of missing: {missing}")
    result.resyncs = sum(s["resyncs"] for s in stats)
    latencies = sorted(x for s in stats for x in s["latencies"])
    result.received = len(latencies)
    result.p50_ms = c.percentile(latencies, 50) * 1000
    result.p99_ms = c.percentile(latencies, 99) * 1000
    result.max_ms = latencies[-1] * 1000 if latencies else float("nan")
    progress(
        f"  ws={ws.rsplit(':', 1)[-1]:<21} N={sockets:<6} failed {result.failed}  "
        f"connect {result.connect_s:.1f} s  "
        f"RSS {result.rss_idle_mb:.0f} -> {result.rss_full_mb:.0f} MB "
        f"({result.per_socket_kb:.1f} KB/socket), after the broadcast {result.rss_after_mb:.0f}"
        f" MB  received {result.received}/{sockets - result.failed + 1}  p50 "
        f"{result.p50_ms:.0f} ms  p99 {result.p99_ms:.0f} ms  max {result.max_ms:.0f} ms"
        + f"  closed {result.closed}  resyncs {result.resyncs}"
        + (f"  first error: {result.first_error}" if result.first_error else "")
    )
    return result, reports


def run(*, quick: bool = False, progress: Callable[[str], None] = c.progress) -> list[Density]:
    """The deployment's implementation at N (``DENSITY_SOCKETS``, default 20,000; 2,000
    with ``quick``), then uvicorn's own sans-I/O one at the same N for comparison."""
    sockets = int(os.environ.get("DENSITY_SOCKETS") or (2_000 if quick else 20_000))
    results = [measure(sockets, ws=DEPLOYMENT_IMPL, progress=progress)[0]]
    results.append(measure(sockets, ws=STOCK_IMPL, progress=progress)[0])
    return results


def table(results: Sequence[Density]) -> str:
    rows = [
        [r.ws, f"{r.sockets:,}", r.failed, f"{r.connect_s:.0f}",
         f"{r.rss_idle_mb:.0f} / {r.rss_full_mb:.0f} / {r.rss_after_mb:.0f}",
         f"{r.per_socket_kb:.1f}", f"{r.received:,}", f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}",
         f"{r.max_ms:.0f}", f"{r.resyncs:,}"]
        for r in results
    ]  # fmt: skip
    return c.md_table(
        ["uvicorn --ws", "sockets", "failed", "connect s", "RSS idle / full / after MB",
         "KB per socket", "received", "p50 ms", "p99 ms", "max ms", "resync frames"],
        rows,
    )  # fmt: skip


def goals(results: Sequence[Density]) -> list[tuple[str, bool, str]]:
    if not results:
        return []
    r = results[0]
    whole = r.failed == 0 and r.received >= r.sockets
    return [
        (
            f"{r.sockets:,} subscribed sockets, <= 25 KB server memory each",
            whole and r.per_socket_kb <= 25,
            f"{r.per_socket_kb:.1f} KB ({r.failed} failed)",
        ),
        (
            f"one broadcast to {r.sockets:,} sockets, p99 < 1 s",
            whole and r.p99_ms < 1000,
            f"p99 {r.p99_ms:.0f} ms, max {r.max_ms:.0f} ms ({r.received:,} received)",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=20_000)
    parser.add_argument("--ws", default=DEPLOYMENT_IMPL, help="uvicorn --ws implementation")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--probe", action="store_true", help="print the server's objects")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (with --probe)")
    args = parser.parse_args()
    result, reports = measure(
        args.sockets, ws=args.ws, processes=args.processes, probe=args.probe, trace=args.trace
    )
    print(table([result]))
    for name, report in zip(("idle", "full"), reports, strict=False):
        print(f"-- {name}:")
        for key, value in report.items():
            if isinstance(value, list):
                print(f"  {key}:")
                for item in value:
                    print(f"    {item}")
            else:
                print(f"  {key}: {value}")


if __name__ == "__main__":
    main()

"""Fan-out: N WebSocket clients on one channel, messages published with redis-py.

Two servers, each under uvicorn (1 worker, pinned to its own core, same flags): our bridge
(``examples.realtime:create_app``: authentication, channel policy, bounded outboxes,
batching) and encode/broadcaster's Redis backend behind a minimal Starlette endpoint
(``benchmarks.broadcaster_app``). The clients run in a separate process
(``benchmarks._wsclient``) on the other core, with Redis and the publisher.

For each server and N: connect N readers, warm up until every reader has a message, then
publish M messages back to back (pipelined) and wait until every reader has all of them (or
a timeout). Delivered messages/s = deliveries / (last receipt - first publish); latency =
receipt - the publish timestamp in the payload. Then one stalled client (subscribed, never
reads, 4 KiB receive buffer) joins and the measurement is repeated. Finally a soak: 10
readers + 1 stalled client, 4 KiB messages at 500/s for 8 s, server RSS sampled throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psutil
import redis.asyncio as aioredis

from benchmarks import _common as c
from benchmarks import _wsclient
from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis

CHANNEL = "system:broadcast"
HISTORY = "ours+history"
"""Our bridge with every message published through :class:`~gateway_redis.ChannelHistory`
(the example keeps 1,000 on ``system:broadcast``): frames carry offsets, sockets could
recover. The other systems publish plain ``PUBLISH``es (no history, no offsets)."""
SECRET = "fanout-secret-" + "s" * 40
UVICORN_WS = ["--ws-max-size", "65536", "--ws-per-message-deflate", "false"]
PAD = "x" * 64


@dataclass
class Run:
    system: str
    readers: int
    stalled: int
    messages: int
    delivered: int = 0
    expected: int = 0
    seconds: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rss_idle_mb: float = float("nan")
    rss_peak_mb: float = float("nan")
    rss_end_mb: float = float("nan")
    resyncs: int = 0
    server_cpu: float = float("nan")  # share of one core while delivering
    client_cpu: float = float("nan")
    note: str = ""

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds and self.seconds > 0 else 0.0


@dataclass
class Soak:
    system: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s, MB)
    delivered: int = 0
    expected: int = 0

    @property
    def growth_mb(self) -> float:
        if not self.samples:
            return float("nan")
        return max(mb for _, mb in self.samples) - self.samples[0][1]


class _CPU:
    """CPU seconds used by the server and the client process since creation."""

    def __init__(self, server: int, client: int | None) -> None:
        self.procs = [psutil.Process(server), psutil.Process(client) if client else None]
        self.start = [self._cpu(p) for p in self.procs]

    @staticmethod
    def _cpu(p: psutil.Process | None) -> float:
        return sum(p.cpu_times()[:2]) if p is not None else float("nan")

    def shares(self, seconds: float) -> tuple[float, float]:
        used = [self._cpu(p) - s for p, s in zip(self.procs, self.start, strict=True)]
        return used[0] / seconds, used[1] / seconds


class _RSS:
    """Samples a process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def now_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._t0, self.now_mb()))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> _RSS:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=float("nan"))


def _token() -> str:
    now = int(time.time())
    claims = {
        "sub": "alice", "roles": ["admin"], "iat": now, "exp": now + 3600,
        "jti": uuid.uuid4().hex, "iss": "https://gateway.example", "aud": "gateway-api",
    }  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _system(name: str, redis_url: str) -> tuple[str, dict[str, str], dict[str, Any], float]:
    """(uvicorn target, env, client target, stagger) for a system."""
    if name in ("ours", HISTORY):
        env = {
            "REDIS_URL": redis_url, "GATEWAY_JWT_SECRET": SECRET, "GATEWAY_COOKIE_SECURE": "0",
            "GATEWAY_WS_MAX_PER_USER": "4096",
        }  # fmt: skip
        subscribe = json.dumps({"type": "subscribe", "channels": [CHANNEL], "id": 1})
        client = {"headers": {"Authorization": f"Bearer {_token()}"}, "first_frame": subscribe}
        return "examples.realtime:create_app", env, client, 0.0
    env = {"REDIS_URL": redis_url, "BENCH_CHANNEL": CHANNEL}
    return "benchmarks.broadcaster_app:create", env, {"headers": {}, "first_frame": None}, 0.5


class _Clients:
    def __init__(self, port: int, target: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        full = {"host": "127.0.0.1", "port": port, "path": "/ws", **target}
        cpu = int(c.LOAD_CPU) if c.can_pin() else None
        self.process = ctx.Process(target=_wsclient.main, args=(child, full, cpu), daemon=True)
        self.process.start()

    def call(self, command: tuple[Any, ...], timeout: float) -> Any:
        self.conn.send(command)
        if not self.conn.poll(timeout):
            raise TimeoutError(f"client process did not answer {command[0]!r} in {timeout}s")
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, OSError, EOFError):
            self.call(("close",), 20)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


async def _publish(redis: Any, phase: int, count: int, pad: str = PAD) -> float:
    """Publish ``count`` messages back to back; returns the time of the first. With a
    :class:`ChannelHistory` for ``redis``: through it, 10 in flight (in order per worker,
    as the pipeline of 10 for plain publishes)."""
    first = time.time()
    if isinstance(redis, ChannelHistory):
        for start in range(0, count, 10):
            await asyncio.gather(*(
                redis.publish(CHANNEL, {"p": phase, "s": seq, "ts": time.time(), "pad": pad})
                for seq in range(start, min(count, start + 10))
            ))  # fmt: skip
        return first
    for start in range(0, count, 10):
        pipe = redis.pipeline(transaction=False)
        for seq in range(start, min(count, start + 10)):
            pipe.publish(CHANNEL, json.dumps({"p": phase, "s": seq, "ts": time.time(), "pad": pad}))
        await pipe.execute()
    return first


async def _warm_up(redis: Any, clients: _Clients, phase: int, readers: int) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await _publish(redis, phase, 1)
        await asyncio.sleep(0.05)
        if clients.call(("seen", phase), 10) >= readers:
            return True
    return False


def _fill(run: Run, stats: dict[str, Any], first_pub: float) -> None:
    run.delivered, run.expected = stats["delivered"], stats["expected"]
    run.seconds = stats["last_recv"] - first_pub
    lat = stats["latencies"]
    run.p50_ms = c.percentile(lat, 50) * 1000
    run.p99_ms = c.percentile(lat, 99) * 1000
    run.resyncs = stats["resyncs"]


async def _measure(
    system: str, readers: int, messages: int, redis_url: str, progress: Callable[[str], None]
) -> list[Run]:
    target, env, client_target, stagger = _system(system, redis_url)
    runs = [Run(system, readers, 0, messages), Run(system, readers, 1, messages)]
    with c.serving(target, env, extra_args=UVICORN_WS) as server:
        clients = _Clients(server.port, client_target)
        redis: Any = aioredis.Redis.from_url(redis_url)
        client = RedisClient(RedisConfig(url=redis_url, pool_size=16))
        if system == HISTORY:
            await client.connect()
            plain, redis = redis, ChannelHistory(client, size=1000, ttl=300)
        try:
            rss = _RSS(server.pid)
            idle = rss.now_mb()
            _, ok, failed = clients.call(("connect", readers, 0, stagger), 180)
            if failed or not await _warm_up(redis, clients, 1, ok):
                for run in runs:
                    run.note = f"{failed} connections failed; warm-up incomplete"
            for run, phase in zip(runs, (2, 4), strict=True):
                if run.stalled:
                    clients.call(("connect", 0, 1, 0.0), 30)
                    await _warm_up(redis, clients, 3, ok)
                run.rss_idle_mb = idle
                cpu = _CPU(server.pid, clients.process.pid)
                with rss:
                    first = await _publish(redis, phase, messages)
                    stats = clients.call(("expect", phase, messages, 60.0), 90)
                    run.rss_end_mb = rss.now_mb()
                run.server_cpu, run.client_cpu = cpu.shares(stats["last_recv"] - first)
                run.rss_peak_mb = rss.peak
                rss = _RSS(server.pid)
                _fill(run, stats, first)
                progress(
                    f"  {system:<12} N={readers:<5} stalled={run.stalled}  "
                    f"{run.rate:9,.0f} msg/s  p50 {run.p50_ms:7.1f} ms  p99 {run.p99_ms:7.1f} ms  "
                    f"delivered {run.delivered}/{run.expected}  RSS {run.rss_idle_mb:.0f}->"
                    f"{run.rss_peak_mb:.0f} MB  CPU server {run.server_cpu:.0%} "
                    f"clients {run.client_cpu:.0%}"
                )
        finally:
            if system == HISTORY:
                await client.aclose()
                redis = plain
            await redis.aclose()
            clients.close()
    return runs


async def _soak(
    system: str, redis_url: str, progress: Callable[[str], None], seconds: float = 8.0
) -> Soak:
    target, env, client_target, stagger = _system(system, redis_url)
    soak = Soak(system)
    pad = "y" * 4096
    rate = 500
    with c.serving(target, env, extra_args=UVICORN_WS) as server:
        clients = _Clients(server.port, client_target)
        redis = aioredis.Redis.from_url(redis_url)
        try:
            _, ok, _ = clients.call(("connect", 10, 1, stagger), 60)
            await _warm_up(redis, clients, 5, ok)
            total = int(rate * seconds)
            with _RSS(server.pid, 0.25) as rss:
                start = time.monotonic()
                sent = 0
                while sent < total:
                    due = min(total, int((time.monotonic() - start) * rate) + 1)
                    if due > sent:
                        pipe = redis.pipeline(transaction=False)
                        for seq in range(sent, due):
                            payload = {"p": 6, "s": seq, "ts": time.time(), "pad": pad}
                            pipe.publish(CHANNEL, json.dumps(payload))
                        await pipe.execute()
                        sent = due
                    await asyncio.sleep(0.01)
                stats = clients.call(("expect", 6, total, 30.0), 60)
                await asyncio.sleep(1.0)
            soak.samples = rss.samples
            soak.delivered, soak.expected = stats["delivered"], stats["expected"]
            progress(
                f"  soak {system:<12} 10 readers + 1 stalled, {total} x 4 KiB: RSS "
                f"{soak.samples[0][1]:.0f} -> max {max(m for _, m in soak.samples):.0f} MB "
                f"(+{soak.growth_mb:.1f} MB), delivered {soak.delivered}/{soak.expected}"
            )
        finally:
            await redis.aclose()
            clients.close()
    return soak


def run(
    *,
    sizes: tuple[tuple[int, int], ...] = ((100, 1000), (1000, 200)),
    systems: tuple[str, ...] = ("ours", "broadcaster"),
    progress: Callable[[str], None] = c.progress,
    soak: bool = True,
) -> tuple[list[Run], list[Soak]]:
    """Each system at each ``(readers, messages)`` size, then (``soak``) the soak of each
    (``ours+history`` has none: its soak would be ``ours``'s)."""
    server = EmbeddedRedis()
    server.start()
    runs: list[Run] = []
    soaks: list[Soak] = []
    try:
        if server.pid is not None:
            c.pin_pid(server.pid, c.LOAD_CPU)
        for readers, messages in sizes:
            for system in systems:
                runs += asyncio.run(_measure(system, readers, messages, server.url, progress))
        for system in systems if soak else ():
            if system != HISTORY:
                soaks.append(asyncio.run(_soak(system, server.url, progress)))
    finally:
        server.cleanup()
    return runs, soaks


def table(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        rows.append([
            r.system, r.readers, "yes" if r.stalled else "no", r.messages,
            f"{r.rate:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
            f"{r.delivered:,}/{r.expected:,}", r.resyncs,
            f"{r.rss_idle_mb:.0f} / {r.rss_peak_mb:.0f}",
            f"{r.server_cpu:.0%} / {r.client_cpu:.0%}", r.note,
        ])  # fmt: skip
    return c.md_table(
        ["server", "clients", "+1 stalled", "messages", "delivered msg/s", "p50 ms", "p99 ms",
         "delivered", "resync frames", "RSS idle / peak MB", "CPU server / clients", "note"],
        rows,
    )  # fmt: skip


def soak_table(soaks: list[Soak]) -> str:
    rows = [
        [s.system, f"{s.samples[0][1]:.0f}", f"{max(m for _, m in s.samples):.0f}",
         f"{s.samples[-1][1]:.0f}", f"{s.growth_mb:+.1f}", f"{s.delivered:,}/{s.expected:,}"]
        for s in soaks if s.samples
    ]  # fmt: skip
    return c.md_table(
        ["server", "RSS start MB", "RSS max MB", "RSS end MB", "growth MB",
         "delivered to readers"],
        rows,
    )  # fmt: skip


def goals(runs: list[Run], soaks: list[Soak]) -> list[tuple[str, bool, str]]:
    def pick(system: str, stalled: int) -> Run | None:
        big = [r for r in runs if r.system == system and r.stalled == stalled]
        return max(big, key=lambda r: r.readers) if big else None

    out = []
    ours, theirs = pick("ours", 0), pick("broadcaster", 0)
    if ours and theirs:
        ratio = ours.rate / theirs.rate if theirs.rate else float("inf")
        out.append((
            f">= 2x broadcaster's delivery rate at {ours.readers} clients",
            ratio >= 2 and ours.delivered == ours.expected,
            f"{ratio:.2f}x ({ours.rate:,.0f} vs {theirs.rate:,.0f} msg/s)",
        ))  # fmt: skip
        out.append((
            f"lower p99 than broadcaster at {ours.readers} clients",
            ours.p99_ms < theirs.p99_ms,
            f"{ours.p99_ms:.1f} vs {theirs.p99_ms:.1f} ms",
        ))  # fmt: skip
    soak = {s.system: s for s in soaks}
    if "ours" in soak:
        s = soak["ours"]
        other = soak.get("broadcaster")
        detail = f"ours +{s.growth_mb:.1f} MB"
        if other is not None:
            detail += f", broadcaster +{other.growth_mb:.1f} MB"
        out.append(("flat memory with a stalled client (growth < 5 MB)", s.growth_mb < 5, detail))
    return out


def chart(runs: list[Run], soaks: list[Soak], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels, ours, theirs = [], [], []
    for readers in sorted({r.readers for r in runs}):
        for stalled in (0, 1):
            pair = {r.system: r for r in runs if r.readers == readers and r.stalled == stalled}
            labels.append(f"{readers}{' +stall' if stalled else ''}")
            ours.append(pair["ours"].rate if "ours" in pair else 0)
            theirs.append(pair["broadcaster"].rate if "broadcaster" in pair else 0)
    xs = range(len(labels))
    left.bar([x - 0.2 for x in xs], ours, 0.4, label="ours", color="#3b7dd8")
    left.bar([x + 0.2 for x in xs], theirs, 0.4, label="broadcaster", color="#9aa5b1")
    left.set_xticks(list(xs), labels)
    left.set_ylabel("delivered messages/s")
    left.set_title("Fan-out delivery rate")
    left.legend()
    for s in soaks:
        right.plot(
            [t for t, _ in s.samples], [m for _, m in s.samples], label=s.system,
            color="#3b7dd8" if s.system == "ours" else "#9aa5b1",
        )  # fmt: skip
    right.set_xlabel("seconds")
    right.set_ylabel("server RSS (MB)")
    right.set_title("Stalled client soak (4 KiB x 500/s)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

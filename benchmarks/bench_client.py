"""Client overhead: RedisClient against raw redis-py doing the same commands.

Both talk to the same embedded server over loopback, in the same process, interleaved in
short rounds (the order rotates from round to round) so machine noise hits all sides alike.
Reported as operations/s and the ratio ours/raw (median of the per-round ratios).

Two raw baselines, both capped at the same 50 connections as ours:

- ``raw``: what a redis-py user gets by default, ``redis.asyncio.Redis.from_url(url,
  max_connections=50)``: a ``ConnectionPool`` (raises when full instead of waiting) with
  redis-py 8.1's default timeouts (5 s socket timeout) and ``Retry``. The goal is measured
  against this one, the cheaper of the two.
- ``raw blocking``: ``BlockingConnectionPool(max_connections=50, timeout=5)``, the redis-py
  pool with our pool's semantics (callers wait for a free connection).

Sessions: the raw side runs the very scripts of the session store (imported from
:mod:`gateway_redis.sessions.scripts`, not copied) by EVALSHA through ``register_script``,
on the same keys with the same arguments, so the ratio measures our overhead (ID checks,
the call wrapper, decoding the reply into a :class:`~gateway_redis.Session`), not a
different algorithm. Per call it does what a hand-written redis-py version must: derive
the keys (SHA-256) and, for create, draw a new random ID. It returns the script's raw
reply, undecoded.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.sessions.codec import (
    capped_ttl_ms,
    check_user_id,
    decode_session,
    encode_metadata,
    index_member,
    is_valid_id,
    new_id,
)
from gateway_redis.sessions.scripts import LIBRARY, SCRIPTS

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from gateway_redis.sessions import SessionStore

Op = Callable[[int], Awaitable[object]]


@dataclass
class Row:
    case: str
    concurrency: int
    ours: float
    raw: float
    blocking: float
    ratios: list[float] = field(default_factory=list)
    blocking_ratios: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """ours / raw (default pool), median of the per-round ratios."""
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def blocking_ratio(self) -> float:
        """ours / raw with a BlockingConnectionPool, median of the per-round ratios."""
        return statistics.median(self.blocking_ratios) if self.blocking_ratios else float("nan")


async def _rate(op: Op, total: int, concurrency: int) -> float:
    per_worker = total // concurrency

    async def worker(w: int) -> None:
        base = w * per_worker
        for i in range(per_worker):
            await op(base + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return (per_worker * concurrency) / (time.perf_counter() - started)


def _cpu_us(fn: Callable[[], object], number: int = 20_000) -> float:
    """Best-of-5 microseconds per call of ``fn`` (no I/O: pure Python work, so CPU time)."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


@dataclass
class Costs:
    """CPU per call of the Python work around the round trip, and which side does it."""

    rows: list[tuple[str, float]] = field(default_factory=list)


async def _async_cpu_us(fn: Callable[[], Awaitable[object]], number: int = 20_000) -> float:
    """Best-of-5 microseconds per awaited call of ``fn`` (which must not wait on I/O)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            await fn()
        best = min(best, time.perf_counter() - started)
    return best / number * 1e6


async def _nothing(r: object) -> None:
    return None


async def _costs(
    costs: Costs, ours: RedisClient, store: SessionStore, sid: str, get: AsyncScript
) -> None:
    key = store._index.session_key(sid)
    reply = await ours.execute("get", lambda r: get([key], client=r))
    costs.rows += [
        ("ours only, every call: `RedisClient.execute` (state checks, deadline)",
         await _async_cpu_us(lambda: ours.execute("x", _nothing))),
        ("both sides, session get: the session key (SHA-256)",
         _cpu_us(lambda: store._index.session_key(sid))),
        ("ours only, session get: ID format check", _cpu_us(lambda: is_valid_id(sid))),
        ("ours only, session get: reply -> `Session` (`decode_session`)",
         _cpu_us(lambda: decode_session(sid, reply, store._idle_ms))),
        ("both sides, session create: new ID + both keys",
         _cpu_us(lambda: (store._index.session_key(new_id()), store._index.index_key("u1")))),
        ("ours only, session create: user id and TTL checks, metadata to JSON",
         _cpu_us(lambda: (
             check_user_id("u1"), encode_metadata({"n": 1}), capped_ttl_ms("ttl", 60)))),
    ]  # fmt: skip


async def run(
    total: int = 2000,
    rounds: int = 15,
    progress: Callable[[str], None] = print,
    costs: Costs | None = None,
) -> list[Row]:
    server = EmbeddedRedis()
    await server.astart()
    rows: list[Row] = []
    try:
        config = RedisConfig(url=server.url, pool_size=50, min_idle_conns=50, pool_timeout=5.0)
        raw = aioredis.Redis.from_url(server.url, max_connections=50)
        blocking_pool = aioredis.BlockingConnectionPool.from_url(
            server.url, max_connections=50, timeout=5
        )
        blocking = aioredis.Redis(connection_pool=blocking_pool)
        # Ours opens its 50 connections at connect (min_idle_conns); open the raw ones too.
        for r in (raw, blocking):
            await asyncio.gather(*(r.ping() for _ in range(50)))
        async with RedisClient(config) as ours:
            store = ours.sessions
            await raw.set("gw:bench:key", b"x" * 100)
            sid = await ours.create_session("bench-user", {"role": "user"})
            scripts = {
                name: raw.register_script(LIBRARY + SCRIPTS[name]) for name in ("get", "create")
            }

            def raw_session_get(r: aioredis.Redis) -> Op:
                def op(i: int) -> Awaitable[object]:
                    return scripts["get"]([store._index.session_key(sid)], client=r)

                return op

            def raw_session_create(r: aioredis.Redis) -> Op:
                def op(i: int) -> Awaitable[object]:
                    user = f"u{i % 64}"
                    sid = new_id()
                    keys = [store._index.session_key(sid), store._index.index_key(user)]
                    limits: list[str | int] = [60_000, store._idle_ms, 100]
                    tail = [store._index.session_prefix, "m:n", "1"]
                    args = [index_member(sid), user, *limits, *tail]
                    return scripts["create"](keys, args, client=r)

                return op

            cases: list[tuple[str, Op, Callable[[aioredis.Redis], Op]]] = [
                ("GET", lambda i: ours.get("bench:key"), lambda r: lambda i: r.get("gw:bench:key")),
                (
                    "SET (ttl)",
                    lambda i: ours.set(f"bench:{i % 512}", b"v", 60),
                    lambda r: lambda i: r.set(f"gw:bench:{i % 512}", b"v", px=60000),
                ),
                ("INCR", lambda i: ours.increment("bench:n"),
                 lambda r: lambda i: r.incr("gw:bench:n")),
                ("session get", lambda i: ours.get_session(sid), raw_session_get),
                (
                    "session create",
                    lambda i: ours.create_session(f"u{i % 64}", {"n": 1}, ttl=60),
                    raw_session_create,
                ),
            ]  # fmt: skip
            for name, our_op, raw_op in cases:
                sides: list[tuple[str, Op]] = [
                    ("ours", our_op),
                    ("raw", raw_op(raw)),
                    ("blocking", raw_op(blocking)),
                ]
                for concurrency in (1, 50):
                    for _, op in sides:  # warm up (first calls, script loading): not counted
                        await _rate(op, max(concurrency, total // 10), concurrency)
                    rates: dict[str, list[float]] = {side: [] for side, _ in sides}
                    for n in range(rounds):
                        # rotate the order, so that every side runs first, second and last
                        # equally often
                        shift = n % len(sides)
                        for side, op in sides[shift:] + sides[:shift]:
                            rates[side].append(await _rate(op, total, concurrency))
                    row = Row(
                        name,
                        concurrency,
                        statistics.median(rates["ours"]),
                        statistics.median(rates["raw"]),
                        statistics.median(rates["blocking"]),
                        [o / r for o, r in zip(rates["ours"], rates["raw"], strict=True)],
                        [o / b for o, b in zip(rates["ours"], rates["blocking"], strict=True)],
                    )
                    rows.append(row)
                    progress(
                        f"  {name:<15} x{concurrency:<3} ours {row.ours:9.0f}/s  "
                        f"raw {row.raw:9.0f}/s  ratio {row.ratio:.2f}  "
                        f"(raw blocking {row.blocking:9.0f}/s, ratio {row.blocking_ratio:.2f})"
                    )
            if costs is not None:
                await _costs(costs, ours, store, sid, scripts["get"])
        for r in (raw, blocking):
            await r.aclose()
        await raw.connection_pool.disconnect()
        await blocking_pool.disconnect()
    finally:
        server.cleanup()
    return rows


def goals(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """Every operation within 10% of raw redis-py (default pool): cache commands, sessions."""

    def worst(group: list[Row]) -> tuple[bool, str]:
        row = min(group, key=lambda r: r.ratio)
        return row.ratio >= 0.9, f"worst ratio {row.ratio:.2f} ({row.case}, x{row.concurrency})"

    cache = worst([r for r in rows if not r.case.startswith("session")])
    sessions = worst([r for r in rows if r.case.startswith("session")])
    return [
        ("RedisClient GET/SET/INCR within 10% of raw redis-py", *cache),
        ("sessions within 10% of raw redis-py running the same scripts", *sessions),
    ]


def cost_table(costs: Costs) -> str:
    lines = ["| Python work around the round trip (in process, no I/O) | µs/call |", "|---|---:|"]
    lines += [f"| {label} | {us:.1f} |" for label, us in costs.rows]
    return "\n".join(lines)


DESCRIPTION = (
    "The same commands through `RedisClient` and through raw redis-py 8.1 on one embedded "
    "Redis, in one process, interleaved in short rounds (order rotating); ops/s are medians of "
    "the rounds, ratios medians of the per-round ratios. Raw redis-py as a user gets it by "
    "default: `Redis.from_url(url, max_connections=50)` (a `ConnectionPool`, 5 s socket "
    "timeout, default `Retry`); the last two columns use redis-py's "
    "`BlockingConnectionPool(max_connections=50, timeout=5)`, the pool with our semantics "
    "(wait for a free connection). Ours: `pool_size=50`, every call under its 1.5 s "
    "deadline. Sessions: the raw side runs the same Lua scripts (imported from "
    "`gateway_redis.sessions.scripts`) by EVALSHA with the same keys and arguments, deriving the "
    "keys and a new ID per call as hand-written code must, and returns the reply undecoded; "
    "ours also checks the ID and decodes the reply into a `Session` (table below)."
)


def table(rows: list[Row]) -> str:
    lines = [
        "| operation | concurrency | RedisClient ops/s | raw redis-py ops/s | ours / raw "
        "| raw, blocking pool, ops/s | ours / raw blocking |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.concurrency} | {r.ours:,.0f} | {r.raw:,.0f} | {r.ratio:.2f} "
            f"| {r.blocking:,.0f} | {r.blocking_ratio:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(asyncio.run(run())))

"""Client overhead: RedisClient against raw redis-py doing the same commands.

Both talk to the same embedded server over loopback, in the same process, interleaved in
rounds so machine noise hits both alike. Reported as operations/s and the ratio ours/raw.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis


@dataclass
class Row:
    case: str
    concurrency: int
    ours: float
    raw: float

    @property
    def ratio(self) -> float:
        return self.ours / self.raw if self.raw else float("nan")


async def _rate(op: Callable[[int], Awaitable[object]], total: int, concurrency: int) -> float:
    per_worker = total // concurrency

    async def worker(w: int) -> None:
        base = w * per_worker
        for i in range(per_worker):
            await op(base + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return (per_worker * concurrency) / (time.perf_counter() - started)


async def run(
    total: int = 4000, rounds: int = 5, progress: Callable[[str], None] = print
) -> list[Row]:
    server = EmbeddedRedis()
    await server.astart()
    rows: list[Row] = []
    try:
        config = RedisConfig(url=server.url, pool_size=50, min_idle_conns=50, pool_timeout=5.0)
        raw_pool = aioredis.BlockingConnectionPool.from_url(
            server.url, max_connections=50, timeout=5
        )
        raw = aioredis.Redis(connection_pool=raw_pool)
        async with RedisClient(config) as ours:
            await raw.set("gw:bench:key", b"x" * 100)
            sid = await ours.create_session("bench-user", {"role": "user"})
            session_key = next(iter(await raw.keys("gw:session:*")))

            cases: list[
                tuple[str, Callable[[int], Awaitable[object]], Callable[[int], Awaitable[object]]]
            ] = [
                ("GET", lambda i: ours.get("bench:key"), lambda i: raw.get("gw:bench:key")),
                (
                    "SET (ttl)",
                    lambda i: ours.set(f"bench:{i % 512}", b"v", 60),
                    lambda i: raw.set(f"gw:bench:{i % 512}", b"v", px=60000),
                ),
                ("INCR", lambda i: ours.increment("bench:n"), lambda i: raw.incr("gw:bench:n")),
                (
                    "session get",
                    lambda i: ours.get_session(sid),
                    # The raw equivalent: one HGETALL of the session hash (no Lua, no checks).
                    lambda i: raw.hgetall(session_key),
                ),
                (
                    "session create",
                    lambda i: ours.create_session(f"u{i % 64}", {"n": 1}, ttl=60),
                    lambda i: raw.hset(f"gw:rawsession:{i}", mapping={"user_id": "u", "m:n": "1"}),
                ),
            ]
            for name, our_op, raw_op in cases:
                for concurrency in (1, 50):
                    ours_rates, raw_rates = [], []
                    for _ in range(rounds):
                        raw_rates.append(await _rate(raw_op, total, concurrency))
                        ours_rates.append(await _rate(our_op, total, concurrency))
                    row = Row(
                        name,
                        concurrency,
                        statistics.median(ours_rates),
                        statistics.median(raw_rates),
                    )
                    rows.append(row)
                    progress(
                        f"  {name:<15} x{concurrency:<3} ours {row.ours:9.0f}/s  "
                        f"raw {row.raw:9.0f}/s  ratio {row.ratio:.2f}"
                    )
        await raw.aclose()
        await raw_pool.disconnect()
    finally:
        server.cleanup()
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| operation | concurrency | RedisClient ops/s | raw redis-py ops/s | ours / raw |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.concurrency} | {r.ours:,.0f} | {r.raw:,.0f} | {r.ratio:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(asyncio.run(run())))

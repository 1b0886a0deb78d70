"""Channel history: the cost of publishing with history against a plain publish, and of
reading back 1,000 missed messages.

Both publishes go through the same :class:`~gateway_redis.RedisClient` to the same
embedded server, on channels with one subscriber each (the client's own hub), in short
rounds whose order alternates, so machine noise hits both alike. Reported: messages/s and
microseconds per message of each, and the ratio history/plain (median of the per-round
ratios; the goal is at most 1.5). The recovery part times :meth:`ChannelHistory.read` of
1,000 messages (what a reconnecting socket that missed them costs the bridge).

Run: ``python -m benchmarks.bench_history [--rounds 8] [--per-round 2000]
[--concurrency 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from gateway_redis import ChannelHistory, Message, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis

__all__ = ["main", "run"]

Publish = Callable[[int], Awaitable[object]]
BODY = {"text": "a typical notification body", "n": 0, "tags": ["a", "b"]}


def _ignore(message: Message) -> None:
    """The subscribers' callback: delivery is measured, consumption is not."""


async def _rate(publish: Publish, total: int, concurrency: int) -> float:
    per_worker = total // concurrency

    async def worker(w: int) -> None:
        for i in range(per_worker):
            await publish(w * per_worker + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return per_worker * concurrency / (time.perf_counter() - started)


async def run(rounds: int, per_round: int, concurrency: int) -> dict[str, float]:
    """The figures (see the module docstring); bounded by ``rounds * per_round * 2``
    publishes plus 20 reads of 1,000 messages."""
    server = EmbeddedRedis()
    server.start()
    try:
        async with RedisClient(RedisConfig(url=server.url)) as client:
            history = ChannelHistory(client, size=1000, ttl=300)
            plain_sub = await client.pubsub.subscribe("bench:plain", on_message=_ignore)
            hist_sub = await client.pubsub.subscribe("bench:hist", on_message=_ignore)

            async def plain(i: int) -> object:
                return await client.publish("bench:plain", {**BODY, "n": i})

            async def with_history(i: int) -> object:
                return await history.publish("bench:hist", {**BODY, "n": i})

            await _rate(plain, 200, concurrency)  # warm-up: connections, scripts loaded
            await _rate(with_history, 200, concurrency)
            plain_rates: list[float] = []
            hist_rates: list[float] = []
            ratios: list[float] = []
            for r in range(rounds):
                order = [(plain, plain_rates), (with_history, hist_rates)]
                if r % 2:
                    order.reverse()
                got: dict[Publish, float] = {}
                for publish, rates in order:
                    rate = await _rate(publish, per_round, concurrency)
                    rates.append(rate)
                    got[publish] = rate
                ratios.append(got[plain] / got[with_history])  # cost ratio history/plain
            await plain_sub.close()
            await hist_sub.close()

            top = await history.position("bench:hist")
            since = (top.epoch, top.offset - 1000)
            reads = []
            for _ in range(20):
                started = time.perf_counter()
                page = await history.read("bench:hist", since=since, limit=1000)
                reads.append(time.perf_counter() - started)
                assert page.recovered
                assert len(page.messages) == 1000
    finally:
        server.cleanup()
    plain_rate, hist_rate = statistics.median(plain_rates), statistics.median(hist_rates)
    return {
        "plain_per_s": plain_rate,
        "history_per_s": hist_rate,
        "plain_us": 1e6 / plain_rate,
        "history_us": 1e6 / hist_rate,
        "cost_ratio": statistics.median(ratios),
        "read_1000_median_ms": statistics.median(reads) * 1000,
        "read_1000_max_ms": max(reads) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    figures = asyncio.run(run(args.rounds, args.per_round, args.concurrency))
    print("| figure | value |\n|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:,.2f} |")
    verdict = "met" if figures["cost_ratio"] <= 1.5 else "NOT met"
    print(f"\ngoal (history/plain cost per message <= 1.5x): {verdict}")


if __name__ == "__main__":
    main()

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

__all__ = ["goals", "main", "run", "section"]

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
        # a connection for each publish in flight: waiting for one is not what is measured
        config = RedisConfig(url=server.url, pool_size=max(10, concurrency))
        async with RedisClient(config) as client:
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


def goals(figures: dict[str, float]) -> list[tuple[str, bool, str]]:
    """The goal row: publishing with history costs at most 1.5x a plain publish."""
    ratio = figures["cost_ratio"]
    return [
        (
            "publish with history: cost per message <= 1.5x a plain publish",
            ratio <= 1.5,
            f"{ratio:.2f}x ({figures['history_us']:.0f} vs {figures['plain_us']:.0f} µs/message)",
        )
    ]


def section(quick: bool = False) -> tuple[str, list[tuple[str, bool, str]]]:
    """The report's section on history (markdown) and its goal rows: the publish cost
    (this module), recovery on reconnect (:mod:`benchmarks.bench_recovery`) and fan-out
    to 1,000 sockets with every message published through history vs encode/broadcaster
    (:mod:`benchmarks.bench_fanout`, system ``ours+history``), all in this run."""
    from benchmarks import _common as c
    from benchmarks import bench_fanout, bench_recovery

    c.progress("  publish with history vs plain publish")
    cost = asyncio.run(run(*((2, 1000, 16) if quick else (8, 2000, 16))))
    c.progress(f"  cost ratio {cost['cost_ratio']:.2f}; recovery of 1,000 missed messages")
    recovery = asyncio.run(bench_recovery.run(rounds=20 if quick else 100))
    c.progress(f"  recovery p99 {recovery['p99_ms']:.1f} ms; fan-out with history")
    sizes = ((1000, 60),) if quick else ((1000, 200),)
    systems = (bench_fanout.HISTORY, "broadcaster")
    runs, _ = bench_fanout.run(sizes=sizes, systems=systems, soak=False)
    rows = goals(cost) + bench_recovery.goals(recovery)
    by = {r.system: r for r in runs if not r.stalled}
    ours, theirs = by.get(bench_fanout.HISTORY), by.get("broadcaster")
    if ours is not None and theirs is not None:
        ratio = ours.rate / theirs.rate if theirs.rate else float("inf")
        rows.append((
            f"fan-out to {ours.readers:,} sockets with history >= 2x broadcaster",
            ratio >= 2 and ours.delivered == ours.expected,
            f"{ratio:.2f}x ({ours.rate:,.0f} vs {theirs.rate:,.0f} msg/s)",
        ))  # fmt: skip
    table = c.md_table(["figure", "value"], [[k, f"{v:,.2f}"] for k, v in cost.items()], "lr")
    text = (
        "## 7. History and recovery\n\n"
        "Publish cost: " + (__doc__ or "").split("\n\n")[1].replace("\n", " ") + "\n\n"
        + table + "\n\nRecovery on reconnect: "
        + (bench_recovery.__doc__ or "").split("\n\n")[1].replace("\n", " ") + "\n\n"
        + c.md_table(["figure", "value"], [[k, f"{v:,.1f}"] for k, v in recovery.items()], "lr")
        + "\n\nFan-out with history: as in section 3 (same harness, no soak), with every "
        "message published through `ChannelHistory` (10 in flight; message frames carry "
        "offsets) against encode/broadcaster's plain PUBLISHes, in this run:\n\n"
        + bench_fanout.table(runs) + "\n\n" + _goal_table(rows) + "\n"
    )  # fmt: skip
    return text, rows


def _goal_table(rows: list[tuple[str, bool, str]]) -> str:
    from benchmarks import _common as c

    return c.md_table(
        ["goal", "holds", "measured"],
        [[name, "yes" if ok else "**no**", detail] for name, ok, detail in rows],
        "llr",
    )


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

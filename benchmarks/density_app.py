"""The example gateway (``examples.realtime``) with a memory probe, for the density benchmark:
``uvicorn benchmarks.density_app:create --factory``.

``GET /_density/memory`` answers, as JSON: the process's RSS, the number of asyncio tasks,
the live objects by type (``gc``, top 25) and, with ``DENSITY_TRACEMALLOC=<frames>`` in
the environment (tracing from startup, which costs CPU and memory of its own: not for
RSS figures), the allocations grouped by source line, as a difference from the snapshot
taken by ``GET /_density/memory?baseline=1``. Everything else goes to the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from examples.realtime import create_app

_PATH = "/_density/memory"


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _chains() -> list[str]:
    """The await chains of the tasks, as lines ``count x chain`` (most common first)."""
    chains: collections.Counter[str] = collections.Counter()
    for task in asyncio.all_tasks():
        names, step = [], task.get_coro()
        while step is not None and len(names) < 60:
            code = getattr(step, "cr_code", None) or getattr(step, "gi_code", None)
            names.append(step.__qualname__ if code is not None else type(step).__qualname__)
            step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)
        chains[f"{len(names)}: " + " > ".join(names)] += 1
    return [f"{n} x {chain}" for chain, n in chains.most_common(4)]


class MemoryProbe:
    """Pure ASGI: the probe route, in front of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.baseline: tracemalloc.Snapshot | None = None
        frames = int(os.environ.get("DENSITY_TRACEMALLOC") or 0)
        if frames:
            tracemalloc.start(frames)

    # A plain __call__ that returns the app's awaitable for everything but the probe's
    # route: the probe keeps no frame of its own under each socket it measures.
    _asgi_single_callable = True

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or scope["path"] != _PATH:
            return self.app(scope, receive, send)
        return self._answer(scope, send)

    async def _answer(self, scope: Scope, send: Send) -> None:
        body = json.dumps(self.report(b"baseline=1" in scope.get("query_string", b""))).encode()
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/json")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    def report(self, baseline: bool) -> dict[str, Any]:
        gc.collect()
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        out: dict[str, Any] = {
            "rss_kib": _rss_kib(),
            "tasks": len(asyncio.all_tasks()),
            "objects": len(gc.get_objects()),
            "types": types.most_common(25),
            "chains": _chains(),
        }
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if baseline or self.baseline is None:
                self.baseline = snapshot
            stats = snapshot.compare_to(self.baseline, "lineno")
            out["traced_kib"] = sum(s.size for s in snapshot.statistics("filename")) // 1024
            out["lines"] = [
                [str(s.traceback[0]), s.size_diff // 1024, s.count_diff] for s in stats[:40]
            ]
            files = snapshot.compare_to(self.baseline, "filename")
            out["files"] = [[str(s.traceback[0]), s.size_diff // 1024] for s in files[:25]]
        return out


def _log_collections() -> None:
    """With ``DENSITY_GC_LOG=1``: every generation-2 collection, its pause and what it
    went through, to stderr (the server's log; keep it with ``BENCH_KEEP_LOG=1``)."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pause = (time.perf_counter() - started[0]) * 1000
            print(f"gen-2 collection: {pause:.0f} ms, {info['collected']} collected",
                  file=sys.stderr, flush=True)  # fmt: skip

    gc.callbacks.append(callback)


def create() -> ASGIApp:
    if os.environ.get("DENSITY_GC_LOG"):
        _log_collections()
    return MemoryProbe(create_app())

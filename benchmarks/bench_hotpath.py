"""Gateway hot path: the same endpoint behind uvicorn under wrk, for each middleware stack.

Every case serves ``GET /api/data`` from ``benchmarks.apps`` (one uvicorn worker, uvloop,
httptools, no access log), started fresh, warmed up for a few seconds, then measured with
wrk (fixed connections and duration). Every request carries the same bearer token and
session cookie. Cases run in rounds, in alternating order, with each compared pair back to
back (``RUN_ORDER``); tables show the median of the rounds and goals the median of the
per-round ratios, so a slow patch of the machine hits both sides of a ratio alike.

"Cold" is measured two ways, honestly: with L1 off (the invalidation bus is never started,
so every request reads Redis: the state of an instance whose invalidation channel is down)
and with a never-seen token on every request (L1 and L2 miss: PyJWT verification plus the
L2 write; permissions and session stay warm because they belong to the same user).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psutil
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks import _common as c
from benchmarks.apps import COOKIE, GRANTS_KEY, NAIVE_PREFIX, PERMISSION
from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis

ISSUER = "https://issuer.bench"
AUDIENCE = "bench-api"
SECRET = "bench-secret-" + "k" * 40
SUBJECT = "bench-user"


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    env: dict[str, str]
    token: str = "hs"  # which token the requests carry: "hs" or "rs"
    unique_tokens: bool = False


CASES = [
    Case("bare", "bare Starlette", {"BENCH_VARIANT": "bare"}),
    Case("probe", "probe: 3 pure-ASGI in-process lookups", {"BENCH_VARIANT": "probe"}),
    Case("hs256", "PyJWT HS256 verify per request", {"BENCH_VARIANT": "pyjwt-hs256"}),
    Case("rs256", "PyJWT RS256 verify per request", {"BENCH_VARIANT": "pyjwt-rs256"}, "rs"),
    Case("naive", "naive: 3 redis-py GETs (JWT, RBAC, session)", {"BENCH_VARIANT": "naive"}),
    Case("l1off", "ours, L1 off (every lookup from Redis)", {"BENCH_VARIANT": "ours",
                                                               "BENCH_L1": "off"}),
    Case("cold", "ours, cold: a new token per request", {"BENCH_VARIANT": "ours"},
         unique_tokens=True),
    Case("warm", "ours, warm (L1 hits)", {"BENCH_VARIANT": "ours"}),
    Case("warm-fused", "ours, warm, one layer (GatewayMiddleware)",
         {"BENCH_VARIANT": "ours", "BENCH_FUSED": "1"}),
    Case("cached", "ours, warm, one layer + response cache hit (L1)",
         {"BENCH_VARIANT": "ours", "BENCH_FUSED": "1", "BENCH_CACHE": "1"}),
]  # fmt: skip
OTEL_CASES = [
    Case("otel-bare", "bare Starlette + ASGI instrumentation",
         {"BENCH_VARIANT": "bare", "BENCH_OTEL": "1"}),
    Case("otel-ours-nospans", "ours warm + ASGI instrumentation, our spans off",
         {"BENCH_VARIANT": "ours", "BENCH_OTEL": "1", "BENCH_OUR_SPANS": "0"}),
    Case("otel-ours", "ours warm + ASGI instrumentation + our spans",
         {"BENCH_VARIANT": "ours", "BENCH_OTEL": "1"}),
    Case("otel-ours-fused", "ours warm, one layer + ASGI instrumentation + our spans",
         {"BENCH_VARIANT": "ours", "BENCH_OTEL": "1", "BENCH_FUSED": "1"}),
]  # fmt: skip


@dataclass
class Measured:
    case: Case
    runs: list[c.WrkResult] = field(default_factory=list)
    commands_per_request: float = float("nan")

    def _median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs) if self.runs else 0.0

    @property
    def rps(self) -> float:
        return self._median("rps")

    @property
    def p50(self) -> float:
        return self._median("p50_ms")

    @property
    def p99(self) -> float:
        return self._median("p99_ms")

    @property
    def cpu_us(self) -> float:
        """Median server CPU time per request (µs): unlike req/s, not lowered when the load
        generator, not the server, is what runs short of CPU."""
        values = [1e6 * r.server_cpu / r.rps for r in self.runs if r.rps]
        return statistics.median(values) if values else float("nan")

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def spread(self) -> str:
        """Lowest-highest req/s over the rounds."""
        rates = [r.rps for r in self.runs]
        return f"{min(rates):,.0f}-{max(rates):,.0f}" if rates else "-"


def _ratios(a: Measured, b: Measured) -> list[float]:
    """``a / b`` per round (each round runs the pair back to back)."""
    return [x.rps / y.rps for x, y in zip(a.runs, b.runs, strict=False) if y.rps]


def _round_ratios(a: Measured, b: Measured) -> str:
    return ", ".join(f"{r:.2f}" for r in _ratios(a, b))


def paired_ratio(a: Measured, b: Measured) -> float:
    """The median of the per-round ratios: robust to the machine slowing down between rounds."""
    ratios = _ratios(a, b)
    return statistics.median(ratios) if ratios else float("nan")


# The order within a round: every stack that a goal compares runs right next to its base,
# so a slow patch of the machine hits both sides of a ratio alike.
RUN_ORDER = [
    "warm-fused", "bare", "cached", "warm", "naive", "probe", "hs256", "rs256", "l1off", "cold",
    "otel-ours-fused", "otel-bare", "otel-ours", "otel-ours-nospans",
]  # fmt: skip


@dataclass
class Fixture:
    hs_token: str
    rs_token: str
    session_id: str
    public_key_path: str
    redis_url: str
    token_files: list[str]


def _claims(now: int) -> dict[str, Any]:
    return {
        "sub": SUBJECT, "roles": ["user"], "iat": now, "exp": now + 3600,
        "jti": uuid.uuid4().hex, "iss": ISSUER, "aud": AUDIENCE,
    }  # fmt: skip


async def _prepare(redis_url: str) -> tuple[str, str, str, str]:
    """Tokens, a session, the grants and the naive stack's keys; returns
    ``(hs_token, rs_token, session_id, public_key_path)``."""
    now = int(time.time())
    hs_token = jwt.encode(_claims(now), SECRET, algorithm="HS256")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs_token = jwt.encode(_claims(now), private, algorithm="RS256")
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd, public_path = tempfile.mkstemp(prefix="bench-rs256-", suffix=".pem")
    os.write(fd, pem)
    os.close(fd)
    async with RedisClient(RedisConfig(url=redis_url)) as client:
        session_id = await client.create_session(SUBJECT, {"theme": "dark", "n": 1}, ttl=7200)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.sadd("gw:" + GRANTS_KEY + SUBJECT, PERMISSION)
        claims = jwt.decode(hs_token, options={"verify_signature": False})
        digest = hashlib.sha256(hs_token.encode()).hexdigest()
        await raw.set(f"{NAIVE_PREFIX}jwt:{digest}", json.dumps(claims))
        await raw.set(f"{NAIVE_PREFIX}rbac:{SUBJECT}", json.dumps([PERMISSION]))
        await raw.set(
            f"{NAIVE_PREFIX}session:{session_id}",
            json.dumps({"user_id": SUBJECT, "theme": "dark", "n": 1}),
        )
    finally:
        await raw.aclose()
    return hs_token, rs_token, session_id, public_path


def _token_file(count: int) -> str:
    now = int(time.time())
    fd, path = tempfile.mkstemp(prefix="bench-tokens-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        for _ in range(count):
            f.write(jwt.encode(_claims(now), SECRET, algorithm="HS256") + "\n")
    return path


def _unique_script(path: str, cookie: str, threads: int) -> str:
    return f"""
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  tokens = {{}}
  for line in io.lines("{path}") do tokens[#tokens + 1] = line end
  idx = tid
end
function request()
  local t = tokens[idx]
  idx = idx + {threads}
  if idx > #tokens then idx = tid end
  return wrk.format("GET", nil, {{["Authorization"] = "Bearer " .. t, ["Cookie"] = "{cookie}"}})
end
"""


async def _commands(url: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        info = await r.info("stats")
        return int(info["total_commands_processed"])
    finally:
        await r.aclose()


def _measure_case(
    case: Case,
    fx: Fixture,
    round_no: int,
    *,
    duration: float,
    warmup: float,
    connections: int,
) -> tuple[c.WrkResult, float]:
    env = {
        **case.env,
        "REDIS_URL": fx.redis_url,
        "BENCH_SECRET": SECRET,
        "BENCH_PUBLIC_KEY": fx.public_key_path,
        "BENCH_ISSUER": ISSUER,
        "BENCH_AUDIENCE": AUDIENCE,
    }
    token = fx.rs_token if case.token == "rs" else fx.hs_token
    cookie = f"{COOKIE}={fx.session_id}"
    fixed = c.wrk_script({"Authorization": f"Bearer {token}", "Cookie": cookie})
    if case.unique_tokens:
        script = _unique_script(fx.token_files[round_no], cookie, 2) + c.WRK_DONE
    else:
        script = fixed
    with c.serving("benchmarks.apps:create", env) as server:
        url = server.url + "/api/data"
        c.run_wrk(url, fixed, duration=warmup, connections=connections)
        before = asyncio.run(_commands(fx.redis_url))
        proc = psutil.Process(server.pid)
        cpu_before = sum(proc.cpu_times()[:2])
        result = c.run_wrk(url, script, duration=duration, connections=connections)
        result.server_cpu = (sum(proc.cpu_times()[:2]) - cpu_before) / result.seconds
        after = asyncio.run(_commands(fx.redis_url))
    return result, (after - before - 1) / max(1, result.requests)


def run(
    *,
    duration: float = 6.0,
    warmup: float = 2.0,
    rounds: int = 3,
    connections: int = 50,
    otel: bool = True,
    progress: Callable[[str], None] = c.progress,
    only: Sequence[str] | None = None,
    cases: list[Case] | None = None,
    order: list[str] | None = None,
) -> list[Measured]:
    """``cases`` (default: :data:`CASES` and, with ``otel``, :data:`OTEL_CASES`; ``only``:
    just the cases with these keys) run in rounds in ``order`` (case keys; default
    :data:`RUN_ORDER`)."""
    c.ensure_wrk()
    if cases is None:
        cases = CASES + (OTEL_CASES if otel else [])
    if only is not None:
        cases = [case for case in cases if case.key in only]
    run_order = RUN_ORDER if order is None else order
    server = EmbeddedRedis()
    server.start()
    files: list[str] = []
    try:
        if server.pid is not None:
            c.pin_pid(server.pid, c.LOAD_CPU)
        hs, rs, sid, public = asyncio.run(_prepare(server.url))
        if any(case.unique_tokens for case in cases):
            progress(f"  generating {rounds} x 60,000 unique tokens for the cold case")
            files = [_token_file(60_000) for _ in range(rounds)]
        fx = Fixture(hs, rs, sid, public, server.url, files)
        measured = {case.key: Measured(case) for case in cases}
        total = rounds * len(cases)
        step = 0
        # The first minute of a run measured slow every time (the machine settling after
        # the token generation): one discarded pass of the bare server first.
        progress("  settling: one discarded 5 s run of bare Starlette")
        with c.serving("benchmarks.apps:create", {"BENCH_VARIANT": "bare"}) as settle:
            c.run_wrk(settle.url + "/api/data", c.wrk_script({}), duration=5)
        ordered = sorted(cases, key=lambda k: run_order.index(k.key))
        for round_no in range(rounds):
            sequence = ordered if round_no % 2 == 0 else list(reversed(ordered))
            for case in sequence:
                step += 1
                result, per_request = _measure_case(
                    case, fx, round_no, duration=duration, warmup=warmup, connections=connections
                )
                m = measured[case.key]
                m.runs.append(result)
                m.commands_per_request = per_request
                flag = f"  ERRORS {result.errors}" if result.errors else ""
                progress(
                    f"  [{step:>2}/{total}] {case.label:<50} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"server CPU {result.server_cpu:4.0%}  redis cmds/req {per_request:4.2f}{flag}"
                )
        return [measured[case.key] for case in cases]
    finally:
        server.cleanup()
        for path in [*files, *([public] if "public" in locals() else [])]:
            Path(path).unlink(missing_ok=True)


def table(results: list[Measured]) -> str:
    by_key = {m.case.key: m for m in results}
    bare = by_key["bare"].rps
    rows = []
    for m in results:
        if m.case.key.startswith("otel-"):
            continue
        rows.append([
            m.case.label, f"{m.rps:,.0f}", m.spread, f"{m.rps / bare:.2f}" if bare else "-",
            f"{m.cpu_us:.1f}", f"{m.p50:.2f}", f"{m.p99:.2f}", f"{m.commands_per_request:.2f}",
            m.errors,
        ])  # fmt: skip
    return c.md_table(
        ["stack", "req/s", "rounds", "/ bare", "server CPU µs/req", "p50 ms", "p99 ms",
         "Redis cmds/req", "errors"],
        rows,
    )  # fmt: skip


def otel_table(results: list[Measured]) -> str:
    by_key = {m.case.key: m for m in results}
    if "otel-bare" not in by_key:
        return ""
    base = by_key["otel-bare"].rps
    rows = []
    for key in ("otel-bare", "otel-ours-nospans", "otel-ours", "otel-ours-fused"):
        if key not in by_key:
            continue
        m = by_key[key]
        rows.append([
            m.case.label, f"{m.rps:,.0f}", m.spread, f"{m.rps / base:.2f}",
            f"{m.cpu_us:.0f}", f"{m.p50:.2f}", f"{m.p99:.2f}", m.errors,
        ])  # fmt: skip
    return c.md_table(
        ["stack (SDK records every span)", "req/s", "rounds", "/ instrumented bare",
         "server CPU µs/req", "p50 ms", "p99 ms", "errors"],
        rows,
    )  # fmt: skip


def goals(results: list[Measured]) -> list[tuple[str, bool, str]]:
    by_key = {m.case.key: m for m in results}
    bare, naive = by_key["bare"], by_key["naive"]
    out: list[tuple[str, bool, str]] = []
    if "cached" in by_key:
        hit = by_key["cached"]
        ratio = paired_ratio(hit, bare)
        out.append((
            "cached endpoint hit (L1, behind the warm one-layer stack) >= 90% of bare Starlette",
            ratio >= 0.9,
            f"{ratio:.1%} of bare (median of rounds: {_round_ratios(hit, bare)}); server CPU "
            f"per request {hit.cpu_us:.1f} vs {bare.cpu_us:.1f} µs",
        ))  # fmt: skip
    for key, how in (("warm-fused", "one layer, GatewayMiddleware"), ("warm", "three middleware")):
        if key not in by_key:
            continue
        warm = by_key[key]
        vs_bare, vs_naive = paired_ratio(warm, bare), paired_ratio(warm, naive)
        cpu = bare.cpu_us / warm.cpu_us
        out += [
            (f"warm full stack ({how}) >= 90% of bare Starlette", vs_bare >= 0.9,
             f"{vs_bare:.1%} of bare (median of rounds: {_round_ratios(warm, bare)}); "
             f"server CPU per request {warm.cpu_us:.1f} vs {bare.cpu_us:.1f} µs "
             f"(= {cpu:.0%} of bare's rate at equal CPU)"),
            (f"warm full stack ({how}) >= 3x the naive stack", vs_naive >= 3,
             f"{vs_naive:.2f}x naive (median of rounds: {_round_ratios(warm, naive)})"),
        ]  # fmt: skip
    if "otel-ours" in by_key:
        base, nospans = by_key["otel-bare"], by_key["otel-ours-nospans"]
        for key, how in (("otel-ours-fused", "one layer"), ("otel-ours", "three middleware")):
            if key not in by_key:
                continue
            ours = by_key[key]
            ratio = paired_ratio(ours, base)
            extra = ""
            if key == "otel-ours":
                span_us = ours.cpu_us - nospans.cpu_us
                extra = f"; our span attributes alone: {span_us:+.0f} µs of server CPU/request"
            out.append((
                f"with tracing ({how}): our stack + telemetry add <= 15% on top of ASGI "
                "instrumentation alone",
                ratio >= 0.85,
                f"{1 - ratio:.1%} fewer req/s than instrumented bare (median of rounds: "
                f"{_round_ratios(ours, base)}); server CPU per request {ours.cpu_us:.0f} vs "
                f"{base.cpu_us:.0f} µs (+{ours.cpu_us / base.cpu_us - 1:.0%}){extra}",
            ))  # fmt: skip
    return out


def chart(results: list[Measured], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m.case.label for m in results]
    values = [m.rps for m in results]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.2))
    colors = ["#3b7dd8" if "ours" in lab else "#9aa5b1" for lab in labels]
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("requests/s (1 uvicorn worker, wrk -c50)")
    ax.set_title("Gateway hot path: GET /api/data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CPU_STACKS = {
    "bare": "bare Starlette",
    "probe": "probe: 3 in-process lookups",
    "hs256": "PyJWT HS256 per request",
    "naive": "naive: 3 redis-py GETs (client side only)",
    "l1off": "ours, L1 off (client side only)",
    "warm": "ours, warm",
    "warm-fused": "ours, warm, one layer (GatewayMiddleware)",
    "warm-session": "ours, warm: SessionMiddleware alone",
    "warm-jwt": "ours, warm: JWTMiddleware alone",
    "warm-jwt-rbac": "ours, warm: JWT + RBAC",
}
CPU_OTEL_STACKS = {
    "otel-bare": "bare + ASGI instrumentation",
    "otel-warm-nospans": "ours warm + ASGI instrumentation, our spans off",
    "otel-warm": "ours warm + ASGI instrumentation + our spans",
    "otel-warm-fused": "ours warm, one layer + ASGI instrumentation + our spans",
}


def cpu_costs(progress: Callable[[str], None] = c.progress) -> dict[str, float]:
    """In-process CPU µs/request of each stack (``benchmarks.profile_hotpath``).

    Each traced stack runs in its own process next to its base (``<key>:base``): traced
    stacks measured in one process disturbed each other (the SDK's export thread and
    span queue are process-wide), by up to 25 µs/request.
    """
    from benchmarks import profile_hotpath

    progress("  in-process CPU cost per request (interleaved batches, best of 8)")
    costs = profile_hotpath.run_subprocess(list(CPU_STACKS))
    for key in CPU_OTEL_STACKS:
        if key != "otel-bare":
            paired = profile_hotpath.run_subprocess(["otel-bare", key])
            costs[key], costs[f"{key}:base"] = paired[key], paired["otel-bare"]
            costs["otel-bare"] = min(
                costs.get("otel-bare", paired["otel-bare"]), paired["otel-bare"]
            )
    return costs


def cpu_table(costs: dict[str, float]) -> str:
    rows = []
    for stacks, base in ((CPU_STACKS, "bare"), (CPU_OTEL_STACKS, "otel-bare")):
        for key, label in stacks.items():
            if key in costs:
                over = costs[key] - costs.get(f"{key}:base", costs[base])
                rows.append([label, f"{costs[key]:.1f}", f"{over:+.1f}"])
    return c.md_table(["stack (in process, no server)", "CPU µs/request", "over its base"], rows)

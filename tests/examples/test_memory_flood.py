"""Memory an unauthenticated client can make ``uvicorn examples.gateway:app`` hold (issue 13,
items 1-2): a bounded flood of requests with distinct values at the largest sizes the
server accepts must leave the server's RSS within 10 MB of where it started.

Each kind of value is a flood that, remembered, would hold far more than 10 MB: 1 MiB
session cookies, 1 MiB session cookies beside a well-formed session ID, long paths under
a public prefix, bearer tokens over the size cap, and tokens just under every memo's key
cap (each a validator miss and a negative verdict). RSS is the server process's, measured
with psutil after a warm-up of each kind and again after the flood and a short settle.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env
from tests.processes import uvicorn_process

MB = 1_000_000
MiB = 1 << 20
LIMIT = 10 * MB
DEADLINE = 100.0  # seconds for every flood together (a bound, not a speed check)
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _filler(size: int) -> bytes:
    """``size`` distinct URL-safe bytes (a random prefix, then repetition: cheap to build)."""
    head = secrets.token_urlsafe(24).encode()
    return (head * (size // len(head) + 1))[:size]


def _session_id() -> str:
    """A well-formed session ID (the shape the store issues) that no session has."""
    return f"{secrets.token_hex(6)}.{secrets.token_urlsafe(32)[:42]}A"


Request = Callable[[int], tuple[str, dict[str, str]]]
FLOODS: dict[str, tuple[int, Request]] = {
    # Item 1: a session cookie of 1 MiB, each different (not a session ID's shape).
    "cookie": (200, lambda i: ("/health", {"cookie": f"__Host-session={_filler(MiB).decode()}"})),
    # Item 1: a well-formed ID in a Cookie header padded to 1 MiB by another cookie.
    "padded-cookie": (
        200,
        lambda i: (
            "/health",
            {"cookie": f"__Host-session={_session_id()}; pad={_filler(MiB).decode()}"},
        ),
    ),
    # Item 2: long distinct paths under a public prefix (RBAC rules are checked first). Not
    # /static/: Starlette's StaticFiles answers a long name from an OSError whose traceback
    # cycle holds the path until the next garbage collection (noise, not retention).
    "path": (400, lambda i: (f"/docs/{_filler(60_000).decode()}", {})),
    # Tokens over JWTSettings.max_token_bytes (8 KiB): refused before any lookup.
    "big-token": (200, lambda i: ("/health", {"authorization": f"Bearer {_filler(MiB).decode()}"})),
    # Tokens whose Authorization header is just under the parse memo's key cap.
    "memo-token": (
        1500,
        lambda i: (
            "/health",
            {"authorization": "Bearer e30." + _filler(4096 - 14).decode() + ".sg"},
        ),
    ),
    # Tokens at the size cap, JWT-shaped: each one a validator miss and a negative verdict.
    "capped-token": (
        1500,
        lambda i: (
            "/health",
            {"authorization": "Bearer e30." + _filler(8192 - 8).decode() + ".sg"},
        ),
    ),
}


@pytest.fixture
def gateway(redis_server: EmbeddedRedis) -> Iterator[tuple[str, psutil.Process]]:
    env = gateway_env(redis_server.url)
    with uvicorn_process(["examples.gateway:app"], env) as (port, proc):
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)


def _rss(process: psutil.Process) -> int:
    time.sleep(1.0)  # settle: responses written, buffers freed
    return int(process.memory_info().rss)


def test_a_flood_of_distinct_values_leaves_rss_within_10_mb(
    gateway: tuple[str, psutil.Process],
) -> None:
    base, process = gateway
    deadline = time.monotonic() + DEADLINE
    with httpx.Client(base_url=base, timeout=30) as http:

        def send(kind: str, count: int) -> None:
            make = FLOODS[kind][1]
            for i in range(count):
                assert time.monotonic() < deadline, f"the {kind} flood took too long"
                path, headers = make(i)
                status = http.get(path, headers=headers).status_code
                assert status in (200, 401, 404), (kind, status)

        for kind in FLOODS:  # warm-up: every code path and buffer size once
            send(kind, 5)
        start = _rss(process)
        grown: dict[str, float] = {}
        before = start
        for kind, (count, _) in FLOODS.items():
            send(kind, count)
            after = _rss(process)
            grown[kind] = (after - before) / MB
            before = after
    total = after - start
    assert total <= LIMIT, f"RSS grew by {total / MB:.1f} MB (per flood, MB: {grown})"

"""Black box: public routes cap request bodies before parsing them (issue 13, item 3). A
body over the cap gets 413, whether its ``Content-Length`` says so or it comes chunked,
and the gateway's memory does not grow while it is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import psutil

from examples.auth import MAX_LOGIN_BYTES
from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env
from tests.processes import uvicorn_process

MIB = 1024 * 1024
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class PeakRSS:
    """The highest RSS of ``process`` seen while the block runs (sampled every 2 ms)."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._stop = threading.Event()
        self.peak = process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._process.memory_info().rss)


def _chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    yield b"username=bob&password="
    for _ in range(total // size):
        yield b"a" * size


def test_login_body_over_the_cap_is_413_and_costs_no_memory(
    redis_server: EmbeddedRedis,
) -> None:
    env = gateway_env(redis_server.url, GATEWAY_LOGIN_LIMIT="1000")
    with uvicorn_process(["examples.gateway:app"], env) as (port, proc):
        server = psutil.Process(proc.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            # Warm: every code path of a login loaded once (a wrong password: 401).
            for _ in range(3):
                wrong = http.post("/auth/login", content=b"username=bob&password=x", headers=FORM)
                assert wrong.status_code == 401
                ok = http.post("/auth/login", json={"username": "bob", "password": "x" * 100})
                assert ok.status_code == 401
            at_cap = b"username=bob&password=" + b"a" * (MAX_LOGIN_BYTES - 22)
            assert http.post("/auth/login", content=at_cap, headers=FORM).status_code == 401
            before = server.memory_info().rss
            started = time.monotonic()
            with PeakRSS(server) as sampled:
                declared = http.post(
                    "/auth/login", content=b"username=bob&password=" + b"a" * (64 * MIB),
                    headers=FORM,
                )  # fmt: skip
                chunked = http.post("/auth/login", content=_chunks(16 * MIB), headers=FORM)
                as_json = http.post(
                    "/auth/login",
                    content=b'{"username": "bob", "password": "' + b"a" * (8 * MIB) + b'"}',
                    headers={"Content-Type": "application/json"},
                )
            after = server.memory_info().rss
            assert time.monotonic() - started < 60
            grown = (sampled.peak - before) / MIB
            assert grown < 5, f"RSS grew by {grown:.1f} MiB while refusing the bodies"
            assert (after - before) / MIB < 5
            assert declared.status_code == 413, declared.text
            assert chunked.status_code == 413, chunked.text
            assert as_json.status_code == 413, as_json.text
            assert declared.json()["error"] == "too_large"
            # The connection and the route still work.
            assert http.post("/auth/login", content=at_cap, headers=FORM).status_code == 401

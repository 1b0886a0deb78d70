"""A gateway in its own uvicorn process, for black-box tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

from gateway_redis.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def uvicorn_process(
    app_args: Sequence[str], env: Mapping[str, str]
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``uvicorn <app_args>`` on a free loopback port, yielded once ``/ready`` answers 200.

    ``env`` is added to this process's environment without its ``REDIS_*``/``GATEWAY_*``
    variables. Output goes to a file (a chatty gateway must never block on a full pipe);
    its tail is the error when the process dies at start, and is printed when it logged a
    traceback. The process is terminated (then killed) at the end.
    """
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GATEWAY_"))}
    full.update(env)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *app_args, "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise AssertionError(log.read().decode(errors="replace")[-3000:])
                try:
                    if httpx.get(base + "/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not become ready"
                time.sleep(0.05)
            yield port, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            tail = log.read().decode(errors="replace")
            if "Traceback" in tail:
                print(tail[-5000:])

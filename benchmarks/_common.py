"""Shared helpers: servers under uvicorn, wrk, CPU pinning, percentiles, tables, progress."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway_redis.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PYTHON = sys.executable

# On 2 cores: the server under test gets core 1 to itself; load generators, Redis and the
# harness share core 0. Without taskset (or with fewer cores) nothing is pinned.
SERVER_CPU = "1"
LOAD_CPU = "0"


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cmd: Sequence[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if can_pin() else list(cmd)


def pin_pid(pid: int, cpu: str) -> None:
    """Move a running process (e.g. the embedded Redis) to ``cpu``."""
    if can_pin():
        subprocess.run(["taskset", "-pc", cpu, str(pid)], capture_output=True, check=False)


def pinning_note() -> str:
    if not can_pin():
        return "No CPU pinning (taskset missing or a single core): all processes share the CPUs."
    return (
        f"Pinned with `taskset`: the server under test on core {SERVER_CPU}; the load "
        f"generator, Redis and the harness on core {LOAD_CPU}."
    )


def progress(message: str) -> None:
    print(message, flush=True)


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A markdown table; ``align`` is one char per column (``l`` or ``r``, default ``r``
    except the first column)."""
    spec = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in spec) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- uvicorn servers ----------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


def _wait_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except urllib.error.HTTPError:
            return  # it answers (e.g. 401 from an authenticating middleware): it is up
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready at {url} within {timeout}s:\n{log.read_text()[-3000:]}")


def start_uvicorn(
    target: str,
    env: Mapping[str, str],
    *,
    factory: bool = True,
    ready_path: str = "/health",
    extra_args: Sequence[str] = (),
    timeout: float = 20.0,
) -> Server:
    """Start ``uvicorn target`` (1 worker, no access log) pinned to the server core."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="bench-uvicorn-", suffix=".log")[1])
    cmd = [
        PYTHON, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning",
        "--loop", "uvloop" if uvloop_available() else "asyncio", "--http", "httptools",
        *(["--factory"] if factory else []), *extra_args,
    ]  # fmt: skip
    # This checkout first, then whatever the caller's PYTHONPATH adds (e.g. the bench extra
    # installed with ``pip --target``).
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            pinned(cmd, SERVER_CPU), cwd=ROOT, env=full_env, stdout=out, stderr=out
        )
    server = Server(process, port, log)
    try:
        _wait_http(server.url + ready_path, timeout, process, log)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Server, timeout: float = 10.0) -> None:
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if not os.environ.get("BENCH_KEEP_LOG"):
        with contextlib.suppress(OSError):
            server.log.unlink()


@contextlib.contextmanager
def serving(target: str, env: Mapping[str, str], **kwargs: object) -> Iterator[Server]:
    server = start_uvicorn(target, env, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop(server)


# -- wrk ---------------------------------------------------------------------------------

WRK_DONE = r"""
function done(summary, latency, requests)
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50":%d,"p90":%d,"p99":%d,' ..
    '"mean":%.1f}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def ensure_wrk() -> str:
    """The path of ``wrk``; installs Debian's package when missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    progress("  wrk not found: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk could not be installed")
    return found


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int  # non-2xx/3xx answers plus socket errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu: float = float("nan")  # share of one core the server used (1.0 = 100%)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_script(headers: Mapping[str, str], body: str = "") -> str:
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n" + body + WRK_DONE


def run_wrk(
    url: str,
    script: str,
    *,
    duration: float,
    connections: int = 50,
    threads: int = 2,
    timeout: float = 5.0,
) -> WrkResult:
    """Run wrk (bounded by ``duration`` seconds) against ``url`` with a Lua ``script``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cmd = [
            ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration:g}s",
            f"--timeout={timeout:g}s", "--latency", "-s", path, url,
        ]  # fmt: skip
        done = subprocess.run(
            pinned(cmd, LOAD_CPU),
            capture_output=True,
            text=True,
            check=False,
            timeout=duration + 30,
        )
    finally:
        os.unlink(path)
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            d = json.loads(line[len("BENCHJSON ") :])
            errors = (
                sum(
                    d[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors")
                )
                + d["timeouts"]
            )
            return WrkResult(
                requests=d["requests"],
                seconds=d["duration_us"] / 1e6,
                errors=errors,
                p50_ms=d["p50"] / 1000,
                p90_ms=d["p90"] / 1000,
                p99_ms=d["p99"] / 1000,
            )
    raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

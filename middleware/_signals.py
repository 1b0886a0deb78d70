"""Closing the bridge's sockets with 1001 when uvicorn is told to stop (private).

Why: uvicorn (0.55) handles SIGTERM and SIGINT by setting a flag; its shutdown then stops
listening, calls ``shutdown()`` on every open connection, which closes each WebSocket with
1012 ("service restart") at once, waits for in-flight HTTP requests, and only then runs
the ASGI lifespan shutdown, where :meth:`WebSocketBridge.aclose
<middleware.websocket.WebSocketBridge.aclose>` would have sent 1001 ("going away"): too
late, every socket is gone. No uvicorn setting changes that order
(``--timeout-graceful-shutdown`` bounds the wait for requests, after the 1012s).

What: :class:`SignalDrain`, installed by :meth:`Gateway.lifespan
<middleware.Gateway.lifespan>` once startup is done, puts a handler in front of uvicorn's
for SIGTERM and SIGINT. The first signal starts ``drain()`` on the event loop (the bridge's
``aclose()``: 1001 to every socket, new handshakes refused) and hands the signal to
uvicorn's handler when the drain is done or after ``timeout`` seconds, whichever is first;
uvicorn's own graceful shutdown follows unchanged (in-flight requests finish, then the
lifespan shutdown closes the client). A further signal is handed over at once, so a
second Ctrl+C still forces uvicorn out.

When not: only when the handler in place is uvicorn's ``Server.handle_exit`` and this is
the main thread (signal handlers can only be set there). With another server (hypercorn,
granian, gunicorn's own workers), ``TestClient`` or a thread, nothing is installed and
nothing changes: the bridge is then closed by the lifespan shutdown, as before. At the end
of the lifespan the previous handler is put back if ours is still the one in place.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, Final

from gateway_redis.support import log_fields

__all__ = ["SignalDrain", "is_uvicorn_handler"]

_log = logging.getLogger("middleware.app")
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any]


def is_uvicorn_handler(handler: object) -> bool:
    """Whether ``handler`` is the bound ``handle_exit`` of a uvicorn ``Server``."""
    owner = getattr(handler, "__self__", None)
    return (
        owner is not None
        and getattr(handler, "__name__", "") == "handle_exit"
        and type(owner).__module__.partition(".")[0] == "uvicorn"
    )


class SignalDrain:
    """Runs ``drain()`` before uvicorn hears SIGTERM/SIGINT; see the module docstring.

    ``drain`` is awaited once, on the loop :meth:`install` ran on; ``timeout`` (seconds)
    bounds how long uvicorn's handler waits for it.
    """

    def __init__(self, drain: Callable[[], Awaitable[None]], *, timeout: float) -> None:
        self._drain = drain
        self._timeout = timeout
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._handing: asyncio.Task[None] | None = None
        self._installed = False
        self._started = False
        self._handed = False

    @property
    def installed(self) -> bool:
        """Whether the handler is in front of uvicorn's."""
        return self._installed

    def install(self) -> bool:
        """Chain in front of uvicorn's handlers, if they are the ones in place (call on the
        event loop, in the lifespan's startup). Returns whether anything was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            current = signal.getsignal(sig)
            if is_uvicorn_handler(current):
                self._previous[sig] = current  # type: ignore[assignment]
                signal.signal(sig, self._on_signal)
                self._installed = True
        return self._installed

    def uninstall(self) -> None:
        """Put uvicorn's handlers back where ours are still in place. Idempotent."""
        if not self._installed:
            return
        self._installed = False
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)

    async def wait(self) -> None:
        """Wait for a drain that a signal started (bounded by itself) and its hand-over."""
        started = [t for t in (self._draining, self._handing) if t is not None]
        if started:
            await asyncio.wait(started)

    # -- internals --------------------------------------------------------------------

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes of whatever runs: only schedule.
        loop = self._loop
        if self._started or loop is None or loop.is_closed():
            self._hand_over(sig, frame)
            return
        self._started = True
        loop.call_soon_threadsafe(self._start, sig)

    def _start(self, sig: int) -> None:
        loop = asyncio.get_running_loop()
        _log.info(
            "signal %d: closing WebSockets (1001) before the server shuts down",
            sig,
            extra=log_fields("gateway", "shutdown_drain_started"),
        )
        self._draining = loop.create_task(self._run_drain(), name="gateway-shutdown-drain")
        self._handing = loop.create_task(self._hand_over_after(sig), name="gateway-shutdown-signal")

    async def _run_drain(self) -> None:
        try:
            await self._drain()
        except Exception:
            _log.exception(
                "closing WebSockets at shutdown failed",
                extra=log_fields("gateway", "shutdown_drain_failed"),
            )

    async def _hand_over_after(self, sig: int) -> None:
        assert self._draining is not None
        await asyncio.wait({self._draining}, timeout=self._timeout)
        if not self._handed:
            self._hand_over(sig, None)

    def _hand_over(self, sig: int, frame: FrameType | None) -> None:
        self._handed = True
        previous = self._previous.get(sig)
        if previous is not None:  # uvicorn's, even after uninstall: the signal was for it
            previous(sig, frame)

"""SignalDrain: the bridge's sockets are closed (1001) before uvicorn hears SIGTERM/SIGINT
(issue 14 item 4). Real signals, raised in this process, to a real (not serving) uvicorn
``Server``'s handler."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from middleware._signals import SignalDrain, is_uvicorn_handler


async def _app(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.fixture
def server() -> Iterator[uvicorn.Server]:
    """A uvicorn Server whose handler is in place for SIGTERM and SIGINT, as during
    ``serve()``; the previous handlers come back afterwards."""
    server = uvicorn.Server(uvicorn.Config(_app))
    saved = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield server
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


async def settle(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_drain_runs_before_uvicorn_hears_the_signal(server: uvicorn.Server) -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def drain() -> None:
        order.append(f"drain (uvicorn exiting: {server.should_exit})")
        await release.wait()
        order.append("drained")

    chain = SignalDrain(drain, timeout=10)
    assert chain.install()
    assert signal.getsignal(signal.SIGTERM) != server.handle_exit
    signal.raise_signal(signal.SIGTERM)
    await settle(lambda: order)
    await asyncio.sleep(0.1)
    assert not server.should_exit  # uvicorn (which would send 1012) waits for the drain
    release.set()
    await settle(lambda: server.should_exit)
    assert order == ["drain (uvicorn exiting: False)", "drained"]
    assert server._captured_signals == [signal.SIGTERM]
    await chain.wait()
    chain.uninstall()
    assert signal.getsignal(signal.SIGTERM) == server.handle_exit


async def test_repeated_signals_are_handed_over_at_once(server: uvicorn.Server) -> None:
    release = asyncio.Event()
    calls = 0

    async def drain() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    chain = SignalDrain(drain, timeout=10)
    chain.install()
    signal.raise_signal(signal.SIGINT)
    await settle(lambda: calls == 1)
    signal.raise_signal(signal.SIGINT)  # impatient: straight to uvicorn
    assert server.should_exit
    assert not server.force_exit
    release.set()
    await chain.wait()
    assert server._captured_signals == [signal.SIGINT]  # the first is not handed over again
    signal.raise_signal(signal.SIGINT)  # a third Ctrl+C forces uvicorn out, as without us
    assert server.force_exit
    assert calls == 1
    chain.uninstall()


async def test_a_drain_that_hangs_is_cut_short_by_the_timeout(server: uvicorn.Server) -> None:
    async def drain() -> None:
        await asyncio.sleep(30)

    chain = SignalDrain(drain, timeout=0.2)
    chain.install()
    loop = asyncio.get_running_loop()
    started = loop.time()
    signal.raise_signal(signal.SIGTERM)
    await settle(lambda: server.should_exit)
    assert loop.time() - started < 2
    chain.uninstall()
    assert chain._draining is not None
    chain._draining.cancel()
    await chain.wait()


async def test_a_failing_drain_still_hands_the_signal_over(
    server: uvicorn.Server, caplog: pytest.LogCaptureFixture
) -> None:
    async def drain() -> None:
        raise RuntimeError("boom")

    chain = SignalDrain(drain, timeout=5)
    chain.install()
    signal.raise_signal(signal.SIGTERM)
    await settle(lambda: server.should_exit)
    await chain.wait()
    chain.uninstall()
    assert "closing WebSockets at shutdown failed" in caplog.text


async def test_nothing_is_installed_when_uvicorn_is_not_the_server() -> None:
    heard: list[int] = []

    def other_server(sig: int, frame: Any) -> None:
        heard.append(sig)

    saved = signal.signal(signal.SIGTERM, other_server)
    try:

        async def drain() -> None:
            raise AssertionError("must not run")

        chain = SignalDrain(drain, timeout=1)
        assert not chain.install()
        assert signal.getsignal(signal.SIGTERM) == other_server
        signal.raise_signal(signal.SIGTERM)
        assert heard == [signal.SIGTERM]
        chain.uninstall()
        await chain.wait()
    finally:
        signal.signal(signal.SIGTERM, saved)


async def test_uninstall_leaves_a_handler_installed_after_ours(server: uvicorn.Server) -> None:
    async def drain() -> None:
        return None

    chain = SignalDrain(drain, timeout=1)
    chain.install()

    def later(sig: int, frame: Any) -> None:
        return None

    signal.signal(signal.SIGTERM, later)  # someone chained in front of us
    chain.uninstall()
    assert signal.getsignal(signal.SIGTERM) == later
    assert signal.getsignal(signal.SIGINT) == server.handle_exit


def test_uvicorn_handlers_are_recognized() -> None:
    server = uvicorn.Server(uvicorn.Config(_app))
    assert is_uvicorn_handler(server.handle_exit)
    assert not is_uvicorn_handler(signal.SIG_DFL)
    assert not is_uvicorn_handler(print)
    assert not is_uvicorn_handler(lambda sig, frame: None)

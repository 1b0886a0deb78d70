"""``middleware.uvicorn_protocol``: uvicorn's sans-I/O WebSocket protocol keeping less per
socket behaves as the stock one does (real uvicorn, real ``websockets`` clients), and still
releases what it claims to (the uvicorn internals it relies on)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.types import Receive, Scope, Send
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request

from gateway_redis.embedded import free_port
from middleware.uvicorn_protocol import Gate, Inbox, LeanWebSocketProtocol

# -- the two primitives ---------------------------------------------------------------------


async def test_the_inbox_is_first_in_first_out() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    for n in range(3):
        inbox.put_nowait(n)
    assert (inbox.qsize(), inbox.empty()) == (3, False)
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
    assert inbox.empty()


async def test_waiting_getters_are_served_in_turn() -> None:
    inbox: Inbox[str] = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert list(await asyncio.wait_for(asyncio.gather(first, second), 5)) == ["a", "b"]


async def test_a_getter_cancelled_after_its_wake_up_loses_no_item() -> None:
    inbox: Inbox[str] = Inbox()
    woken = asyncio.ensure_future(inbox.get())
    other = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("x")  # wakes the first getter...
    woken.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(other, 5) == "x"
    with pytest.raises(asyncio.CancelledError):
        await woken
    assert inbox.empty()


async def test_a_cancelled_getter_leaves_the_inbox_usable() -> None:
    inbox: Inbox[int] = Inbox()
    gone = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    inbox.put_nowait(7)
    assert await asyncio.wait_for(inbox.get(), 5) == 7


async def test_the_gate_waits_while_closed() -> None:
    gate = Gate()
    assert not gate.is_set()
    waiter = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    gate.set()
    assert await asyncio.wait_for(waiter, 5) is True
    assert await asyncio.wait_for(gate.wait(), 5) is True  # open: no wait
    gate.clear()
    assert not gate.is_set()
    cancelled = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    later = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(later, 5) is True


# -- under uvicorn --------------------------------------------------------------------------

FLOOD = 200  # messages of 64 KiB: far more than the transport buffers before pausing
CHUNK = b"x" * 65536


class Endpoints:
    """A pure ASGI app with the endpoints the tests use; records what the server saw."""

    def __init__(self) -> None:
        self.disconnects: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        endpoint = {"/echo": self.echo, "/refuse": self.refuse, "/deny": self.deny}.get(
            scope["path"], self.flood
        )
        await endpoint(scope, receive, send)

    async def echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message["code"])
                return
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
                return
            reply = {"type": "websocket.send"}
            reply.update({k: message[k] for k in ("text", "bytes") if message.get(k) is not None})
            await send(reply)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    async def deny(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        start = {"type": "websocket.http.response.start", "status": 418, "headers": []}
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"teapot"})

    async def flood(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(FLOOD):
            await send({"type": "websocket.send", "bytes": CHUNK})
        await send({"type": "websocket.close", "code": 1000})


@contextlib.asynccontextmanager
async def served(endpoints: Endpoints) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    port = free_port()
    config = uvicorn.Config(
        endpoints, host="127.0.0.1", port=port, ws=LeanWebSocketProtocol,
        ws_per_message_deflate=False, lifespan="off", log_level="warning",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        assert not task.done(), "uvicorn stopped during startup"
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


def lean_protocols(server: uvicorn.Server) -> list[Any]:
    return [p for p in server.server_state.connections if isinstance(p, LeanWebSocketProtocol)]


async def test_messages_both_ways_and_the_handshake_objects_are_released() -> None:
    endpoints = Endpoints()
    async with served(endpoints) as (url, server):
        async with websockets.connect(f"{url}/echo", compression=None) as ws:
            for n in range(300):
                await ws.send(f"text {n}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"text {n}"
            await ws.send(b"\x00\x01binary")
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01binary"
            (protocol,) = lean_protocols(server)
            # What the module promises to release (fails when uvicorn changes underneath).
            assert not hasattr(protocol, "request")
            assert not hasattr(protocol, "response")
            assert isinstance(protocol.queue, Inbox)
            assert isinstance(protocol.writable, Gate)
            # websockets' parser keeps the server's request object: its headers are gone
            # (the client's own request, in this process too, keeps them).
            requests = [o for o in gc.get_objects() if isinstance(o, Request)]
            assert ws.request in requests
            assert len(requests) == 2
            assert [r.headers for r in requests if r.headers and r is not ws.request] == []
            await ws.close(4001, "client done")
        for _ in range(200):
            if endpoints.disconnects:
                break
            await asyncio.sleep(0.01)
        assert endpoints.disconnects == [4001]


async def test_the_server_closes_with_its_code_and_reason() -> None:
    async with (
        served(Endpoints()) as (url, _server),
        websockets.connect(f"{url}/echo", compression=None) as ws,
    ):
        await ws.send("close")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (4000, "bye")


async def test_refusals_before_accept_are_http_answers() -> None:
    async with served(Endpoints()) as (url, _server):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{url}/refuse")
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as denied:
            await websockets.connect(f"{url}/deny")
        assert denied.value.response.status_code == 418
        assert denied.value.response.body == b"teapot"


async def test_a_slow_reader_gets_every_message_through_the_write_gate() -> None:
    # The server writes far more than the transport buffers: uvicorn pauses writing
    # (the gate closes) until the client reads, then resumes.
    async with (
        served(Endpoints()) as (url, _server),
        websockets.connect(f"{url}/flood", compression=None, max_size=None, max_queue=1) as ws,
    ):
        await asyncio.sleep(0.3)  # nothing read meanwhile
        received = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                chunk = await asyncio.wait_for(ws.recv(), 10)
                assert chunk == CHUNK
                received += 1
        assert received == FLOOD
        assert ws.close_code == 1000


async def test_shutdown_closes_open_sockets_with_1012() -> None:
    endpoints = Endpoints()
    async with served(endpoints) as (url, server):
        ws = await websockets.connect(f"{url}/echo", compression=None)
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
        server.should_exit = True
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1012
    assert endpoints.disconnects == [1012]

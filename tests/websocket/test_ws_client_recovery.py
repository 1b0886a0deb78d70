"""The example's command-line client reconnects with ``recover`` after its socket was cut
(by a TCP proxy between it and the gateway) and prints every message once, in order; a
subscribe answered ``unavailable`` is sent again until it goes through."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from examples import ws_client
from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from tests.websocket.wsutil import Gateway, mint


class CuttingProxy:
    """A TCP proxy to ``upstream`` whose connections :meth:`cut` closes at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def aclose(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


class Printed:
    """The JSON lines the client printed so far (:meth:`lines`), and waiting for them."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.out: list[str] = []

    def lines(self) -> list[dict[str, Any]]:
        self.out.append(self.capsys.readouterr().out)
        return [json.loads(line) for line in "".join(self.out).splitlines() if line.strip()]

    async def until(self, condition: Any) -> None:
        """Wait (at most 10 s) until ``condition(lines)`` holds."""
        for _ in range(500):
            if condition(self.lines()):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out; got {self.lines()}")


@contextlib.asynccontextmanager
async def cli_client(
    gateway: Gateway, capsys: pytest.CaptureFixture[str], count: int
) -> AsyncIterator[tuple[CuttingProxy, asyncio.Task[int], Printed]]:
    """The CLI client as bob, subscribed to ``system:broadcast`` and reconnecting, through
    a :class:`CuttingProxy` to ``gateway``, until ``count`` messages came (30 s at most)."""
    proxy = CuttingProxy(gateway.port)
    port = await proxy.start()
    args = argparse.Namespace(
        base=f"http://127.0.0.1:{port}", url=None, login=None, token=mint("bob"), header=False,
        subscribe=["system:broadcast"], publish=[], count=count, seconds=30.0, reconnect=True,
    )  # fmt: skip
    task = asyncio.create_task(ws_client.run(args))
    try:
        yield proxy, task, Printed(capsys)
    finally:
        task.cancel()
        await proxy.aclose()


async def test_cli_client_reconnects_and_recovers(
    gateway: Gateway, client: RedisClient, capsys: pytest.CaptureFixture[str]
) -> None:
    history = ChannelHistory(client, size=1000, ttl=300)  # the example's system:broadcast
    async with cli_client(gateway, capsys, count=30) as (proxy, task, printed):
        until = printed.until
        await until(lambda got: any(f["type"] == "subscribed" for f in got))
        for n in range(1, 11):
            await history.publish("system:broadcast", {"n": n})
        await until(lambda got: sum(f["type"] == "message" for f in got) == 10)
        proxy.cut()  # the socket is gone; the client waits a second, then reconnects
        for n in range(11, 21):
            await history.publish("system:broadcast", {"n": n})
        await until(lambda got: sum(f["type"] == "subscribed" for f in got) == 2)
        for n in range(21, 31):
            await history.publish("system:broadcast", {"n": n})
        assert await asyncio.wait_for(task, 10) == 0
    got = printed.lines()
    messages = [f["data"]["n"] for f in got if f["type"] == "message"]
    assert messages == list(range(1, 31))
    replies = [f for f in got if f["type"] == "subscribed"]
    assert "recovered" not in replies[0]
    assert replies[1]["recovered"] == {"system:broadcast": True}


async def test_cli_client_subscribes_again_after_unavailable(
    gateway_factory: Any, fault_server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis is down when the client reconnects: its subscribe is answered ``unavailable``;
    the client sends it again (1 s, 2 s, ... apart) until Redis is back, then gets the
    channel's messages."""
    async with (
        gateway_factory(redis_url=fault_server.url) as gateway,
        cli_client(gateway, capsys, count=3) as (proxy, task, printed),
    ):
        until = printed.until

        def unavailable(got: list[dict[str, Any]]) -> int:
            return sum(f["type"] == "error" and f.get("code") == "unavailable" for f in got)

        await until(lambda got: any(f["type"] == "subscribed" for f in got))
        await asyncio.to_thread(fault_server.kill)
        proxy.cut()  # the client reconnects after a second, Redis still down
        await until(lambda got: unavailable(got) >= 2)  # asked again, refused again
        await asyncio.to_thread(fault_server.start)
        await until(lambda got: sum(f["type"] == "subscribed" for f in got) == 2)
        async with RedisClient(RedisConfig(url=fault_server.url)) as publisher:
            history = ChannelHistory(publisher, size=1000, ttl=300)
            for n in range(1, 4):
                await history.publish("system:broadcast", {"n": n})
        assert await asyncio.wait_for(task, 10) == 0
    got = printed.lines()
    assert [f["data"]["n"] for f in got if f["type"] == "message"] == [1, 2, 3]
    refused = [f for f in got if f["type"] == "error"]
    assert refused
    assert all(f["code"] == "unavailable" for f in refused)

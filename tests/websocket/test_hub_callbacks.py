"""Callback subscriptions on the pub/sub hub (what the bridge's fan-out is built on)."""

from __future__ import annotations

import asyncio

import pytest

from gateway_redis import Message, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis


async def _until(predicate: object, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_callback_gets_every_message_once_and_cannot_be_iterated(
    client: RedisClient,
) -> None:
    got: list[Message] = []
    sub = await client.pubsub.subscribe("cb:a", "cb:b", on_message=got.append)
    with pytest.raises(TypeError, match="callback"):
        sub.__aiter__()
    for i in range(5):
        await client.publish("cb:a" if i % 2 else "cb:b", {"i": i})
    await _until(lambda: len(got) == 5)
    assert [m.data["i"] for m in got] == list(range(5))
    assert sub.pending == 0
    assert sub.dropped == 0
    await sub.close()
    await client.publish("cb:a", {"i": 99})
    await asyncio.sleep(0.1)
    assert len(got) == 5


async def test_a_failing_callback_does_not_break_the_reader(client: RedisClient) -> None:
    def broken(message: Message) -> None:
        raise RuntimeError("boom")

    got: list[Message] = []
    bad = await client.pubsub.subscribe("cb:shared", on_message=broken)
    good = await client.pubsub.subscribe("cb:shared", on_message=got.append)
    await client.publish("cb:shared", 1)
    await client.publish("cb:shared", 2)
    await _until(lambda: len(got) == 2)
    await bad.close()
    await good.close()


async def test_after_a_restart_the_next_message_carries_the_gap(
    fault_server: EmbeddedRedis,
) -> None:
    async with RedisClient(RedisConfig(url=fault_server.url)) as client:
        got: list[Message] = []
        sub = await client.pubsub.subscribe("cb:gap", on_message=got.append)
        await client.publish("cb:gap", "before")
        await _until(lambda: len(got) == 1)
        await asyncio.to_thread(fault_server.restart)
        await _until(lambda: client.pubsub.connected and client.available)
        await client.publish("cb:gap", "after")
        await _until(lambda: len(got) == 2)
        assert [m.gap_before for m in got] == [False, True]
        assert not sub.take_gap()
        await sub.close()

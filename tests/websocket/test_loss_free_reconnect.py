"""Loss-free reconnect on the example gateway (issue 15, "Checked by"): a steady publisher
of sequence-numbered messages (200 at 100/s), clients that reconnect with ``recover``
through a gateway instance killed (moving to a second instance, each in its own uvicorn
process) and through a Redis restart. Within the history window each client ends with
every sequence number exactly once and in order; beyond it, or after the epoch changed, it
is told ``recovered: false``.

A dropped socket on one instance is ``test_recovery.py``; a Sentinel failover is
``tests/topology/test_history_failover_websocket.py``. The publishers are the library
(:class:`ChannelHistory`) and the gateway's HTTP publish route (what any other language,
or ``curl``, uses): a plain ``PUBLISH`` (``redis-cli``) is never kept in history, so it
cannot be recovered (docs/guides/websocket.md, "History and recovery").
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_redis import ChannelHistory, RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.support import cancel_and_wait
from tests.websocket.seqstream import (
    CHANNEL,
    SeqReader,
    SteadyPublisher,
    assert_exactly_once_in_order,
    http_publisher,
    library_publisher,
    until,
)
from tests.websocket.wsutil import gateway_process, mint

pytestmark = pytest.mark.timeout(120)

COUNT = 200


@pytest.mark.parametrize("via", ["library", "http"])
async def test_clients_move_to_a_second_instance_without_loss(
    redis_server: EmbeddedRedis, redis_admin: Any, client: RedisClient, via: str
) -> None:
    with (
        gateway_process(redis_server.url) as (first, first_proc),
        gateway_process(redis_server.url) as (second, _),
    ):
        readers = [SeqReader(f"viewer{i}") for i in range(3)]
        for reader in readers:
            reply = await reader.connect(first)
            assert "recovered" not in reply
        headers = {"Authorization": f"Bearer {mint('ops', roles=('admin',))}"}
        async with httpx.AsyncClient(base_url=second.http, headers=headers, timeout=5) as http:
            if via == "library":
                publish = library_publisher(ChannelHistory(client, size=1000, ttl=300))
            else:  # the second instance's route: the first one is killed midway
                publish = http_publisher(http)
            publisher = SteadyPublisher(publish, count=COUNT)
            publishing = asyncio.create_task(publisher.run())
            try:
                await until(lambda: all(r.has(50) for r in readers), "50 messages everywhere")
                first_proc.kill()  # SIGKILL: no close frames, the sockets just die
                await until(lambda: all(r.closed for r in readers), "the sockets to drop")
                await asyncio.sleep(0.2)  # messages go on meanwhile
                for reader in readers:
                    reply = await reader.connect(second)
                    assert reply["recovered"] == {CHANNEL: True}, reply
                await publishing
            finally:
                await cancel_and_wait(publishing)
            await until(lambda: all(r.has(COUNT) for r in readers), "every message everywhere")
            await asyncio.sleep(0.1)  # nothing more may come (a duplicate would)
        for reader in readers:
            await reader.close()
            assert reader.others == [], reader.others  # no resync, no error
            assert_exactly_once_in_order(reader, COUNT)


async def test_beyond_the_window_on_another_instance_is_not_recovered(
    redis_server: EmbeddedRedis, redis_admin: Any, client: RedisClient
) -> None:
    history = ChannelHistory(client, size=1000, ttl=300)  # the example's rule
    with (
        gateway_process(redis_server.url) as (first, _),
        gateway_process(redis_server.url) as (second, _),
    ):
        near, far = SeqReader("near"), SeqReader("far")
        for reader in (near, far):
            await reader.connect(first)
        for seq in range(1, 11):
            await history.publish(CHANNEL, {"seq": seq})
        await until(lambda: near.has(10) and far.has(10), "the first 10")
        await far.drop()
        for seq in range(11, 1012):  # 1,001 missed by `far`: one more than kept
            await history.publish(CHANNEL, {"seq": seq})
        await until(lambda: near.has(1011), "near to follow")
        await near.drop()
        for seq in range(1012, 1021):
            await history.publish(CHANNEL, {"seq": seq})
        reply = await near.connect(second)
        assert reply["recovered"] == {CHANNEL: True}
        reply = await far.connect(second)
        assert reply["recovered"] == {CHANNEL: False}  # never a silent gap
        base = far.offsets[0][1] - 1  # the channel's offset before seq 1
        epoch = near.offsets[-1][0]
        assert reply["positions"][CHANNEL] == {"epoch": epoch, "offset": base + 1020}
        await history.publish(CHANNEL, {"seq": 1021})
        await until(lambda: near.has(1021) and far.has(1021), "the next one")
        for reader in (near, far):
            await reader.close()
    assert_exactly_once_in_order(near, 1021)
    assert far.seqs == [*range(1, 11), 1021]


@pytest.mark.parametrize("persistent", [True, False])
async def test_a_redis_restart_with_persistence_loses_nothing(
    persistent: bool, tmp_path: Path
) -> None:
    args = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    server = EmbeddedRedis(args=args, directory=tmp_path)
    server.start()
    try:
        config = RedisConfig(url=server.url, probe_interval=0.2)
        async with RedisClient(config) as client:
            history = ChannelHistory(client, size=1000, ttl=300)
            with gateway_process(server.url) as (gateway, _):
                stays, away = SeqReader("stays"), SeqReader("away")
                for reader in (stays, away):
                    await reader.connect(gateway)
                publisher = SteadyPublisher(library_publisher(history), count=COUNT)
                publishing = asyncio.create_task(publisher.run())
                try:
                    await until(lambda: stays.has(60) and away.has(60), "60 messages")
                    await away.drop()
                    await asyncio.to_thread(server.kill)  # a crash: SIGKILL
                    await asyncio.sleep(0.3)
                    await asyncio.to_thread(server.start)
                    await until(lambda: publisher.sent >= 120, "publishing to resume")
                    reply = await away.connect(gateway)
                    assert reply["recovered"] == {CHANNEL: persistent}, reply
                    await publishing
                finally:
                    await cancel_and_wait(publishing)
                await until(lambda: stays.has(COUNT) and away.has(COUNT), "the last message")
                await asyncio.sleep(0.1)
                for reader in (stays, away):
                    await reader.close()
    finally:
        server.cleanup()
    if persistent:  # the history came back with Redis: nothing lost, no resync
        for reader in (stays, away):
            assert reader.others == [], reader.others
            assert_exactly_once_in_order(reader, COUNT)
    else:  # a new epoch: the connected socket is told to resync, the returning one not recovered
        assert [f["type"] for f in stays.others] == ["resync"]
        for reader in (stays, away):
            assert reader.seqs == sorted(set(reader.seqs)), reader.user  # no dup, in order
            assert reader.seqs[-1] == COUNT
        assert len({e for e, _ in away.offsets}) == 2  # continued in the new epoch

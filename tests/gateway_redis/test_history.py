"""Channel history (gateway_redis.pubsub.history) on one real server: offsets, epochs,
reading what was missed, idempotent publish, and the envelope old readers still decode.

The Cluster side (keys and a sharded channel in one slot) is in
``tests/topology/test_history_cluster.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider

from gateway_redis import ChannelHistory, Position, RedisClient, RedisConfig
from gateway_redis.pubsub import envelope
from tests.pubsubutil import receive


def history_key(client: RedisClient, kind: str, channel: str) -> str:
    return client.key(f"hist:{{{channel}}}:{kind}:{channel}")


@pytest.fixture
def history(client: RedisClient) -> ChannelHistory:
    return ChannelHistory(client, size=50, ttl=300)


async def test_offsets_advance_by_exactly_one_and_reach_subscribers(
    client: RedisClient, history: ChannelHistory
) -> None:
    start = await history.position("news")
    assert start.offset == 0
    async with await client.subscribe("news") as sub:
        sent = [await history.publish("news", {"n": i}) for i in range(5)]
        assert [s.offset for s in sent] == [1, 2, 3, 4, 5]
        assert {s.epoch for s in sent} == {start.epoch}
        assert all(s.receivers == 1 for s in sent)
        for i in range(5):
            message = await receive(sub)
            assert (message.data, message.offset, message.epoch) == ({"n": i}, i + 1, start.epoch)
            assert message.trace_context is None
    assert await history.position("news") == Position(start.epoch, 5)
    # a plain publish has no position
    async with await client.subscribe("plain") as sub:
        await client.publish("plain", 1)
        message = await receive(sub)
        assert (message.offset, message.epoch) == (None, None)


async def test_concurrent_publishers_on_two_clients_never_share_an_offset(
    redis_config: RedisConfig, history: ChannelHistory
) -> None:
    async with RedisClient(redis_config) as other:
        second = ChannelHistory(other, size=1000, ttl=300)

        async def burst(h: ChannelHistory, who: str) -> list[int]:
            return [(await h.publish("race", {"who": who, "i": i})).offset for i in range(150)]

        a, b = await asyncio.gather(burst(history, "a"), burst(second, "b"))
    assert sorted(a + b) == list(range(1, 301))
    assert a == sorted(a)
    assert b == sorted(b)


async def test_read_since_returns_exactly_the_missed_messages(history: ChannelHistory) -> None:
    for i in range(10):
        await history.publish("feed", i)
    top = await history.position("feed")
    page = await history.read("feed", since=Position(top.epoch, 4))
    assert page.recovered
    assert page.position == top
    assert [m.data for m in page.messages] == [4, 5, 6, 7, 8, 9]
    assert [m.offset for m in page.messages] == [5, 6, 7, 8, 9, 10]
    assert all(m.channel == "feed" and m.epoch == top.epoch for m in page.messages)
    # nothing missed, and a page at a time
    up_to_date = await history.read("feed", since=top)
    assert up_to_date.recovered
    assert up_to_date.messages == ()
    first = await history.read("feed", since=(top.epoch, 0), limit=3)
    assert first.recovered
    assert [m.offset for m in first.messages] == [1, 2, 3]
    # a position from the future (e.g. a lost write after failover) is never continued
    assert not (await history.read("feed", since=(top.epoch, 11))).recovered


async def test_beyond_the_window_recovery_is_impossible(client: RedisClient) -> None:
    small = ChannelHistory(client, size=5, ttl=300)
    for i in range(12):
        await small.publish("short", i)
    epoch = (await small.position("short")).epoch
    page = await small.read("short", since=(epoch, 6))  # 7 is the oldest kept
    assert not page.recovered
    assert page.messages == ()
    page = await small.read("short", since=(epoch, 7))
    assert page.recovered
    assert [m.offset for m in page.messages] == [8, 9, 10, 11, 12]


async def test_lost_meta_changes_the_epoch(
    client: RedisClient, history: ChannelHistory, redis_admin: redis.Redis
) -> None:
    for i in range(3):
        old = await history.publish("lost", i)
    meta = [k for k in redis_admin.keys("*hist:*") if b":m:" in k]
    assert meta == [history_key(client, "m", "lost").encode()]
    redis_admin.delete(meta[0])  # as after expiry, eviction, or a restart without data
    new = await history.publish("lost", "after")
    assert new.epoch != old.epoch
    assert new.offset == 1
    page = await history.read("lost", since=old.position)
    assert not page.recovered
    assert page.position == new.position
    # the new epoch's history holds only the new message (the old stream was dropped)
    page = await history.read("lost", since=(new.epoch, 0))
    assert [m.data for m in page.messages] == ["after"]


async def test_expired_stream_with_meta_left_is_a_gap(
    client: RedisClient, history: ChannelHistory, redis_admin: redis.Redis
) -> None:
    for i in range(3):
        await history.publish("quiet", i)
    redis_admin.delete(history_key(client, "s", "quiet"))
    top = await history.position("quiet")
    assert not (await history.read("quiet", since=(top.epoch, 1))).recovered
    assert (await history.read("quiet", since=top)).recovered


async def test_stream_and_meta_expire(client: RedisClient, redis_admin: redis.Redis) -> None:
    history = ChannelHistory(client, size=10, ttl=30, meta_ttl=60)
    await history.publish("ttl", 1)
    assert 0 < redis_admin.pttl(history_key(client, "s", "ttl")) <= 30_000
    assert 30_000 < redis_admin.pttl(history_key(client, "m", "ttl")) <= 60_000


async def test_idempotent_publish_is_a_no_op_on_retry(
    client: RedisClient, history: ChannelHistory
) -> None:
    async with await client.subscribe("orders") as sub:
        first = await history.publish("orders", {"id": 7}, idempotency_key="order-7")
        again = await history.publish("orders", {"id": 7}, idempotency_key="order-7")
        other = await history.publish("orders", {"id": 8}, idempotency_key="order-8")
        assert (again.epoch, again.offset, again.replayed) == (first.epoch, first.offset, True)
        assert (first.replayed, other.offset) == (False, 2)
        assert [(await receive(sub)).data for _ in range(2)] == [{"id": 7}, {"id": 8}]
        with pytest.raises(asyncio.TimeoutError):
            await receive(sub, timeout=0.2)


async def test_scripts_are_reloaded_after_script_flush(
    history: ChannelHistory, redis_admin: redis.Redis
) -> None:
    await history.publish("flush", 1)
    redis_admin.script_flush()  # what a restart or failover does to the script cache
    assert (await history.publish("flush", 2)).offset == 2
    redis_admin.script_flush()
    epoch = (await history.position("flush")).epoch
    redis_admin.script_flush()
    assert len((await history.read("flush", since=(epoch, 0))).messages) == 2


async def test_sharded_channel_with_history(redis_config: RedisConfig) -> None:
    async with RedisClient(redis_config.replace(sharded_channels=("ticker",))) as c:
        history = ChannelHistory(c, size=10, ttl=60)
        async with await c.subscribe("ticker") as sub:
            sent = await history.publish("ticker", {"p": 1})
            message = await receive(sub)
            assert (message.data, message.offset, message.epoch) == ({"p": 1}, 1, sent.epoch)
            assert sent.receivers == 1
    with pytest.raises(ValueError, match="sharded channel with history"):
        async with RedisClient(redis_config.replace(sharded_channels=("odd*",))) as c:
            await ChannelHistory(c, size=10, ttl=60).publish("odd}name", 1)


async def test_bad_arguments_are_refused(history: ChannelHistory, client: RedisClient) -> None:
    with pytest.raises(ValueError, match="size"):
        ChannelHistory(client, size=0, ttl=1)
    with pytest.raises(ValueError, match="meta_ttl"):
        ChannelHistory(client, size=1, ttl=10, meta_ttl=5)
    with pytest.raises(ValueError, match="limit"):
        await history.read("x", since=("e", 0), limit=0)
    with pytest.raises(ValueError, match="offset"):
        await history.read("x", since=("e", -1))
    with pytest.raises(ValueError, match="epoch"):
        await history.read("x", since=("", 1))
    with pytest.raises(ValueError, match="idempotency_key"):
        await history.publish("x", 1, idempotency_key="")


def test_positions_travel_in_an_envelope_old_readers_decode() -> None:
    raw = b'{"_gw":{"traceparent":"00-a-b-01","epoch":"e1","offset":"17"},"data":{"a":[1]}}'
    payload, data, context, position = envelope.decode_message(raw)
    assert (payload, data, position) == ('{"a":[1]}', {"a": [1]}, Position("e1", 17))
    assert dict(context or {}) == {"traceparent": "00-a-b-01"}
    assert envelope.decode(raw)[:2] == ('{"a":[1]}', {"a": [1]})
    # what an older reader checks: a JSON object of strings, then the body
    head = json.loads(raw)["_gw"]
    assert all(isinstance(v, str) for v in head.values())
    bare = b'{"_gw":{"epoch":"e1","offset":"2"},"data":3}'
    assert envelope.decode_message(bare) == ("3", 3, None, Position("e1", 2))
    for bad in (
        b'{"_gw":{"epoch":"e1","offset":"x"},"data":3}',
        b'{"_gw":{"offset":"2"},"data":3}',
    ):
        assert envelope.decode_message(bad)[1:] == (3, None, None)


async def test_read_payloads_gives_the_messages_of_read_as_text(
    client: RedisClient, history: ChannelHistory
) -> None:
    tracer = TracerProvider().get_tracer("test")
    values: list[object] = [{"n": 1, "s": "é\u2028"}, None, "text", [1.5, {"_gw": {}, "data": 2}]]
    for i, value in enumerate(values):
        if i % 2:  # inside a trace: the envelope also carries trace headers
            with tracer.start_as_current_span("request"):
                await history.publish("text", value)
        else:
            await history.publish("text", value)
    top = await history.position("text")
    page = await history.read_payloads("text", since=(top.epoch, 0))
    read = await history.read("text", since=(top.epoch, 0))
    assert (page.position, page.first, page.recovered) == (top, 1, True)
    assert page.payloads == tuple(m.payload for m in read.messages)
    assert [json.loads(p) for p in page.payloads] == values
    assert any(m.trace_context for m in read.messages)
    # a page at a time, nothing missed, and the impossible cases of read()
    two = await history.read_payloads("text", since=Position(top.epoch, 1), limit=2)
    assert (two.first, two.payloads) == (2, page.payloads[1:3])
    assert (await history.read_payloads("text", since=top)).payloads == ()
    for since in ((top.epoch, 5), ("another", 0)):
        gone = await history.read_payloads("text", since=since)
        assert (gone.recovered, gone.payloads, gone.position) == (False, (), top)


async def test_read_payloads_refuses_entries_publish_did_not_write(
    client: RedisClient, history: ChannelHistory, redis_admin: redis.Redis
) -> None:
    epoch = (await history.publish("odd", 1)).epoch
    stream = history_key(client, "s", "odd")
    good = f'{{"_gw":{{"epoch":"{epoch}","offset":"2"}},"data":2}}'
    redis_admin.xadd(stream, {"p": good}, id="2-0")
    redis_admin.hset(history_key(client, "m", "odd"), "o", 2)
    page = await history.read_payloads("odd", since=(epoch, 0))
    assert (page.recovered, page.payloads) == (True, ("1", "2"))
    for offset, body in enumerate(("NaN", "[1", "1 ", "{}x", '"a"}'), 3):
        raw = f'{{"_gw":{{"epoch":"{epoch}","offset":"{offset}"}},"data":{body}}}'
        redis_admin.xadd(stream, {"p": raw}, id=f"{offset}-0")
        redis_admin.hset(history_key(client, "m", "odd"), "o", offset)
        assert not (await history.read_payloads("odd", since=(epoch, offset - 1))).recovered
        assert (await history.read_payloads("odd", since=(epoch, offset))).recovered


def test_history_payloads_checks_each_position_and_payload() -> None:
    def raw(head: str, body: str = '{"a":[1]}') -> bytes:
        return ('{"_gw":{' + head + '},"data":' + body + "}").encode()

    plain = raw('"epoch":"e1","offset":"7"')
    traced = raw('"traceparent":"00-a-b-01","epoch":"e1","offset":"8"', "null")
    assert envelope.history_payloads([plain, traced], "e1", 7) == ['{"a":[1]}', "null"]
    assert envelope.history_payloads([], "e1", 7) == []
    escaped = raw('"epoch":"e\\"1","offset":"7"')  # an epoch that needs escaping in JSON
    assert envelope.history_payloads([escaped], 'e"1', 7) == ['{"a":[1]}']
    for bad in (
        [plain, plain],  # offsets must follow each other
        [raw('"epoch":"e2","offset":"7"')],  # another epoch
        [raw('"epoch":"e1","offset":"7","x":1')],  # not an object of strings
        [raw('"epoch":"e1","offset":"7"', "Infinity")],
        [raw('"epoch":"e1","offset":"7"', " 1")],
        [b'{"a":1}'],  # no envelope
        [plain[:-1]],
    ):
        assert envelope.history_payloads(bad, "e1", 7) is None, bad

"""Pub/sub against real servers: wire format, fan-out, overflow, reconnects, liveness."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider

from gateway_redis import (
    RedisClient,
    RedisConfig,
    RedisUnavailable,
    SerializationError,
    SubscriptionClosed,
)
from gateway_redis.embedded import EmbeddedRedis, free_port
from gateway_redis.pubsub import PubSubHub, Subscription
from tests.pubsubutil import receive, redis_cli, until

LIVENESS = "__gateway_redis__:liveness:"


def user_channels(admin: redis.Redis) -> list[str]:
    names = [c.decode() for c in admin.pubsub_channels()]
    return sorted(n for n in names if LIVENESS not in n)


@pytest.fixture
async def fault_client(fault_server: EmbeddedRedis) -> AsyncIterator[RedisClient]:
    async with RedisClient(RedisConfig(url=fault_server.url, min_idle_conns=1)) as c:
        yield c


@pytest.fixture
def fault_admin(fault_server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(fault_server.url, socket_timeout=2)


# -- the Go service's usage and the wire format ---------------------------------------------


async def test_subscribe_two_channels_publish_dict_receive_and_unsubscribe(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    sub = await client.subscribe("notifications:user123", "system:broadcast")
    assert sub.channels == ("notifications:user123", "system:broadcast")
    message = {"type": "notification", "data": "Hello, World!"}

    assert await client.publish("notifications:user123", message) == 1
    got = await receive(sub)
    assert got.channel == "notifications:user123"
    assert got.payload == '{"type":"notification","data":"Hello, World!"}'
    assert got.data == message
    assert got.pattern is None
    assert got.trace_context is None
    assert not got.gap_before

    await client.publish("system:broadcast", [1, "two"])
    assert (await receive(sub)).channel == "system:broadcast"

    await client.unsubscribe("notifications:user123", "system:broadcast")
    with pytest.raises(StopAsyncIteration):
        await receive(sub)
    assert sub.closed
    await until(lambda: user_channels(redis_admin) == [], 2, "Redis unsubscribed")
    assert await client.publish("notifications:user123", message) == 0


async def test_publish_without_trace_context_writes_plain_json(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    observer = redis_admin.pubsub()
    observer.subscribe("interop")
    assert observer.get_message(timeout=2)["type"] == "subscribe"
    try:
        await client.publish("interop", {"b": [1, 2], "a": "é"})
        raw = await asyncio.to_thread(observer.get_message, timeout=2)
    finally:
        observer.close()
    assert raw["data"] == '{"b":[1,2],"a":"é"}'.encode()


async def test_redis_cli_publish_is_received_as_is(
    client: RedisClient, redis_server: EmbeddedRedis
) -> None:
    sub = await client.subscribe("cli")
    texts = ['{"from": "cli", "n": 1}', "plain, not JSON", '{"_gw":{"x":"y"}, "data": 1}', "42"]
    for text in texts:
        assert await redis_cli(redis_server.port, "PUBLISH", "cli", text) == "1"
    got = [await receive(sub) for _ in texts]
    assert [m.payload for m in got] == texts
    assert [m.data for m in got] == [
        {"from": "cli", "n": 1},
        None,
        {"_gw": {"x": "y"}, "data": 1},
        42,
    ]
    assert all(m.trace_context is None for m in got)
    await sub.close()


async def test_non_serializable_message_raises_and_sends_nothing(client: RedisClient) -> None:
    sub = await client.subscribe("strict")
    for bad in ({"when": object()}, {1, 2}, math.nan, {"x": float("inf")}):
        with pytest.raises(SerializationError) as caught:
            await client.publish("strict", bad)
        assert isinstance(caught.value, TypeError)
    assert await client.publish("strict", {"ok": True}) == 1
    assert (await receive(sub)).data == {"ok": True}
    assert sub.pending == 0
    await sub.close()


async def test_active_span_travels_in_envelope_and_payload_stays_plain(client: RedisClient) -> None:
    tracer = TracerProvider().get_tracer("test")
    sub = await client.subscribe("traced")
    data = {"order": 7, "items": ["a", "b"]}
    with tracer.start_as_current_span("request") as span:
        await client.publish("traced", data)
        trace_id = format(span.get_span_context().trace_id, "032x")
    got = await receive(sub)
    assert got.payload == json.dumps(data, separators=(",", ":"))
    assert got.data == data
    assert got.trace_context is not None
    assert got.trace_context["traceparent"].split("-")[1] == trace_id
    await sub.close()


async def test_json_that_looks_like_an_envelope_round_trips(client: RedisClient) -> None:
    sub = await client.subscribe("tricky")
    lookalike = {"_gw": {"traceparent": "forged"}, "data": 1}
    await client.publish("tricky", lookalike)
    got = await receive(sub)
    assert got.data == lookalike
    assert got.payload == json.dumps(lookalike, separators=(",", ":"))
    assert got.trace_context is None
    await sub.close()


# -- fan-out ----------------------------------------------------------------------------------


async def test_thousand_subscriptions_to_fifty_channels_share_one_connection(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    channels = [f"room:{i}" for i in range(50)]
    subs = [await client.subscribe(channels[i % 50]) for i in range(1000)]

    assert len(redis_admin.client_list(_type="pubsub")) == 1
    assert user_channels(redis_admin) == sorted(channels)
    ours = [c.decode() for c in redis_admin.pubsub_channels() if LIVENESS.encode() in c]
    assert len(ours) == 1  # plus the hub's private liveness channel
    assert dict(redis_admin.pubsub_numsub("room:0")) == {b"room:0": 1}
    assert client.pubsub.stats().channels == 50
    assert client.pubsub.stats().subscriptions == 1000

    assert await client.publish("room:0", {"hello": "room"}) == 1  # one Redis receiver: the hub
    room0 = [s for s in subs if s.channels == ("room:0",)]
    assert len(room0) == 20
    for sub in room0:
        assert (await receive(sub)).data == {"hello": "room"}
    assert all(s.pending == 0 for s in subs)

    await asyncio.gather(*(s.close() for s in subs))
    await until(lambda: user_channels(redis_admin) == [], 2, "every channel unsubscribed")
    assert len(redis_admin.client_list(_type="pubsub")) == 1


async def test_concurrent_first_subscribers_are_all_served(client: RedisClient) -> None:
    subs = await asyncio.gather(*(client.subscribe("hot") for _ in range(100)))
    assert await client.publish("hot", {"n": 1}) == 1
    got = await asyncio.gather(*(receive(s) for s in subs))
    assert [m.data for m in got] == [{"n": 1}] * 100
    await asyncio.gather(*(s.close() for s in subs))


async def test_resubscribing_right_after_the_last_close_is_confirmed(client: RedisClient) -> None:
    for round_ in range(20):
        sub = await client.subscribe("flip")
        await sub.close()
        again = await client.subscribe("flip")
        await client.publish("flip", round_)
        assert (await receive(again)).data == round_
        await again.close()


async def test_stalled_consumer_keeps_newest_and_reports_gap(
    client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    stalled = await client.subscribe("flood", buffer_size=10)
    active = await client.subscribe("flood")
    received: list[Any] = []

    async def consume() -> None:
        async for message in active:
            received.append(message.data["i"])
            if len(received) == 1000:
                return

    consumer = asyncio.create_task(consume())
    with caplog.at_level(logging.WARNING, logger="gateway_redis.pubsub"):
        for i in range(1000):
            await client.publish("flood", {"i": i})
        await asyncio.wait_for(consumer, 10)

    assert received == list(range(1000))
    assert active.dropped == 0
    assert stalled.pending == 10  # memory stays bounded
    assert stalled.dropped == 990
    assert stalled.gaps == 1
    assert client.pubsub.stats().dropped == 990
    kept = stalled.drain()
    assert [m.data["i"] for m in kept] == list(range(990, 1000))
    assert [m.gap_before for m in kept] == [True] + [False] * 9
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1  # rate limited: one line per subscription per 10 s
    await stalled.close()
    await active.close()


async def test_pattern_subscription_with_channel_prefix(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    async with RedisClient(redis_config.replace(channel_prefix="app*1:")) as c:
        sub = await c.psubscribe("news.*")
        assert redis_admin.pubsub_numpat() == 1
        await c.publish("news.sport", {"goal": 1})
        got = await receive(sub)
        assert (got.channel, got.pattern, got.data) == ("news.sport", "news.*", {"goal": 1})
        # The prefix is on the wire only, and its glob characters are escaped.
        redis_admin.publish("appX1:news.tv", "not ours")
        redis_admin.publish("app*1:news.tv", "ours")
        assert (await receive(sub)).payload == "ours"
        assert sub.patterns == ("news.*",)
        await sub.close()


async def test_channel_prefix_is_applied_on_the_wire_only(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    async with RedisClient(redis_config.replace(channel_prefix="tenant1:")) as c:
        async with await c.subscribe("orders") as sub:
            assert user_channels(redis_admin) == ["tenant1:orders"]
            assert redis_admin.publish("tenant1:orders", '{"id":1}') == 1
            got = await receive(sub)
            assert (got.channel, got.data) == ("orders", {"id": 1})
        await until(lambda: user_channels(redis_admin) == [], 2, "unsubscribed on exit")


async def test_wildcard_pattern_never_sees_liveness_tokens(client: RedisClient) -> None:
    sub = await client.psubscribe("*")
    await asyncio.sleep(1.2)  # idle long enough for liveness checks to run
    await client.publish("visible", 1)
    got = await receive(sub)
    assert (got.channel, got.data) == ("visible", 1)
    assert sub.pending == 0
    await sub.close()


# -- lifecycle and semantics -----------------------------------------------------------------


async def test_unsubscribe_removes_channels_from_every_subscription(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    both = await client.subscribe("a", "b")
    only_a = await client.subscribe("a")
    await client.publish("a", "before")
    await until(lambda: only_a.pending == both.pending == 1, 2, "message buffered")
    await client.unsubscribe("a")

    assert both.channels == ("b",)
    assert not both.closed
    assert only_a.closed
    assert only_a.channels == ()
    assert (await receive(only_a)).data == "before"  # buffered messages are still delivered
    with pytest.raises(StopAsyncIteration):
        await receive(only_a)
    assert (await receive(both)).data == "before"
    await until(lambda: user_channels(redis_admin) == ["b"], 2, "only b left in Redis")
    await client.publish("b", "still here")
    assert (await receive(both)).data == "still here"
    await client.unsubscribe("never-subscribed")
    await both.close()


async def test_close_is_idempotent_and_stops_iteration(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    sub = await client.subscribe("c")
    other = await client.subscribe("c")
    waiter = asyncio.create_task(receive(sub, 5))
    await asyncio.sleep(0.05)
    await sub.close()
    await sub.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 2)
    assert user_channels(redis_admin) == ["c"]  # another subscriber still listens
    await other.close()
    await until(lambda: user_channels(redis_admin) == [], 2, "last subscriber unsubscribed")


async def test_closing_the_hub_ends_a_waiting_iterator(client: RedisClient) -> None:
    sub = await client.subscribe("x")
    waiter = asyncio.create_task(receive(sub, 10))
    await asyncio.sleep(0.05)
    await client.pubsub.aclose()
    await client.pubsub.aclose()
    with pytest.raises(SubscriptionClosed) as caught:
        await asyncio.wait_for(waiter, 2)
    assert caught.value.reason == "closed"
    with pytest.raises(RedisUnavailable) as refused:
        await client.subscribe("x")
    assert refused.value.reason == "closed"


async def test_closing_the_client_closes_the_hub(redis_config: RedisConfig) -> None:
    c = RedisClient(redis_config)
    await c.connect()
    sub = await c.subscribe("y")
    await c.aclose()
    with pytest.raises(SubscriptionClosed):
        await receive(sub)


async def test_names_and_sizes_are_validated(client: RedisClient) -> None:
    hub = client.pubsub
    with pytest.raises(ValueError, match="at least one"):
        await hub.subscribe()
    with pytest.raises(ValueError, match="empty"):
        await hub.subscribe("")
    with pytest.raises(TypeError):
        await hub.subscribe(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await hub.publish("x" * 1025, 1)
    with pytest.raises(ValueError, match="reserved"):
        await hub.subscribe(LIVENESS + "abc")
    with pytest.raises(ValueError, match="buffer_size"):
        await hub.subscribe("ok", buffer_size=0)
    with pytest.raises(ValueError, match="liveness"):
        PubSubHub(client, liveness_timeout=0)
    assert hub.stats().subscriptions == 0


async def test_stats_and_repr(client: RedisClient) -> None:
    sub = await client.subscribe("s1", "s2")
    psub = await client.psubscribe("p.*")
    await until(lambda: client.pubsub.connected, 2, "hub connected")
    stats = client.pubsub.stats()
    assert (stats.subscriptions, stats.channels, stats.patterns) == (2, 2, 1)
    assert (stats.reconnects, stats.dropped, stats.connected) == (0, 0, True)
    assert "connected" in repr(client.pubsub)
    assert "channels=2" in repr(sub)
    await sub.close()
    await psub.close()


# -- degradation and recovery ----------------------------------------------------------------


async def test_publish_and_subscribe_fail_fast_when_redis_is_down() -> None:
    config = RedisConfig(host="127.0.0.1", port=free_port())
    async with RedisClient(config) as c:
        assert not c.available
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await c.publish("x", 1)
        with pytest.raises(RedisUnavailable):
            await c.subscribe("x")
        assert time.monotonic() - started < 0.2


async def test_subscribe_after_server_death_raises_redis_unavailable(
    fault_server: EmbeddedRedis, fault_client: RedisClient
) -> None:
    await fault_client.subscribe("x")
    fault_server.kill()
    await until(lambda: not fault_client.available, 2, "client sees the outage")
    started = time.monotonic()
    with pytest.raises(RedisUnavailable):
        await fault_client.subscribe("y")
    with pytest.raises(RedisUnavailable):
        await fault_client.publish("x", 1)
    assert time.monotonic() - started < 3.0  # fast once a reconnect failed; bounded always


async def assert_recovers(
    client: RedisClient, server: EmbeddedRedis, subs: list[Subscription], reconnects: list[int]
) -> None:
    hub = client.pubsub
    await until(lambda: hub.stats().reconnects == 1, 5, "hub resubscribed")
    assert reconnects == [1]
    assert all(s.gaps == 1 for s in subs)
    await until(lambda: client.available, 3, "client available again")
    # Published over a fresh connection: this test is about the subscriber side.
    with redis.Redis.from_url(server.url, socket_timeout=2) as publisher:
        assert publisher.publish("live", '{"after":true}') >= 1
    for sub in subs:
        got = await receive(sub)
        assert got.data == {"after": True}
        assert got.gap_before


async def test_server_restart_resubscribes_and_reports_the_gap(
    fault_server: EmbeddedRedis, fault_client: RedisClient
) -> None:
    subs = [await fault_client.subscribe("live") for _ in range(3)]
    subs.append(await fault_client.psubscribe("li*"))
    calls: list[int] = []
    fault_client.pubsub.add_reconnect_listener(lambda: calls.append(len(calls) + 1))
    await asyncio.to_thread(fault_server.restart)
    await assert_recovers(fault_client, fault_server, subs, calls)


async def test_first_publish_after_a_server_restart_succeeds(
    fault_server: EmbeddedRedis, fault_client: RedisClient
) -> None:
    await fault_client.set("warm", "pool")
    await asyncio.to_thread(fault_server.restart)
    await until(lambda: fault_client.available, 3, "client available again")
    assert await fault_client.publish("anything", 1) == 0


async def test_client_kill_of_the_subscriber_is_repaired_without_marking_redis_down(
    fault_server: EmbeddedRedis, fault_client: RedisClient, fault_admin: redis.Redis
) -> None:
    subs = [await fault_client.subscribe("live") for _ in range(3)]
    calls: list[int] = []
    fault_client.pubsub.add_reconnect_listener(lambda: calls.append(len(calls) + 1))
    lost: list[bool] = []
    remove = fault_client.pubsub.add_disconnect_listener(lambda: lost.append(True))
    states: list[str] = []
    fault_client.add_state_listener(lambda state, _reason: states.append(state.value))
    assert fault_admin.client_kill_filter(_type="pubsub") == 1
    await assert_recovers(fault_client, fault_server, subs, calls)
    assert len(fault_admin.client_list(_type="pubsub")) == 1
    # Redis itself was fine: readiness must not flap for a repaired subscriber connection,
    # but consumers that must not miss messages were told at once.
    assert states == []
    assert lost == [True]
    remove()


async def test_subscribe_racing_a_reconnect_is_served_on_the_new_connection(
    fault_client: RedisClient, fault_admin: redis.Redis
) -> None:
    first = await fault_client.subscribe("one")
    fault_admin.client_kill_filter(_type="pubsub")
    late = await fault_client.subscribe("two")
    await until(lambda: fault_client.available, 3, "client available again")
    assert await fault_client.publish("two", 2) == 1
    assert (await receive(late)).data == 2
    await first.close()
    await late.close()


async def test_frozen_server_is_detected_without_traffic_and_recovers(
    fault_server: EmbeddedRedis, fault_client: RedisClient
) -> None:
    sub = await fault_client.subscribe("live")
    await until(lambda: fault_client.pubsub.connected, 2, "hub connected")
    fault_server.freeze()
    try:
        detected = await until(lambda: not fault_client.available, 2.0, "freeze noticed")
    finally:
        fault_server.thaw()
    thawed = await until(lambda: fault_client.available, 2.0, "available after thaw")
    assert fault_client.pubsub.stats().reconnects >= 1
    assert await fault_client.publish("live", "back") == 1
    got = await receive(sub)
    assert got.data == "back"
    assert got.gap_before
    print(f"freeze detected in {detected:.2f}s, available {thawed:.2f}s after thaw")


async def test_a_busy_event_loop_does_not_make_a_healthy_server_dead(
    fault_client: RedisClient,
) -> None:
    """Our loop blocked (``time.sleep`` in a callback) for longer than the liveness timeout
    while a check waits: the token comes back into the socket buffer, unread until the loop
    is free again. That is no verdict on the server: no reconnect, no gap, no down vote."""
    sub = await fault_client.subscribe("busy")
    hub = fault_client.pubsub
    await until(lambda: hub.connected, 2, "hub connected")
    listener = hub._classic  # white box: block the loop right as a check starts
    issue = listener._issue_token
    blocked: list[bytes] = []
    states: list[str] = []
    fault_client.add_state_listener(lambda state, _reason: states.append(state.value))

    def issue_then_block() -> tuple[bytes, asyncio.Future[None]]:
        token, seen = issue()
        if len(blocked) < 2:
            blocked.append(token)
            asyncio.get_running_loop().call_soon(time.sleep, 2.5 * listener._timeout)
        return token, seen

    listener._issue_token = issue_then_block  # type: ignore[method-assign]
    await until(lambda: len(blocked) == 2 and listener._token is None, 10, "two checks")
    await asyncio.sleep(3 * listener._interval)  # and a few ordinary checks after them
    assert hub.stats().reconnects == 0
    assert states == []
    assert fault_client.available
    assert await fault_client.publish("busy", 1) == 1
    got = await receive(sub)
    assert (got.data, got.gap_before) == (1, False)
    await sub.close()


async def test_started_hub_alone_reports_a_frozen_server(fault_server: EmbeddedRedis) -> None:
    async with RedisClient(RedisConfig(url=fault_server.url)) as c:
        c.pubsub.start()  # no subscriptions: just the readiness signal
        await until(lambda: c.pubsub.connected, 2, "hub connected")
        fault_server.freeze()
        try:
            await until(lambda: not c.available, 2.0, "freeze noticed")
            assert c.health_reason.startswith("pubsub: liveness")
        finally:
            fault_server.thaw()
        await until(lambda: c.available, 2.0, "available after thaw")


async def test_unconfirmed_subscribe_times_out_and_leaves_nothing_behind(
    fault_server: EmbeddedRedis,
) -> None:
    config = RedisConfig(url=fault_server.url, dial_timeout=0.4, operation_timeout=0.4)
    async with RedisClient(config) as c:
        c.pubsub.start()
        await until(lambda: c.pubsub.connected, 2, "hub connected")
        fault_server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(RedisUnavailable) as caught:
                await c.subscribe("never-confirmed")
            assert caught.value.reason == "timeout"
            assert time.monotonic() - started < 1.5
            assert (c.pubsub.stats().subscriptions, c.pubsub.stats().channels) == (0, 0)
        finally:
            fault_server.thaw()
        await until(lambda: c.available, 3, "available after thaw")
        async with await c.subscribe("confirmed") as sub:
            assert await c.publish("confirmed", 1) == 1
            assert (await receive(sub)).data == 1

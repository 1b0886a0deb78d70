"""Sharded pub/sub: the setting, the name matching, and the behaviour on one server.

Outside Redis Cluster the setting still applies (the same commands everywhere, so an
application behaves the same in development as in production): sharded channels use
SPUBLISH/SSUBSCRIBE, on a shard connection of their own next to the classic one. The
cluster side (slots on several nodes, failover, resharding) is in
``tests/topology/test_sharded_pubsub.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis

from gateway_redis import (
    ConfigurationError,
    Message,
    RedisClient,
    RedisConfig,
    RedisUnavailable,
    SubscriptionClosed,
)
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.pubsub._sharded import ShardedNames
from tests.pubsubutil import receive, redis_cli, until

SHARD = "gateway-redis-pubsub-shard"  # CLIENT SETNAME of the shard connection


def shard_channels(admin: redis.Redis) -> list[str]:
    return sorted(c.decode() for c in admin.execute_command("PUBSUB", "SHARDCHANNELS"))


def shard_clients(admin: redis.Redis) -> list[dict[str, str]]:
    return [c for c in admin.client_list(_type="pubsub") if c.get("name") == SHARD]


@pytest.fixture
def sharded_config(redis_config: RedisConfig) -> RedisConfig:
    return redis_config.replace(sharded_channels=("orders:*", "ticker"))


@pytest.fixture
async def sharded(sharded_config: RedisConfig) -> AsyncIterator[RedisClient]:
    async with RedisClient(sharded_config) as c:
        yield c


# -- configuration -----------------------------------------------------------------------------


def test_sharded_channels_default_to_none() -> None:
    assert RedisConfig().sharded_channels == ()
    assert RedisConfig.from_env({}).sharded_channels == ()
    assert RedisConfig.from_env({"REDIS_SHARDED_CHANNELS": ""}).sharded_channels == ()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("orders:*", "ticker"), ("orders:*", "ticker")),
        (["a", "b", "a"], ("a", "b")),  # deduplicated, order kept
        ("orders:*, ticker ,", ("orders:*", "ticker")),  # a comma-separated string
        (("*",), ("*",)),  # every channel
        (("with space",), ("with space",)),
    ],
)
def test_sharded_channels_accepted(given: object, expected: tuple[str, ...]) -> None:
    config = RedisConfig(sharded_channels=given)  # type: ignore[arg-type]
    assert config.sharded_channels == expected
    assert "sharded_channels=" in repr(config)


def test_sharded_channels_from_env() -> None:
    config = RedisConfig.from_env({"REDIS_SHARDED_CHANNELS": "orders:*,notifications:*, ticker"})
    assert config.sharded_channels == ("orders:*", "notifications:*", "ticker")


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("a*b", "glob pattern"),
        ("*orders", "glob pattern"),
        ("orders:**", "glob pattern"),
        ("user:?", "glob pattern"),
        ("room:[12]", "glob pattern"),
        ("__gateway_redis__:liveness", "reserved"),
        ("x" * 1025, "over 1024 bytes"),
    ],
)
def test_bad_sharded_channels_name_the_variable(given: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        RedisConfig.from_env({"REDIS_SHARDED_CHANNELS": given})
    assert str(caught.value).startswith("REDIS_SHARDED_CHANNELS: ")
    with pytest.raises(ConfigurationError, match=r"^sharded_channels: "):
        RedisConfig(sharded_channels=(given,))


@pytest.mark.parametrize("given", [("",), (1,), 5, ("\ud800",)])
def test_malformed_sharded_channels_are_refused(given: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^sharded_channels: "):
        RedisConfig(sharded_channels=given)  # type: ignore[arg-type]


# -- which names are sharded ---------------------------------------------------------------------


def test_exact_names_and_prefixes_match() -> None:
    names = ShardedNames(("orders:*", "ticker"))
    assert all(names.match(n) for n in ("orders:1", "orders:", "ticker"))
    assert not any(names.match(n) for n in ("ticker:1", "order", "news"))
    assert ShardedNames(("*",)).match("anything")
    assert not ShardedNames(()).match("orders:1")


@pytest.mark.parametrize(
    ("pattern", "overlap"),
    [
        ("orders:*", "all"),  # every channel it matches starts with orders:
        ("orders:eu:?", "all"),
        ("orders:1", "all"),  # a pattern without wildcards: one sharded name
        ("ticker", "all"),
        ("ord*", "some"),
        ("*", "some"),
        ("tick?r", "some"),
        ("news:*", None),
        ("ticker:*", None),
        ("order", None),
    ],
)
def test_pattern_overlap_with_sharded_channels(pattern: str, overlap: str | None) -> None:
    assert ShardedNames(("orders:*", "ticker")).pattern_overlap(pattern) == overlap
    assert ShardedNames(("*",)).pattern_overlap(pattern) == "all"
    assert ShardedNames(()).pattern_overlap(pattern) is None


# -- one server (standalone mode) -----------------------------------------------------------


async def test_sharded_channel_uses_spublish_and_ssubscribe_on_a_standalone_server(
    sharded: RedisClient, redis_admin: redis.Redis, redis_server: EmbeddedRedis
) -> None:
    sub = await sharded.subscribe("orders:1", "news")
    assert shard_channels(redis_admin) == ["orders:1"]
    assert b"orders:1" not in redis_admin.pubsub_channels()
    assert b"news" in redis_admin.pubsub_channels()
    assert len(shard_clients(redis_admin)) == 1

    assert await sharded.publish("orders:1", {"n": 1}) == 1
    got = await receive(sub)
    assert (got.channel, got.data, got.pattern) == ("orders:1", {"n": 1}, None)
    # Separate namespaces: a classic PUBLISH never reaches a sharded subscription; another
    # service's SPUBLISH does, as is.
    assert await redis_cli(redis_server.port, "PUBLISH", "orders:1", "classic") == "0"
    assert await redis_cli(redis_server.port, "SPUBLISH", "orders:1", '{"from":"cli"}') == "1"
    got = await receive(sub)
    assert (got.payload, got.data) == ('{"from":"cli"}', {"from": "cli"})
    stats = sharded.pubsub.stats()
    assert (stats.channels, stats.sharded_channels, stats.shard_connections) == (2, 1, 1)
    await sub.close()
    await until(lambda: shard_channels(redis_admin) == [], 2, "SUNSUBSCRIBE")


async def test_sharded_subscriptions_are_reference_counted_and_share_one_connection(
    sharded: RedisClient, redis_admin: redis.Redis
) -> None:
    names = [f"orders:{i}" for i in range(30)]
    subs = [await sharded.subscribe(names[i % 30]) for i in range(300)]
    concurrent = await asyncio.gather(*(sharded.subscribe("ticker") for _ in range(50)))
    assert shard_channels(redis_admin) == sorted([*names, "ticker"])
    assert len(shard_clients(redis_admin)) == 1
    assert sharded.pubsub.stats().sharded_channels == 31
    assert await sharded.publish("ticker", 42) == 1  # one Redis receiver: the hub
    assert [(await receive(s)).data for s in concurrent] == [42] * 50
    assert await sharded.publish("orders:7", "x") == 1
    assert sum(1 for s in subs if s.channels == ("orders:7",)) == 10
    for s in subs:
        if s.channels == ("orders:7",):
            assert (await receive(s)).data == "x"
    await asyncio.gather(*(s.close() for s in [*subs, *concurrent]))
    await until(lambda: shard_channels(redis_admin) == [], 2, "every channel unsubscribed")
    # The connection lingers for reuse (closed after a few idle seconds).
    assert [c for c in redis_admin.client_list() if c.get("name") == SHARD]


async def test_sharded_callback_subscription_and_bounded_buffer(sharded: RedisClient) -> None:
    seen: list[Message] = []
    callback = await sharded.pubsub.subscribe("orders:cb", on_message=seen.append)
    slow = await sharded.subscribe("orders:cb", buffer_size=5)
    for i in range(20):
        await sharded.publish("orders:cb", i)
    await until(lambda: len(seen) == 20, 2, "every callback delivery")
    assert [m.data for m in seen] == list(range(20))
    await until(lambda: slow.dropped == 15, 2, "the buffer overflow")
    kept = slow.drain()
    assert [m.data for m in kept] == list(range(15, 20))
    assert kept[0].gap_before
    await callback.close()
    await slow.close()


async def test_hub_unsubscribe_ends_sharded_channels(
    sharded: RedisClient, redis_admin: redis.Redis
) -> None:
    sub = await sharded.subscribe("orders:a", "news")
    only = await sharded.subscribe("orders:a")
    await sharded.unsubscribe("orders:a")
    assert sub.channels == ("news",)
    with pytest.raises(StopAsyncIteration):
        await receive(only)
    await until(lambda: shard_channels(redis_admin) == [], 2, "SUNSUBSCRIBE")
    assert await sharded.publish("orders:a", 1) == 0
    await sub.close()


async def test_patterns_and_sharded_channels(
    sharded: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="only matches sharded channels"):
        await sharded.psubscribe("orders:*")
    with pytest.raises(ValueError, match="only matches sharded channels"):
        await sharded.psubscribe("news:*", "ticker")
    with caplog.at_level(logging.WARNING, logger="gateway_redis.pubsub"):
        wide = await sharded.psubscribe("*")
        again = await sharded.psubscribe("*")
    warnings = [r for r in caplog.records if "may match sharded channels" in r.getMessage()]
    assert len(warnings) == 1  # once per pattern
    try:
        await sharded.publish("orders:1", "sharded")
        await sharded.publish("news", "classic")
        got = await receive(wide)
        assert (got.channel, got.data) == ("news", "classic")  # never the sharded one
    finally:
        await wide.close()
        await again.close()


async def test_lost_shard_connection_marks_only_sharded_subscriptions(
    sharded: RedisClient, redis_admin: redis.Redis
) -> None:
    shard = await sharded.subscribe("orders:1")
    classic = await sharded.subscribe("news")
    lost: list[float] = []
    regained: list[float] = []
    sharded.pubsub.add_disconnect_listener(lambda: lost.append(time.monotonic()))
    sharded.pubsub.add_reconnect_listener(lambda: regained.append(time.monotonic()))
    (victim,) = shard_clients(redis_admin)
    killed_at = time.monotonic()
    assert redis_admin.client_kill_filter(_id=victim["id"]) == 1
    await until(lambda: bool(regained), 3, "resubscribed")
    assert lost
    assert lost[0] < regained[0]
    print(f"\nshard connection killed: resubscribed after {regained[0] - killed_at:.3f}s")
    assert shard_channels(redis_admin) == ["orders:1"]
    assert await sharded.publish("orders:1", "after") == 1
    got = await receive(shard)
    assert (got.data, got.gap_before) == ("after", True)
    assert await sharded.publish("news", "classic") == 1
    got = await receive(classic)
    assert (got.data, got.gap_before) == ("classic", False)
    assert classic.gaps == 0
    assert sharded.available  # a drop repaired at once does not mark Redis down
    await shard.close()
    await classic.close()


async def test_refused_sharded_channel_raises_misconfigured_and_ends_subscriptions(
    fault_server: EmbeddedRedis,
) -> None:
    # An ACL user that may use every channel but secret:*.
    with redis.Redis.from_url(fault_server.url) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "app", "on", ">app-password-0123456789", "~*", "+@all",
            "resetchannels", "&orders:*", "&news", "&__gateway_redis__:*",
        )  # fmt: skip
    config = RedisConfig(
        url=f"redis://app:app-password-0123456789@127.0.0.1:{fault_server.port}/0",
        sharded_channels=("orders:*", "secret:*"),
    )
    async with RedisClient(config) as c:
        ok = await c.subscribe("orders:1")
        with pytest.raises(RedisUnavailable) as caught:
            await c.subscribe("secret:1", "news")
        assert caught.value.reason == "misconfigured"
        assert "NOPERM" in str(caught.value) or "permission" in str(caught.value)
        # Nothing was left behind and the rest works.
        assert c.pubsub.stats().channels == 1
        assert await c.publish("orders:1", "still") == 1
        assert (await receive(ok)).data == "still"
        await ok.close()


async def test_established_subscription_refused_after_a_reconnect_ends_failed(
    fault_server: EmbeddedRedis,
) -> None:
    password = "app-password-0123456789"
    with redis.Redis.from_url(fault_server.url) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "app", "on", f">{password}", "~*", "+@all", "allchannels"
        )
    config = RedisConfig(
        url=f"redis://app:{password}@127.0.0.1:{fault_server.port}/0",
        sharded_channels=("orders:*",),
    )
    async with RedisClient(config) as c:
        sub = await c.subscribe("orders:1")
        with redis.Redis.from_url(fault_server.url) as admin:
            # Revoking a channel permission disconnects the user's subscribers using it.
            admin.execute_command(
                "ACL", "SETUSER", "app", "resetchannels", "&__gateway_redis__:*", "&news"
            )
        with pytest.raises(SubscriptionClosed) as caught:
            await receive(sub, 5)
        assert caught.value.reason == "failed"
        assert c.pubsub.stats().sharded_channels == 0

"""Channel presence (gateway_redis.pubsub.presence) on one real server: join, heartbeat,
leave, expiry of members nobody refreshes (a dead instance), O(1) counts, bounds.

The Cluster side (the three keys in one slot) is in ``tests/topology/test_presence_cluster.py``.
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway_redis import (
    ChannelPresence,
    PresenceChange,
    PresenceMember,
    PresenceStats,
    RedisClient,
    RedisConfig,
)


@pytest.fixture
def presence(client: RedisClient) -> ChannelPresence:
    return ChannelPresence(client, ttl=30)


async def test_join_list_stats_leave(presence: ChannelPresence) -> None:
    change = await presence.join(
        "room",
        [
            PresenceMember("alice", "c1", {"name": "Alice"}),
            PresenceMember("alice", "c2"),
            PresenceMember("bob", "c3"),
        ],
    )
    assert [(m.user, m.conn) for m in change.joined] == [
        ("alice", "c1"),
        ("alice", "c2"),
        ("bob", "c3"),
    ]
    assert (change.left, change.connections) == ((), 3)
    assert await presence.presence_stats("room") == PresenceStats(connections=3, users=2)
    members = {m.conn: m for m in await presence.presence("room")}
    assert members["c1"] == PresenceMember("alice", "c1", {"name": "Alice"})
    assert members["c3"] == PresenceMember("bob", "c3", None)
    # a heartbeat (join again) changes nothing visible
    again = await presence.join("room", [PresenceMember("alice", "c1", {"name": "Alice"})])
    assert again == PresenceChange(connections=3)
    assert await presence.presence_stats("room") == PresenceStats(3, 2)
    left = await presence.leave("room", ["c1", "nope"])
    assert [(m.user, m.conn) for m in left.left] == [("alice", "c1")]
    assert left.connections == 2
    assert await presence.presence_stats("room") == PresenceStats(2, 2)
    await presence.leave("room", ["c2"])
    assert await presence.presence_stats("room") == PresenceStats(1, 1)
    assert await presence.presence_stats("other") == PresenceStats(0, 0)
    assert await presence.presence("other") == []


async def test_members_not_refreshed_expire_within_one_ttl(redis_config: RedisConfig) -> None:
    # Two "instances": one keeps its heartbeat, the other dies (stops refreshing).
    async with RedisClient(redis_config) as a, RedisClient(redis_config) as b:
        pruned: list[PresenceMember] = []

        def expired(channel: str, members: tuple[PresenceMember, ...]) -> None:
            assert channel == "lobby"
            pruned.extend(members)

        live = ChannelPresence(a, ttl=1.5, on_expired=expired)
        dead = ChannelPresence(b, ttl=1.5)
        await live.join("lobby", [PresenceMember("alice", "a1")])
        await dead.join("lobby", [PresenceMember("bob", "b1"), PresenceMember("alice", "b2")])
        assert await live.presence_stats("lobby") == PresenceStats(3, 2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.5 + 1.0:
            change = await live.join("lobby", [PresenceMember("alice", "a1")])  # heartbeat
            assert change.joined == change.left == ()
            await asyncio.sleep(0.25)
        assert await live.presence_stats("lobby") == PresenceStats(1, 1)
        assert [m.conn for m in await live.presence("lobby")] == ["a1"]
        assert sorted((m.user, m.conn) for m in pruned) == [("alice", "b2"), ("bob", "b1")]


async def test_a_channel_whose_members_all_died_leaves_no_keys(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    short = ChannelPresence(client, ttl=1)
    await short.join("ghost", [PresenceMember("u", "c")])
    keys = sorted(k.decode() for k in redis_admin.keys("*"))
    assert keys == [client.key(f"pres:{{ghost}}:{k}:ghost") for k in "huz"]
    await asyncio.sleep(1.3)
    assert redis_admin.keys("*") == []


async def test_stats_are_cheap_for_a_large_channel(client: RedisClient) -> None:
    presence = ChannelPresence(client, ttl=60)
    for start in range(0, 5000, 500):
        batch = [PresenceMember(f"u{i % 1000}", f"c{i}") for i in range(start, start + 500)]
        await presence.join("big", batch)
    assert await presence.presence_stats("big") == PresenceStats(5000, 1000)
    assert len(await presence.presence("big", limit=10)) == 10


async def test_bounds_and_bad_input(client: RedisClient, presence: ChannelPresence) -> None:
    with pytest.raises(ValueError, match="max_info"):
        await presence.join("room", [PresenceMember("u", "c", "x" * 2000)])
    with pytest.raises(ValueError, match="user"):
        await presence.join("room", [PresenceMember("", "c")])
    with pytest.raises(ValueError, match="conn"):
        await presence.leave("room", ["x" * 300])
    with pytest.raises(ValueError, match="limit"):
        await presence.presence("room", limit=0)
    with pytest.raises(ValueError, match="ttl"):
        ChannelPresence(client, ttl=0.5)
    with pytest.raises(ValueError, match="max_info"):
        ChannelPresence(client, max_info=0)
    assert await presence.join("room", []) == PresenceChange()
    # a conn re-joined under another user moves between users
    await presence.join("room", [PresenceMember("u1", "c")])
    await presence.join("room", [PresenceMember("u2", "c")])
    assert await presence.presence_stats("room") == PresenceStats(1, 1)
    assert [m.user for m in await presence.presence("room")] == ["u2"]
    # users and info beyond ASCII, with the separator in them
    await presence.join("intl", [PresenceMember("ålice:ü", "c:1", {"n": "Zoë"})])
    assert await presence.presence("intl") == [PresenceMember("ålice:ü", "c:1", {"n": "Zoë"})]
    await presence.leave("intl", ["c:1"])
    assert await presence.presence_stats("intl") == PresenceStats(0, 0)

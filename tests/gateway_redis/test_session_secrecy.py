"""What Redis and a session ID give away, and how many sessions one user can hold.

- Redis holds no session ID (key names, values of every type, and the commands a
  ``MONITOR`` sees): an ID grants its session, so reading Redis must grant none.
- A session ID says nothing about its user: two sessions of one user share no visible
  tag, and no tag can be computed from a user id.
- A user has at most ``max_per_user`` sessions, also under concurrent logins; the oldest
  end first.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from gateway_redis import RedisClient, SessionNotFound
from gateway_redis.sessions import SessionEvent, SessionStore, id_digest, slot_tag
from gateway_redis.sessions.codec import index_member

# ---------------------------------------------------------------- helpers


def everything_stored(sync_admin: redis.Redis) -> Iterator[bytes]:
    """Every key name, and every value, member, field and score text in the database."""
    admin: Any = sync_admin  # redis-py's sync replies are typed as bytes | str
    for key in admin.scan_iter("*"):
        yield key
        kind = admin.type(key).decode()
        if kind == "string":
            yield admin.get(key) or b""
        elif kind == "hash":
            for field, value in admin.hgetall(key).items():
                yield field
                yield value
        elif kind == "set":
            yield from admin.smembers(key)
        elif kind == "zset":
            yield from (m for m, _ in admin.zrange(key, 0, -1, withscores=True))
        elif kind == "list":
            yield from admin.lrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected {kind} at {key!r}")


def secrets_of(session_id: str) -> list[bytes]:
    """What would give ``session_id`` away: the whole ID and its 256-bit random part."""
    return [session_id.encode(), session_id.split(".")[1].encode()]


class Monitor:
    """Every command the server runs while open (Redis ``MONITOR``), in a thread."""

    STOP = "monitor-stop-marker"

    def __init__(self, admin: redis.Redis) -> None:
        self._admin: Any = admin
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self._admin.monitor() as m:
            self._ready.set()
            for entry in m.listen():
                command = str(entry["command"])
                if self.STOP in command:
                    return
                self.commands.append(command)

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._admin.get(self.STOP)
        self._thread.join(10)
        assert not self._thread.is_alive()


# ---------------------------------------------------------------- no session ID in Redis


async def test_redis_holds_no_session_id_in_any_key_or_value(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    ids = [await client.create_session(f"user{i % 3}", {"n": i}) for i in range(9)]
    ids[0] = await client.sessions.regenerate(ids[0])
    await client.update_session(ids[1], {"m": 1})
    await client.sessions.touch(ids[2])
    await client.delete_session(ids[3])
    for user in ("user0", "user1", "user2"):
        assert len(await client.get_user_sessions(user)) == 3 - (user == "user0")
    stored = list(everything_stored(redis_admin))
    assert len(stored) > 9  # really scanned: the session hashes and three indexes
    for session_id in ids:
        for secret in secrets_of(session_id):
            assert not [s for s in stored if secret in s], "a session ID is stored in Redis"


async def test_no_session_id_is_sent_to_redis(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    """Whoever runs MONITOR (or reads a replica's stream) learns no session ID."""
    await client.create_session("warm-up")  # scripts loaded, connections open
    with Monitor(redis_admin) as monitor:
        first = await client.create_session("alice", {"a": 1})
        second = await client.sessions.regenerate(first)
        await client.get_session(second)
        await client.update_session(second, {"b": 2})
        await client.sessions.touch(second)
        third = await client.create_session("alice")
        await client.get_user_sessions("alice")
        await client.delete_session(third)
        await client.delete_user_sessions("alice")
    assert len(monitor.commands) > 8
    sent = "\n".join(monitor.commands).encode()
    for session_id in (first, second, third):
        for secret in secrets_of(session_id):
            assert secret not in sent


async def test_listed_sessions_carry_the_digest_of_their_id(client: RedisClient) -> None:
    mine = await client.create_session("alice", {"here": True})
    (listed,) = await client.get_user_sessions("alice")
    assert listed.digest == id_digest(mine) == (await client.get_session(mine)).digest
    assert listed.id == ""
    assert listed.metadata["here"] is True


async def test_raw_ids_left_by_0_1_0_leave_the_index_at_its_first_read(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    admin: Any = redis_admin  # redis-py's sync replies are typed loosely
    kept, ended = await client.create_session("alice"), await client.create_session("alice")
    (index,) = admin.scan_iter("gw:user-sessions:*")
    for session_id in (kept, ended):  # as 0.1.0 wrote them: the raw ID as the member
        score = admin.zscore(index, index_member(session_id))
        admin.zrem(index, index_member(session_id))
        admin.zadd(index, {session_id: score})
    await client.delete_session(ended)
    listed = await client.get_user_sessions("alice")
    assert [s.digest for s in listed] == [id_digest(kept)]
    assert [m.decode() for m in admin.zrange(index, 0, -1)] == [index_member(kept)]
    assert await client.delete_user_sessions("alice") == 1


# ---------------------------------------------------------------- IDs do not name their user


async def test_two_sessions_of_one_user_share_no_tag_and_no_tag_comes_from_the_user(
    client: RedisClient,
) -> None:
    assert slot_tag("alice") == "f75acb62d091"  # the tag 0.1.0 put in every alice ID
    ids = [await client.create_session("alice") for _ in range(20)]
    tags = {session_id[:12] for session_id in ids}
    assert len(tags) == len(ids)
    unkeyed = {
        slot_tag("alice"),
        hashlib.sha256(b"alice").hexdigest()[:12],
        id_digest("alice")[:12],
    }
    assert not tags & unkeyed
    # The tag is the only structured part: the rest is the random token.
    assert all(len(session_id.split(".")[1]) == 43 for session_id in ids)


async def test_regenerating_gives_an_id_unrelated_to_the_old_one(client: RedisClient) -> None:
    old = await client.create_session("alice")
    new = await client.sessions.regenerate(old)
    assert new[:12] != old[:12]
    assert new.split(".")[1] != old.split(".")[1]


# ---------------------------------------------------------------- sessions per user


async def _create_in_order(store: SessionStore, user: str, n: int) -> list[str]:
    """``n`` sessions of ``user``, each created in a later millisecond than the one before
    (age is known to the millisecond: Redis keeps times in ms)."""
    ids = []
    for _ in range(n):
        ids.append(await store.create(user))
        await asyncio.sleep(0.002)
    return ids


async def _live(client: RedisClient, ids: list[str]) -> list[str]:
    live = []
    for session_id in ids:
        try:
            await client.get_session(session_id)
        except SessionNotFound:
            continue
        live.append(session_id)
    return live


async def test_logins_over_the_cap_end_the_oldest_sessions(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = client.configure_sessions(max_per_user=5)
    heard: list[SessionEvent] = []
    store.on_change(heard.append)
    ids = await _create_in_order(store, "alice", 8)
    bob = await store.create("bob")
    assert await _live(client, ids) == ids[3:]
    assert len(await store.get_user_sessions("alice")) == 5
    assert heard == [{"op": "drop", "ids": [id_digest(i)]} for i in ids[:3]]
    assert (await store.get(bob)).user_id == "bob"
    hashes = [k for k in redis_admin.scan_iter("gw:session:*")]
    assert len(hashes) == 6


async def test_concurrent_logins_never_leave_more_than_the_cap(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = client.configure_sessions(max_per_user=10)
    first = await _create_in_order(store, "alice", 10)
    ids = await asyncio.gather(*(store.create("alice") for _ in range(60)))
    live = await _live(client, [*first, *ids])
    assert len(live) == 10
    assert not set(first) & set(live)  # the ten oldest went first
    assert len(await store.get_user_sessions("alice")) == 10
    assert len(list(redis_admin.scan_iter("gw:session:*"))) == 10
    (index,) = redis_admin.scan_iter("gw:user-sessions:*")
    assert redis_admin.zcard(index) == 10


async def test_the_cap_counts_per_user_and_defaults_to_100(client: RedisClient) -> None:
    ids = await asyncio.gather(*(client.create_session("alice") for _ in range(130)))
    others = [await client.create_session(f"u{i}") for i in range(3)]
    assert len(await client.get_user_sessions("alice")) == 100
    assert len(await _live(client, list(ids))) == 100
    assert await _live(client, others) == others
    assert client.sessions.max_per_user == 100


async def test_a_short_lived_new_session_is_never_the_one_ended(client: RedisClient) -> None:
    store = client.configure_sessions(max_per_user=2)
    a = await store.create("alice", ttl=600)
    await asyncio.sleep(0.002)  # age is known to the millisecond
    b = await store.create("alice", ttl=600)
    brief = await store.create("alice", ttl=5)  # expires first, but it is the new one
    assert await _live(client, [a, b, brief]) == [b, brief]


def test_configure_sessions_validates_the_cap(client: RedisClient) -> None:
    for bad in (0, -3, 100_001, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_per_user"):
            client.configure_sessions(max_per_user=bad)  # type: ignore[arg-type]
    store: Any = client.configure_sessions(max_per_user=7)
    assert isinstance(store, SessionStore)
    assert store.max_per_user == 7


# ---------------------------------------------------------------- keyed tags (tag_key)

KEY = b"0123456789abcdef0123456789abcdef-session-tags"


async def test_keyed_tags_keep_a_users_keys_in_one_slot_and_ids_unlinkable(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = client.configure_sessions(tag_key=KEY, max_per_user=5)
    ids = [await store.create("alice", {"n": i}) for i in range(4)]
    ids[0] = await store.regenerate(ids[0])
    await store.update(ids[1], {"m": 1})
    assert len({i[:12] for i in ids}) == len(ids)  # no shared visible tag
    unkeyed = {slot_tag("alice"), hashlib.sha256(b"alice").hexdigest()[:12]}
    assert not {i[:12] for i in ids} & unkeyed
    keys = [k.decode() for k in redis_admin.scan_iter("gw:*")]
    assert len(keys) == 5  # four sessions and the index
    assert len({key_slot(k.encode()) for k in keys}) == 1  # all of alice's in one slot
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys}
    assert len(tags) == 1
    assert not tags & ({i[:12] for i in ids} | unkeyed)  # the ID shows the tag masked
    for session_id in ids:
        for secret in secrets_of(session_id):
            assert not [s for s in everything_stored(redis_admin) if secret in s]
    listed = await store.get_user_sessions("alice")
    assert {s.digest for s in listed} == {id_digest(i) for i in ids}
    bob = await store.create("bob")
    assert await store.delete_user_sessions("alice") == 4
    (bobs,) = {key_slot(k) for k in redis_admin.scan_iter("gw:*")}  # bob's two keys
    assert bobs != key_slot(keys[0].encode())
    assert (await store.get(bob)).user_id == "bob"


async def test_the_tag_needs_the_key_and_another_key_is_a_cut_over(
    client: RedisClient,
) -> None:
    store = client.configure_sessions(tag_key=KEY)
    other = SessionStore(client, tag_key=KEY[::-1])
    session_id = await store.create("alice")
    assert (await store.get(session_id)).user_id == "alice"
    with pytest.raises(SessionNotFound):  # IDs made under another key do not resolve
        await other.get(session_id)
    assert await other.get_user_sessions("alice") == []  # nor does the user's index
    again = SessionStore(client, tag_key=KEY.decode())  # the same key as str
    assert (await again.get(session_id)).user_id == "alice"
    assert again.settings == store.settings != other.settings
    assert KEY.decode() not in repr(store.settings)


def test_the_tag_key_is_validated(client: RedisClient) -> None:
    for bad, match in ((b"short", "at least 32 bytes"), (42, "str or bytes"), ("é" * 15, "32")):
        with pytest.raises(ValueError, match=f"tag_key must.*{match}") as raised:
            SessionStore(client, tag_key=bad)  # type: ignore[arg-type]
        assert str(bad) not in str(raised.value)

"""Session store against a real Redis: the Go service's usage, expiry, IDs, races, outages."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
import redis

from gateway_redis import (
    RedisClient,
    RedisConfig,
    RedisUnavailable,
    SerializationError,
    SessionNotFound,
)
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.sessions import Session, SessionStore, id_digest
from gateway_redis.sessions.codec import index_member

DAY_MS = 86_400_000


# ---------------------------------------------------------------- helpers


def all_keys(admin: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in admin.scan_iter("*"))


def session_keys(admin: redis.Redis, prefix: str = "gw:") -> list[str]:
    return [k for k in all_keys(admin) if k.startswith(prefix + "session:")]


def index_keys(admin: redis.Redis, prefix: str = "gw:") -> list[str]:
    return [k for k in all_keys(admin) if k.startswith(prefix + "user-sessions:")]


def index_members(admin: redis.Redis, index_key: str) -> list[str]:
    return [m.decode() for m in cast("list[bytes]", admin.zrange(index_key, 0, -1))]


def commands_processed(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_commands_processed"])


def other_id(session_id: str) -> str:
    """A well-formed ID with the same tag that Redis has never seen."""
    return f"{session_id[:12]}.{secrets.token_urlsafe(32)}"


# ---------------------------------------------------------------- the Go service's usage


async def test_go_service_usage_create_get_update_list_delete(client: RedisClient) -> None:
    login = int(time.time())
    session_id = await client.create_session("user123", {"role": "admin", "last_login": login})

    session = await client.get_session(session_id)
    assert session.id == session_id
    assert session.user_id == "user123"
    assert dict(session.metadata) == {"role": "admin", "last_login": login}

    updated = await client.update_session(session_id, {"role": "super_admin", "last_activity": 7})
    assert dict(updated.metadata) == {
        "role": "super_admin",
        "last_login": login,
        "last_activity": 7,
    }
    assert dict((await client.get_session(session_id)).metadata) == dict(updated.metadata)

    second = await client.create_session("user123")
    listed = await client.get_user_sessions("user123")
    assert sorted(s.digest for s in listed) == sorted(map(id_digest, [session_id, second]))
    assert {s.id for s in listed} == {""}  # the store keeps no session IDs

    await client.delete_session(session_id)
    with pytest.raises(SessionNotFound):
        await client.get_session(session_id)
    assert [s.digest for s in await client.get_user_sessions("user123")] == [id_digest(second)]


async def test_session_times_are_utc_aware_and_consistent(client: RedisClient) -> None:
    before = datetime.now(timezone.utc)
    session = await client.get_session(await client.create_session("u1"))
    assert session.created_at.tzinfo is not None
    assert session.created_at.utcoffset() == timedelta(0)
    assert abs(session.created_at - before) < timedelta(seconds=5)
    assert session.last_accessed_at == session.created_at
    assert session.expires_at - session.created_at == timedelta(hours=24)
    assert session.idle_expires_at is None


async def test_metadata_is_a_read_only_view_and_repr_hides_the_id(client: RedisClient) -> None:
    session_id = await client.create_session("u1", {"csrf": "secret-value"})
    session = await client.get_session(session_id)
    with pytest.raises(TypeError):
        session.metadata["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        session.user_id = "other"  # type: ignore[misc]
    assert session_id not in repr(session)
    assert "secret-value" not in repr(session)
    assert isinstance(hash(session), int)


async def test_update_with_none_deletes_the_field(client: RedisClient) -> None:
    session_id = await client.create_session("u1", {"a": 1, "b": 2, "c": None})
    assert dict((await client.get_session(session_id)).metadata) == {"a": 1, "b": 2}
    updated = await client.update_session(session_id, {"a": None, "d": [1, {"x": None}]})
    assert dict(updated.metadata) == {"b": 2, "d": [1, {"x": None}]}


async def test_update_does_not_change_expiry(client: RedisClient, redis_admin: redis.Redis) -> None:
    store = SessionStore(client, default_ttl=60)
    session_id = await store.create("u1")
    before = await store.get(session_id)
    (key,) = session_keys(redis_admin)
    redis_admin.pexpire(key, 30_000)
    after = await store.update(session_id, {"a": 1})
    assert after.expires_at == before.expires_at
    assert after.last_accessed_at == before.last_accessed_at
    assert redis_admin.pttl(key) <= 30_000


# ---------------------------------------------------------------- expiry


async def test_default_ttl_is_24_hours_on_session_and_index(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    await client.create_session("u1", {"a": 1})
    (session_key,) = session_keys(redis_admin)
    (index_key,) = index_keys(redis_admin)
    for key in (session_key, index_key):
        assert DAY_MS - 5_000 < redis_admin.pttl(key) <= DAY_MS


@pytest.mark.parametrize("ttl", [90, 90.0, timedelta(seconds=90)])
async def test_custom_ttl_sets_key_expiry_and_expires_at(
    client: RedisClient, redis_admin: redis.Redis, ttl: float | timedelta
) -> None:
    session_id = await client.create_session("u1", ttl=ttl)
    (key,) = session_keys(redis_admin)
    assert 85_000 < redis_admin.pttl(key) <= 90_000
    session = await client.get_session(session_id)
    assert session.expires_at - session.created_at == timedelta(seconds=90)


async def test_index_ttl_follows_its_latest_session(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    await client.create_session("u1", ttl=600)
    await client.create_session("u1", ttl=60)
    (index_key,) = index_keys(redis_admin)
    assert 595_000 < redis_admin.pttl(index_key) <= 600_000


async def test_session_expires_after_its_ttl_and_the_index_is_pruned(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    short = await client.create_session("u1", ttl=0.3)
    long = await client.create_session("u1", ttl=60)
    await asyncio.sleep(0.4)
    with pytest.raises(SessionNotFound):
        await client.get_session(short)
    assert [s.digest for s in await client.get_user_sessions("u1")] == [id_digest(long)]
    (index_key,) = index_keys(redis_admin)
    assert index_members(redis_admin, index_key) == [index_member(long)]


async def test_expired_by_its_fields_is_not_found_even_if_the_key_lives(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    session_id = await client.create_session("u1", {"a": 1})
    (key,) = session_keys(redis_admin)
    redis_admin.hset(key, "expires_at", int(time.time() * 1000) - 1_000)  # clock jumped
    with pytest.raises(SessionNotFound):
        await client.get_session(session_id)
    with pytest.raises(SessionNotFound):
        await client.update_session(session_id, {"b": 2})
    assert not redis_admin.hexists(key, "m:b")
    assert await client.get_user_sessions("u1") == []


async def test_idle_timeout_slides_with_touch(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = SessionStore(client, default_ttl=60, idle_timeout=0.5)
    session_id = await store.create("u1")
    (key,) = session_keys(redis_admin)
    assert 400 < redis_admin.pttl(key) <= 500
    for _ in range(3):
        await asyncio.sleep(0.3)
        touched = await store.touch(session_id)
        assert touched.idle_expires_at == touched.last_accessed_at + timedelta(seconds=0.5)
    # 0.9 s after creation, longer than the idle timeout: kept alive by the touches
    session = await store.get(session_id)
    assert session.last_accessed_at > session.created_at
    await asyncio.sleep(0.6)
    with pytest.raises(SessionNotFound):
        await store.get(session_id)
    with pytest.raises(SessionNotFound):
        await store.touch(session_id)


async def test_get_does_not_extend_the_idle_timeout(client: RedisClient) -> None:
    store = SessionStore(client, default_ttl=60, idle_timeout=0.4)
    session_id = await store.create("u1")
    for _ in range(3):
        await asyncio.sleep(0.15)
        try:
            await store.get(session_id)
        except SessionNotFound:
            break
    else:
        await asyncio.sleep(0.1)
    with pytest.raises(SessionNotFound):
        await store.get(session_id)


async def test_touch_never_extends_past_the_absolute_expiry(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = SessionStore(client, default_ttl=0.7, idle_timeout=0.5)
    session_id = await store.create("u1")
    (key,) = session_keys(redis_admin)
    await asyncio.sleep(0.3)
    await store.touch(session_id)
    await asyncio.sleep(0.2)
    session = await store.touch(session_id)
    assert 0 < redis_admin.pttl(key) <= 250  # absolute remainder, not the 500 ms idle window
    assert session.expires_at - session.created_at == timedelta(seconds=0.7)
    await asyncio.sleep(0.3)
    with pytest.raises(SessionNotFound):
        await store.touch(session_id)
    assert redis_admin.exists(key) == 0


# ---------------------------------------------------------------- IDs and key names


MALFORMED_IDS = [
    "",
    "abc",
    "0123456789ab",
    "0123456789ab." + "A" * 42,  # too short
    "0123456789ab." + "A" * 44,  # too long
    "0123456789AB." + "A" * 43,  # upper-case tag
    "0123456789ab:" + "A" * 43,  # wrong separator
    "0123456789ab." + "A" * 42 + "B",  # not a canonical 32-byte encoding
    "0123456789ab." + "A" * 42 + "+",  # not url-safe
    "0123456789ab." + "A" * 42 + "\n",
    "x" * 10_000,
    "gw:session:*",
]


@pytest.mark.parametrize("session_id", MALFORMED_IDS)
async def test_malformed_ids_are_not_found_without_any_redis_call(
    client: RedisClient, redis_admin: redis.Redis, session_id: str
) -> None:
    store = SessionStore(client)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get(session_id),
        lambda: store.touch(session_id),
        lambda: store.update(session_id, {"a": 1}),
        lambda: store.regenerate(session_id),
    ]
    before = commands_processed(redis_admin)
    for call in calls:
        with pytest.raises(SessionNotFound):
            await call()
    await store.delete(session_id)  # a no-op, not an error
    assert commands_processed(redis_admin) - before == 1  # the INFO call itself


async def test_non_string_ids_are_not_found(client: RedisClient) -> None:
    for bad in (None, 42, b"0123456789ab." + b"A" * 43):
        with pytest.raises(SessionNotFound):
            await client.get_session(bad)  # type: ignore[arg-type]


async def test_well_formed_unknown_ids_are_not_found(client: RedisClient) -> None:
    known = await client.create_session("alice")
    for session_id in (
        other_id(known),  # the tag of a live session, never issued
        f"{'0' * 12}.{secrets.token_urlsafe(32)}",
    ):
        with pytest.raises(SessionNotFound):
            await client.get_session(session_id)
        with pytest.raises(SessionNotFound):
            await client.update_session(session_id, {"a": 1})
        await client.delete_session(session_id)
    assert len(await client.get_user_sessions("alice")) == 1


async def test_update_never_creates_a_session_under_an_unissued_id(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    known = await client.create_session("alice")
    with pytest.raises(SessionNotFound):
        await client.update_session(other_id(known), {"a": 1})
    assert len(session_keys(redis_admin)) == 1


async def test_ids_are_unique_url_safe_and_carry_256_random_bits(client: RedisClient) -> None:
    ids = [await client.create_session("u1") for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        tag, token = session_id.split(".")
        assert len(tag) == 12
        assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert len({i[:12] for i in ids}) == len(ids)  # random tags, not the user's


async def test_key_names_contain_neither_session_id_nor_user_id(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    user_id = "alice@example.com"
    session_id = await client.create_session(user_id, {"a": 1})
    keys = all_keys(redis_admin)
    assert len(keys) == 2
    token = session_id.split(".")[1]
    for key in keys:
        assert key.startswith("gw:")
        assert token not in key
        assert session_id not in key
        assert "alice" not in key


async def test_every_key_has_the_prefix_and_an_expiry(
    redis_config: RedisConfig, redis_admin: redis.Redis
) -> None:
    async with RedisClient(redis_config.replace(key_prefix="app1:")) as client:
        session_id = await client.create_session("u1", {"a": 1})
        await client.update_session(session_id, {"b": 2})
        await client.sessions.touch(session_id)
        await client.sessions.regenerate(session_id)
        await client.create_session("u2")
    keys = all_keys(redis_admin)
    assert len(keys) == 4
    for key in keys:
        assert key.startswith("app1:")
        assert redis_admin.pttl(key) > 0


# ---------------------------------------------------------------- concurrency


async def test_concurrent_updates_of_distinct_fields_all_survive(client: RedisClient) -> None:
    session_id = await client.create_session("u1", {"base": True})
    await asyncio.gather(*(client.update_session(session_id, {f"f{i}": i}) for i in range(100)))
    metadata = (await client.get_session(session_id)).metadata
    assert dict(metadata) == {"base": True, **{f"f{i}": i for i in range(100)}}


async def test_update_racing_delete_never_resurrects_the_session(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    for round_ in range(50):
        session_id = await client.create_session("u1", {"a": 1})
        update = client.update_session(session_id, {"late": round_})
        delete = client.delete_session(session_id)
        pair = (update, delete) if round_ % 2 else (delete, update)
        results = await asyncio.gather(*pair, return_exceptions=True)
        for result in results:
            assert result is None or isinstance(result, (Session, SessionNotFound))
        with pytest.raises(SessionNotFound):
            await client.get_session(session_id)
        assert session_keys(redis_admin) == []
    assert await client.get_user_sessions("u1") == []
    assert index_keys(redis_admin) == []


async def test_delete_is_idempotent(client: RedisClient, redis_admin: redis.Redis) -> None:
    session_id = await client.create_session("u1")
    await client.delete_session(session_id)
    await client.delete_session(session_id)
    await asyncio.gather(*(client.delete_session(session_id) for _ in range(5)))
    assert all_keys(redis_admin) == []


async def test_delete_user_sessions_returns_count_and_spares_other_users(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    mine = [await client.create_session("alice", {"i": i}) for i in range(5)]
    theirs = await client.create_session("bob")
    await client.delete_session(mine[0])  # already gone: not counted
    assert await client.delete_user_sessions("alice") == 4
    for session_id in mine:
        with pytest.raises(SessionNotFound):
            await client.get_session(session_id)
    assert await client.get_user_sessions("alice") == []
    assert (await client.get_session(theirs)).user_id == "bob"
    assert len(all_keys(redis_admin)) == 2  # bob's session and index
    assert await client.delete_user_sessions("alice") == 0


async def test_delete_user_sessions_handles_many_sessions(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    client.configure_sessions(max_per_user=1000)
    for _ in range(12):  # in rounds the pool serves within its wait on a loaded machine
        await asyncio.gather(*(client.create_session("alice") for _ in range(50)))
    assert await client.delete_user_sessions("alice") == 600
    assert all_keys(redis_admin) == []


async def test_regenerate_issues_a_new_id_keeps_data_and_kills_the_old_id(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    old = await client.create_session("alice", {"cart": [1, 2]}, ttl=120)
    before = await client.get_session(old)
    new = await client.sessions.regenerate(old)
    assert new != old
    assert new[:12] != old[:12]  # nothing links the new ID to the old
    for call in (client.get_session, client.sessions.touch):
        with pytest.raises(SessionNotFound):
            await call(old)
    with pytest.raises(SessionNotFound):
        await client.update_session(old, {"x": 1})
    after = await client.get_session(new)
    assert after.user_id == "alice"
    assert dict(after.metadata) == {"cart": [1, 2]}
    assert after.created_at == before.created_at
    assert after.expires_at == before.expires_at
    assert [s.digest for s in await client.get_user_sessions("alice")] == [id_digest(new)]
    assert len(session_keys(redis_admin)) == 1
    with pytest.raises(SessionNotFound):
        await client.sessions.regenerate(old)


# ---------------------------------------------------------------- corrupt data


@pytest.mark.parametrize(
    "corruption",
    [
        {"m:a": "{not json"},
        {"created_at": "yesterday"},
        {"m:a": b"\xff\xfe"},
    ],
)
async def test_corrupt_session_hash_is_not_found_and_logged_without_the_id(
    client: RedisClient,
    redis_admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    corruption: dict[str, str | bytes],
) -> None:
    session_id = await client.create_session("u1", {"a": 1})
    (key,) = session_keys(redis_admin)
    redis_admin.hset(key, mapping=cast(Any, corruption))
    with caplog.at_level(logging.WARNING, logger="gateway_redis.sessions"):
        with pytest.raises(SessionNotFound):
            await client.get_session(session_id)
        assert await client.get_user_sessions("u1") == []
    assert "corrupt session" in caplog.text
    assert session_id not in caplog.text
    assert session_id.split(".")[1][:8] not in caplog.text
    await client.delete_session(session_id)
    assert session_keys(redis_admin) == []


async def test_session_with_missing_fields_is_not_found(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    session_id = await client.create_session("u1")
    (key,) = session_keys(redis_admin)
    redis_admin.hdel(key, "expires_at")
    with pytest.raises(SessionNotFound):
        await client.get_session(session_id)
    with pytest.raises(SessionNotFound):
        await client.sessions.touch(session_id)


async def test_wrong_key_type_is_not_found_and_delete_still_removes_it(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    session_id = await client.create_session("u1")
    (key,) = session_keys(redis_admin)
    redis_admin.delete(key)
    redis_admin.set(key, "not a hash", px=60_000)
    with pytest.raises(SessionNotFound):
        await client.get_session(session_id)
    with pytest.raises(SessionNotFound):
        await client.update_session(session_id, {"a": 1})
    await client.delete_session(session_id)
    assert session_keys(redis_admin) == []


async def test_listing_skips_a_wrong_type_key_and_prunes_foreign_index_entries(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    broken = await client.create_session("u1")
    good = await client.create_session("u1", {"keep": True})
    # one session key becomes a string; junk that names no session of u1 joins the index
    (index_key,) = index_keys(redis_admin)
    (broken_key,) = [k for k in session_keys(redis_admin) if not redis_admin.hexists(k, "m:keep")]
    redis_admin.delete(broken_key)
    redis_admin.set(broken_key, "not a hash", px=60_000)
    junk: dict[str | bytes, float] = {"junk": 9e12, b"\xff\xfe": 9e12, other_id("f" * 12): 9e12}
    redis_admin.zadd(index_key, cast(Any, junk))
    assert [s.digest for s in await client.get_user_sessions("u1")] == [id_digest(good)]
    assert index_members(redis_admin, index_key) == [index_member(good)]
    with pytest.raises(SessionNotFound):
        await client.get_session(broken)
    assert await client.delete_user_sessions("u1") == 1


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("user_id", "metadata", "ttl", "error"),
    [
        ("u1", {"when": datetime.now(timezone.utc)}, None, TypeError),
        ("u1", {"obj": object()}, None, SerializationError),
        ("u1", {"nan": math.nan}, None, ValueError),
        ("u1", {1: "int key"}, None, TypeError),
        ("u1", ["not", "a", "mapping"], None, TypeError),
        ("", None, None, ValueError),
        (None, None, None, TypeError),
        (42, None, None, TypeError),
        ("u1", None, 0, ValueError),
        ("u1", None, -1, ValueError),
        ("u1", None, math.inf, ValueError),
        ("u1", None, timedelta(days=401), ValueError),
        ("u1", None, "60", TypeError),
    ],
)
async def test_invalid_create_arguments_raise_before_any_redis_call(
    client: RedisClient,
    redis_admin: redis.Redis,
    user_id: Any,
    metadata: Any,
    ttl: Any,
    error: type[Exception],
) -> None:
    before = commands_processed(redis_admin)
    with pytest.raises(error):
        await client.create_session(user_id, metadata, ttl=ttl)
    assert commands_processed(redis_admin) - before == 1
    assert all_keys(redis_admin) == []


async def test_unserializable_update_raises_type_error_before_any_redis_call(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    session_id = await client.create_session("u1", {"a": 1})
    before = commands_processed(redis_admin)
    with pytest.raises(TypeError):
        await client.update_session(session_id, {"b": {1, 2}})
    assert commands_processed(redis_admin) - before == 1
    assert dict((await client.get_session(session_id)).metadata) == {"a": 1}


@pytest.mark.parametrize(
    "options",
    [{"default_ttl": 0}, {"idle_timeout": -1}, {"idle_timeout": timedelta(0)}],
)
def test_store_rejects_non_positive_durations(client: RedisClient, options: Any) -> None:
    with pytest.raises(ValueError, match="must be a positive"):
        SessionStore(client, **options)


# ---------------------------------------------------------------- outage


async def test_session_operations_fail_fast_when_redis_is_down(
    fault_server: EmbeddedRedis,
) -> None:
    async with RedisClient(RedisConfig(url=fault_server.url, min_idle_conns=1)) as client:
        session_id = await client.create_session("u1", {"a": 1})
        fault_server.kill()
        with pytest.raises(RedisUnavailable):
            await client.get_session(session_id)  # discovers the outage
        assert not client.available
        store = client.sessions
        operations: list[Callable[[], Awaitable[Any]]] = [
            lambda: client.create_session("u1"),
            lambda: client.get_session(session_id),
            lambda: client.update_session(session_id, {"b": 2}),
            lambda: store.touch(session_id),
            lambda: client.delete_session(session_id),
            lambda: client.get_user_sessions("u1"),
            lambda: client.delete_user_sessions("u1"),
            lambda: store.regenerate(session_id),
        ]
        for operation in operations:
            started = time.perf_counter()
            with pytest.raises(RedisUnavailable):
                await operation()
            assert time.perf_counter() - started < 0.05

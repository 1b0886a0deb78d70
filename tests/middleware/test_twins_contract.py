"""The session-store twin (tests/twins.py) against the Redis store: the same contract, the
same answers, so unit tests on the twin prove what they claim about the middleware."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from typing import Any

import pytest

from gateway_redis import RedisClient, SerializationError, SessionNotFound
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.sessions import SessionEvent, SessionStore, id_digest, slot_tag
from middleware import SessionBackend
from tests.twins import MemorySessionStore

ID_SHAPE = re.compile(r"[0-9a-f]{12}\.[A-Za-z0-9_-]{43}")


@pytest.fixture(params=["memory", "redis"])
def backend(
    request: pytest.FixtureRequest, client: RedisClient, bus: InvalidationBus
) -> SessionBackend:
    if request.param == "memory":
        return MemorySessionStore()
    return client.sessions


@pytest.fixture
def events(backend: SessionBackend) -> list[SessionEvent]:
    heard: list[SessionEvent] = []
    backend.on_change(heard.append)
    return heard


async def test_ids_carry_a_random_tag_and_256_random_bits(backend: SessionBackend) -> None:
    first = await backend.create("alice")
    second = await backend.create("alice")
    assert ID_SHAPE.fullmatch(first)
    assert ID_SHAPE.fullmatch(second)
    assert first[:12] != second[:12]  # nothing links two sessions of one user
    assert slot_tag("alice") not in (first[:12], second[:12])


async def test_a_new_session_holds_its_user_metadata_and_times(backend: SessionBackend) -> None:
    session_id = await backend.create("alice", {"name": "A", "gone": None, "pair": (1, 2)}, ttl=60)
    session = await backend.get(session_id)
    assert session.id == session_id
    assert session.user_id == "alice"
    assert dict(session.metadata) == {"name": "A", "pair": [1, 2]}
    assert session.created_at == session.last_accessed_at
    assert (session.expires_at - session.created_at).total_seconds() == 60
    assert session.idle_expires_at is None


async def test_updates_merge_delete_fields_and_announce_the_change(
    backend: SessionBackend, events: list[SessionEvent]
) -> None:
    session_id = await backend.create("alice", {"a": 1, "b": 2})
    session = await backend.update(session_id, {"b": None, "c": {"x": [1]}})
    assert dict(session.metadata) == {"a": 1, "c": {"x": [1]}}
    assert dict((await backend.get(session_id)).metadata) == {"a": 1, "c": {"x": [1]}}
    assert events == [{"op": "drop", "ids": [id_digest(session_id)]}]


async def test_an_update_never_resurrects_a_deleted_session(
    backend: SessionBackend, events: list[SessionEvent]
) -> None:
    session_id = await backend.create("alice")
    await backend.delete(session_id)
    with pytest.raises(SessionNotFound):
        await backend.update(session_id, {"late": True})
    with pytest.raises(SessionNotFound):
        await backend.get(session_id)
    await backend.delete(session_id)  # already gone: no error
    assert events == [{"op": "drop", "ids": [id_digest(session_id)]}] * 2


async def test_malformed_and_unknown_ids_are_not_found_and_deleting_them_is_a_no_op(
    backend: SessionBackend, events: list[SessionEvent]
) -> None:
    for bad in ("garbage", "0123456789ab." + "A" * 43, ""):
        with pytest.raises(SessionNotFound):
            await backend.get(bad)
        with pytest.raises(SessionNotFound):
            await backend.touch(bad)
    await backend.delete("garbage")
    assert events == []


async def test_regenerate_moves_the_session_and_retires_the_old_id(
    backend: SessionBackend, events: list[SessionEvent]
) -> None:
    old = await backend.create("alice", {"n": 1})
    new = await backend.regenerate(old)
    assert new != old
    assert new[:12] != old[:12]  # nothing links the new ID to the old
    session = await backend.get(new)
    assert (session.user_id, dict(session.metadata)) == ("alice", {"n": 1})
    with pytest.raises(SessionNotFound):
        await backend.get(old)
    assert events == [{"op": "drop", "ids": [id_digest(old)]}]


async def test_log_out_everywhere_ends_every_session_of_the_user_only(
    backend: SessionBackend, events: list[SessionEvent]
) -> None:
    mine = [await backend.create("alice") for _ in range(3)]
    other = await backend.create("bob")
    assert await backend.delete_user_sessions("alice") == 3
    for session_id in mine:
        with pytest.raises(SessionNotFound):
            await backend.get(session_id)
    assert (await backend.get(other)).user_id == "bob"
    assert events == [{"op": "drop_user", "user": id_digest("alice")}]
    assert await backend.delete_user_sessions("alice") == 0


async def test_touch_records_the_access_without_announcing_it(
    backend: SessionBackend, events: list[SessionEvent]
) -> None:
    session_id = await backend.create("alice")
    before = await backend.get(session_id)
    await asyncio.sleep(0.01)
    touched = await backend.touch(session_id)
    assert touched.last_accessed_at > before.last_accessed_at
    assert touched.expires_at == before.expires_at
    assert events == []


async def test_a_session_ends_at_its_absolute_expiry(backend: SessionBackend) -> None:
    session_id = await backend.create("alice", ttl=0.2)
    assert (await backend.get(session_id)).user_id == "alice"
    await asyncio.sleep(0.25)
    with pytest.raises(SessionNotFound):
        await backend.get(session_id)


async def test_bad_input_is_refused_before_anything_is_stored(backend: SessionBackend) -> None:
    with pytest.raises(TypeError):
        await backend.create(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_id"):
        await backend.create("")
    with pytest.raises(SerializationError):
        await backend.create("alice", {"x": object()})
    with pytest.raises(ValueError, match=r"^ttl"):
        await backend.create("alice", ttl=0)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_session_ends_when_idle_and_touching_keeps_it_alive(
    kind: str, client: RedisClient, bus: InvalidationBus
) -> None:
    backend: SessionBackend = (
        MemorySessionStore(idle_timeout=0.3)
        if kind == "memory"
        else SessionStore(client, idle_timeout=0.3)
    )
    kept = await backend.create("alice")
    idle = await backend.create("alice")
    session = await backend.get(kept)
    assert session.idle_expires_at is not None
    assert (session.idle_expires_at - session.last_accessed_at).total_seconds() == 0.3
    await asyncio.sleep(0.2)
    await backend.touch(kept)
    await asyncio.sleep(0.2)
    assert (await backend.get(kept)).user_id == "alice"
    with pytest.raises(SessionNotFound):
        await backend.get(idle)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_create_over_the_cap_ends_the_users_oldest_sessions_and_announces_it(
    kind: str, client: RedisClient, bus: InvalidationBus
) -> None:
    backend: SessionBackend = (
        MemorySessionStore(max_per_user=3)
        if kind == "memory"
        else SessionStore(client, max_per_user=3)
    )
    heard: list[SessionEvent] = []
    backend.on_change(heard.append)
    first, second, third = [await backend.create("alice", ttl=60 + i) for i in range(3)]
    other = await backend.create("bob")
    assert heard == []
    fourth = await backend.create("alice", ttl=70)
    assert heard == [{"op": "drop", "ids": [id_digest(first)]}]
    with pytest.raises(SessionNotFound):
        await backend.get(first)
    for session_id in (second, third, fourth, other):
        await backend.get(session_id)
    assert await backend.delete_user_sessions("alice") == 3


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("cap", [0, -1, 100_001, True, 2.0])
async def test_the_cap_is_validated(
    kind: str, cap: Any, client: RedisClient, bus: InvalidationBus
) -> None:
    build = MemorySessionStore if kind == "memory" else partial(SessionStore, client)
    with pytest.raises(ValueError, match="max_per_user"):
        build(max_per_user=cap)

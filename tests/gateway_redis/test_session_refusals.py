"""A command the server refuses inside a session script is an error, not a missing session.

The scripts read a session with ``redis.pcall`` so that a key of the wrong type reads as
"no session"; any other refusal (here: an ACL without ``HMGET``) must reach the caller as
an error instead of silently logging every user out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from gateway_redis import CommandError, RedisClient, RedisConfig, SessionNotFound
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.sessions import SessionStore

_PASSWORD = "refusal-test-password"


@pytest.fixture
async def limited(
    redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> AsyncIterator[RedisClient]:
    """A client logged in as a user that may do everything but ``HMGET``."""
    redis_admin.acl_setuser(
        "no-hmget",
        enabled=True,
        passwords=[f"+{_PASSWORD}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-hmget"],
    )
    url = f"redis://no-hmget:{_PASSWORD}@{redis_server.host}:{redis_server.port}/0"
    try:
        async with RedisClient(RedisConfig(url=url)) as client:
            yield client
    finally:
        redis_admin.acl_deluser("no-hmget")


async def test_a_refused_read_is_an_error_not_a_missing_session(
    client: RedisClient, limited: RedisClient, redis_admin: redis.Redis
) -> None:
    session_id = await SessionStore(client, default_ttl=60).create("alice", {})
    store = SessionStore(limited, default_ttl=60)
    for operation in (store.touch, lambda sid: store.update(sid, {"k": 1})):
        with pytest.raises(CommandError) as caught:
            await operation(session_id)
        assert not isinstance(caught.value, SessionNotFound)
    refused = {entry["object"] for entry in redis_admin.acl_log()}
    assert refused == {"hmget"}, refused
    # The session is still there for a client that may read it.
    assert (await SessionStore(client, default_ttl=60).get(session_id)).user_id == "alice"


async def test_a_key_of_the_wrong_type_is_still_no_session(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = SessionStore(client, default_ttl=60)
    session_id = await store.create("bob", {})
    (key,) = [k for k in redis_admin.scan_iter("*session:*") if b"user-sessions" not in k]
    redis_admin.delete(key)
    redis_admin.set(key, "not a hash")
    with pytest.raises(SessionNotFound):
        await store.get(session_id)

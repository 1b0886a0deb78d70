"""The ``ACL SETUSER`` sketch in ``docs/production.md`` is enough for every feature.

The sketch (the ```sh block of "ACL: the commands the library sends") is applied to a
server of the test's own, a :class:`RedisClient` connects as that user and uses every
feature once; Redis's ``ACL LOG`` (which records every refused command, key and channel,
also those sent from Lua scripts and those the library handles quietly) must stay empty.
Standalone only (with a replica, for ``WAIT``): the Cluster commands of the table are
not exercised here.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway_redis import (
    ChannelHistory,
    ChannelPresence,
    ClaimsStore,
    InvalidationBus,
    Limit,
    PermissionStore,
    PresenceMember,
    RateLimitStore,
    RedisClient,
    RedisConfig,
    ResponseCacheStore,
    RevocationStore,
    SessionStore,
    SubjectCutoffStore,
)
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.responsecache import StoredResponse

_DOC = Path(__file__).resolve().parents[2] / "docs" / "production.md"
_SECTION = "### ACL: the commands the library sends"
_PASSWORD = "acl-test-password"


def sketch_arguments(text: str) -> list[str]:
    """The ``ACL SETUSER`` arguments of the section's ```sh block, the user's name first."""
    section = text.split(_SECTION, 1)[1].split("\n#", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no ```sh block in the ACL section"
    words = shlex.split(match.group(1).replace("\\\n", " "))  # joined lines, like sh
    assert words[:3] == ["redis-cli", "ACL", "SETUSER"], words[:3]
    return words[3:]


@pytest.fixture
def acl_server() -> Iterator[EmbeddedRedis]:
    """A primary with one online replica, so that confirmed writes send ``WAIT``."""
    server = EmbeddedRedis(args=["--repl-diskless-sync-delay", "0"])
    server.start()
    replica = EmbeddedRedis(args=["--replicaof", server.host, str(server.port)])
    try:
        replica.start()
        admin = redis.Redis(host=server.host, port=server.port)
        try:
            deadline = time.monotonic() + 15
            # Online, and counted by WAIT (a replica right after its full sync is not, for
            # a few tens of milliseconds).
            while admin.info("replication").get("slave0", {}).get("state") != "online" or (
                admin.wait(1, 100) < 1
            ):
                assert time.monotonic() < deadline, "the replica did not come online"
                time.sleep(0.02)
        finally:
            admin.close()
        yield server
    finally:
        replica.cleanup()
        server.cleanup()


def _apply_sketch(admin: redis.Redis) -> str:
    user, *rules = sketch_arguments(_DOC.read_text())
    passwords = [r for r in rules if r.startswith(">")]
    assert len(passwords) == 1, passwords
    rules = [f">{_PASSWORD}" if r.startswith(">") else r for r in rules]
    admin.execute_command("ACL", "SETUSER", user, "reset", *rules)  # type: ignore[no-untyped-call]
    admin.acl_log_reset()
    return user


def _denials(admin: redis.Redis) -> list[str]:
    """``ACL LOG`` as ``reason object (context, command)`` lines."""
    found = []
    for entry in admin.acl_log():
        info = entry.get("client-info") or {}
        command = info.get("cmd") if isinstance(info, dict) else None
        found.append(f"{entry['reason']} {entry['object']} ({entry['context']}, {command})")
    return found


async def _exercise(c: RedisClient) -> None:
    # The cache API and hit.
    await c.set("k", b"v", ttl=60)
    assert await c.get("k") == b"v"
    assert await c.exists("k")
    assert await c.set_nx("nx", b"1", ttl=60)
    assert await c.increment("n") == 1
    assert await c.expire("n", 60)
    assert (await c.hit("w", 60)).count >= 1
    await c.delete("k")
    await c.ping()

    # Sessions, the per-user cap included.
    store = SessionStore(c, max_per_user=2)
    sid = await store.create("alice", {"role": "user"})
    assert (await store.get(sid)).user_id == "alice"
    await store.update(sid, {"role": "admin", "tmp": 1})
    assert "tmp" not in (await store.update(sid, {"tmp": None})).metadata  # HDEL
    await store.touch(sid)
    sid = await store.regenerate(sid)
    for _ in range(3):
        await store.create("alice")
    assert len(await store.get_user_sessions("alice")) == 2
    await store.delete(sid)
    await store.create("bob")
    assert await store.delete_user_sessions("bob") == 1
    # RedisClient's own session methods.
    sid = await c.create_session("carol", {"a": 1})
    await c.update_session(sid, {"a": 2})
    assert (await c.get_session(sid)).user_id == "carol"
    await c.get_user_sessions("carol")
    await c.delete_session(sid)
    await c.delete_user_sessions("carol")

    # Token revocation, subject cut-offs, claims and permissions.
    now = time.time()
    revocations = RevocationStore(c)
    await revocations.revoke("iss", "j1", now + 60, now)
    assert len(await revocations.active(now)) == 1
    cutoffs = SubjectCutoffStore(c)
    await cutoffs.cut("alice", now, now + 60, now)
    assert len(await cutoffs.active(now)) == 1
    claims = ClaimsStore(c, revocations)
    assert await claims.check(("iss", "j2"), ("d1", b'{"sub":"a"}', 5000)) is False
    assert await claims.check(("iss", "j1"), None) is True
    assert await claims.get("d1") == b'{"sub":"a"}'
    await claims.remove("d1")
    permissions = PermissionStore(c)
    version = await permissions.version()
    await permissions.put(version, "alice", '["read"]', 5000)
    assert await permissions.get(version, "alice") == b'["read"]'
    await permissions.remove(version, "alice")
    assert await permissions.bump_version() == version + 1

    # Pub/sub, channel history and the invalidation bus.
    async with await c.subscribe("news") as sub:
        assert await c.publish("news", {"n": 1}) == 1
        assert (await asyncio.wait_for(anext(sub), 5)).data == {"n": 1}
    async with await c.psubscribe("ne*") as psub:
        await c.publish("news", 2)
        assert (await asyncio.wait_for(anext(psub), 5)).data == 2
    # A sharded channel (SSUBSCRIBE, SPUBLISH, SUNSUBSCRIBE; also in a history script).
    async with await c.subscribe("sh:a") as ssub:
        assert await c.publish("sh:a", 3) == 1
        assert (await asyncio.wait_for(anext(ssub), 5)).data == 3
        await ChannelHistory(c, size=10, ttl=60).publish("sh:a", 4)
        assert (await asyncio.wait_for(anext(ssub), 5)).data == 4
    history = ChannelHistory(c, size=10, ttl=60)
    first = await history.publish("feed", {"n": 1})
    await history.publish("feed", {"n": 2}, idempotency_key="once")
    assert (await history.publish("feed", {"n": 2}, idempotency_key="once")).replayed
    page = await history.read("feed", since=(first.epoch, 0))
    assert [m.data for m in page.messages] == [{"n": 1}, {"n": 2}]
    await history.position("feed")
    # Presence (Lua scripts).
    presence = ChannelPresence(c, ttl=30)
    await presence.join("room", [PresenceMember("alice", "c1"), PresenceMember("bob", "c2")])
    assert len(await presence.presence("room")) == 2
    assert (await presence.presence_stats("room")).users == 2
    await presence.leave("room", ["c1"])
    bus = InvalidationBus(c)
    await bus.start()
    try:
        assert await bus.wait_synced(5)
        await bus.publish("ns", {"key": "x"})
    finally:
        await bus.aclose()

    # Rate limiting and the response cache.
    limits = [Limit(5, 60), Limit(100, 3600)]
    assert (await RateLimitStore(c).acquire("api", "alice", limits)).allowed
    responses = ResponseCacheStore(c, max_lifetime=60)
    versions = await responses.versions(["t1", "t2"])
    stored = StoredResponse(
        status=200, headers=(), body=b"x", etag='"e"', created=now, ttl=30, versions=versions
    )
    await responses.save("fp", stored)
    assert await responses.load("fp") is not None
    await responses.invalidate(["t1"])
    token = await responses.acquire("fp", 5)
    assert token is not None
    await responses.release("fp", token)


async def test_the_documented_acl_allows_every_feature(acl_server: EmbeddedRedis) -> None:
    admin = redis.Redis.from_url(acl_server.url)
    try:
        user = _apply_sketch(admin)
        config = RedisConfig(
            url=acl_server.url.rsplit("/", 1)[0] + "/1",  # a database: SELECT
            username=user,
            password=_PASSWORD,
            sharded_channels=("sh:*",),
            # Confirmed writes wait for the replica up to half of the shorter of these two:
            # generous, for a loaded machine.
            operation_timeout=10.0,
            read_timeout=5.0,
        )
        async with RedisClient(config) as c:
            try:
                await _exercise(c)
            except Exception as exc:  # name what Redis refused, if it did
                raise AssertionError(f"refused by the ACL: {_denials(admin)}") from exc
            # INFO memory (the eviction-policy read, done by connect()'s first probe) is
            # allowed: the policy is known.
            assert c.eviction_unsafe is False
        assert _denials(admin) == []
    finally:
        admin.close()


def test_the_sketch_is_parsed_from_the_docs() -> None:
    user, *rules = sketch_arguments(_DOC.read_text())
    assert user == "gateway"
    assert "on" in rules
    assert "~gw:*" in rules
    assert all(r[0] in "+-~&>%" or r in ("on", "off") for r in rules), rules

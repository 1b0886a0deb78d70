"""The auth stores write the keys, values and TTLs deployed data already has."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import redis

from gateway_redis import (
    ClaimsStore,
    PermissionStore,
    RedisClient,
    RedisUnavailable,
    Revocation,
    RevocationStore,
)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_revocation_writes_the_deny_key_and_the_index_until_exp(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = RevocationStore(client)
    now = time.time()
    exp = now + 120
    await store.revoke("iss", "j1", exp, now)
    deny = "gw:jwt-deny:" + _sha("iss\0j1")
    assert store.deny_key("iss", "j1") == deny
    assert redis_admin.get(deny) == b"1"
    assert abs(redis_admin.pexpiretime(deny) - int(exp * 1000)) <= 1
    index = "gw:jwt-revocations"
    assert redis_admin.zrange(index, 0, -1, withscores=True) == [
        (json.dumps(["iss", "j1"]).encode(), pytest.approx(exp))
    ]
    assert redis_admin.pexpiretime(index) == int(exp * 1000)
    # The index lives as long as its latest entry; expired entries leave it.
    redis_admin.zadd(index, {json.dumps(["iss", "old"]): now - 1, b"not json": now + 60})
    await store.revoke("iss", "j2", now + 60, now)
    assert redis_admin.pexpiretime(index) == int(exp * 1000)
    assert await store.active(now) == [
        Revocation("iss", "j2", pytest.approx(now + 60)),
        Revocation("iss", "j1", pytest.approx(exp)),
    ]


async def test_claims_are_stored_under_their_digest_and_checked_against_the_denylist(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    revocations = RevocationStore(client)
    claims = ClaimsStore(client, revocations)
    assert await claims.get("d1") is None
    assert await claims.check(("iss", "j1"), ("d1", b'{"sub":"a"}', 5000)) is False
    assert redis_admin.get("gw:jwt:d1") == b'{"sub":"a"}'
    assert 0 < redis_admin.pttl("gw:jwt:d1") <= 5000
    assert await claims.get("d1") == b'{"sub":"a"}'
    now = time.time()
    await revocations.revoke("iss", "j1", now + 60, now)
    assert await claims.check(("iss", "j1"), None) is True
    assert await claims.check(None, None) is False


async def test_permissions_are_stored_per_policy_version_and_subject(
    client: RedisClient, redis_admin: redis.Redis
) -> None:
    store = PermissionStore(client)
    assert await store.version() == 0
    assert await store.bump_version() == 1
    assert redis_admin.pttl("gw:rbac:policy-version") > 399 * 86_400_000
    await store.put(1, "alice", '["a:read"]', 60_000)
    key = "gw:rbac:1:" + _sha("alice")
    assert redis_admin.get(key) == b'["a:read"]'
    assert await store.get(1, "alice") == b'["a:read"]'
    await store.remove(1, "alice")  # no replica: nothing to wait for
    assert redis_admin.exists(key) == 0
    redis_admin.set("gw:rbac:policy-version", "junk")
    assert await store.version() == 0


async def test_stores_follow_the_clients_availability(client: RedisClient) -> None:
    await client.aclose()
    with pytest.raises(RedisUnavailable):
        await PermissionStore(client).remove(1, "alice")
    with pytest.raises(RedisUnavailable):
        await RevocationStore(client).revoke("iss", "j", time.time() + 60, time.time())

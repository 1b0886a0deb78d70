"""The permission cache does not write an answer that predates an invalidation into L2
(found with issue 13 item 8: a re-check of live subscriptions read it back)."""

from __future__ import annotations

import asyncio
import json

from gateway_redis import RedisClient
from middleware import CallablePermissions, PermissionCache, TokenClaims


def claims(sub: str) -> TokenClaims:
    payload = {"sub": sub, "iss": "https://issuer", "aud": "api", "exp": 2**40, "iat": 1}
    return TokenClaims.from_json(json.dumps(payload).encode())


async def test_an_answer_that_raced_an_invalidation_is_not_shared_through_l2(
    client: RedisClient,
) -> None:
    grants = {"carol": {"rooms:blue:join"}}
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def lookup(subject: str) -> set[str]:
        granted = set(grants.get(subject, ()))  # read now, answered later
        entered.set()
        await gate.wait()
        return granted

    cache = PermissionCache(CallablePermissions(lookup), client=client)
    assert await client.invalidation.wait_synced(5)
    carol = claims("carol")
    slow = asyncio.ensure_future(cache.permissions(carol))
    await asyncio.wait_for(entered.wait(), 5)
    grants["carol"] = set()
    await cache.invalidate("carol")
    gate.set()
    assert await slow == {"rooms:blue:join"}  # the caller asked before the change
    entered.clear()
    gate.set()
    assert await cache.permissions(carol) == frozenset()  # not the stale answer from L2

"""Per-subject cut-off ("log out everywhere" for tokens, issue 13 item 7), against a real
Redis shared by two authenticators (two instances): tokens of the subject issued at or
before the cut-off are refused on both (L1 and L2 included), tokens issued after work,
and the cut-off survives a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig
from middleware import InvalidToken, JWTAuthenticator, JWTSettings, JWTValidator
from middleware.jwt.cutoff import CutoffMirror, parse_subject_event
from tests.middleware.conftest import AUDIENCE, CACHE_KEY, ISSUER, SECRET


async def refused(auth: JWTAuthenticator, token: str) -> bool:
    """Whether ``auth`` refuses ``token`` as revoked (any other refusal fails the test)."""
    reason = None
    try:
        await auth.authenticate(token)
    except InvalidToken as exc:
        reason = exc.reason
    assert reason in (None, "revoked")
    return reason == "revoked"


async def wait_refused(auth: JWTAuthenticator, token: str, within: float = 2.0) -> float:
    """Seconds until ``auth`` refuses ``token``; fails after ``within``."""
    started = time.monotonic()
    while not await refused(auth, token):
        assert time.monotonic() - started < within, "cut-off not applied in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def next_second(after: float) -> None:
    """Sleep until the wall clock's whole second is past ``after`` (``iat`` resolution)."""
    await asyncio.sleep(max(0.0, int(after) + 1 - time.time()) + 0.01)


async def test_a_cut_off_refuses_earlier_tokens_on_every_instance_and_survives_restarts(
    authenticator: JWTAuthenticator,
    validator: JWTValidator,
    client: RedisClient,
    redis_config: RedisConfig,
    make_token: Any,
    redis_admin: redis.Redis,
) -> None:
    alice = make_token("alice")
    alice_other_device = make_token("alice", iat=int(time.time()) - 60)
    bob = make_token("bob")
    async with RedisClient(redis_config) as c2:
        assert await c2.invalidation.wait_synced(5)
        other = JWTAuthenticator(validator, client=c2)  # a second instance
        assert await c2.invalidation.wait_synced(5)
        for token in (alice, alice_other_device, bob):
            assert (await authenticator.authenticate(token)).source == "validator"
            assert (await other.authenticate(token)).source == "l2"
            assert other.cached(token) is not None  # warm L1 on both
        cutoff = await authenticator.revoke_subject("alice")
        assert cutoff == pytest.approx(time.time(), abs=5)
        # This instance at once (L1 and the pin-free hot path), the other within the bus
        # latency, with its L1 entry and the L2 entry refused.
        assert authenticator.cached(alice) is None
        assert await refused(authenticator, alice)
        latency = await wait_refused(other, alice)
        assert other.cached(alice) is None
        assert other.cached(alice_other_device) is None
        assert await refused(other, alice_other_device)
        assert other.is_revoked(await authenticator.validator.validate(alice))
        # Another subject is untouched.
        assert other.cached(bob) is not None
        assert (await authenticator.authenticate(bob)).claims.sub == "bob"
        # A token issued after the cut-off works on both instances.
        await next_second(cutoff)
        fresh = make_token("alice")
        assert (await authenticator.authenticate(fresh)).claims.sub == "alice"
        assert (await other.authenticate(fresh)).claims.sub == "alice"
    print(f"cut-off seen by the other instance after {latency * 1000:.1f} ms")
    # In Redis: one sorted-set member, living as long as a token issued before it could.
    [member] = redis_admin.zrange("gw:jwt-subject-cutoffs", 0, -1)
    assert b"alice" in member
    assert redis_admin.pttl("gw:jwt-subject-cutoffs") > 86_000_000
    # A restart (new client, new authenticator: empty mirror and L1) still refuses it.
    async with RedisClient(redis_config) as c3:
        assert await c3.invalidation.wait_synced(5)
        restarted = JWTAuthenticator(validator, client=c3)
        assert await c3.invalidation.wait_synced(5)
        assert await refused(restarted, alice)  # the L2 entry is not served either
        assert await refused(restarted, alice_other_device)
        assert (await restarted.authenticate(fresh)).claims.sub == "alice"
        assert (await restarted.authenticate(bob)).source == "l2"


async def test_a_token_without_iat_is_refused_while_its_subject_has_a_cut_off(
    client: RedisClient, make_token: Any
) -> None:
    no_iat = JWTValidator(
        JWTSettings(
            algorithms=("HS256",),
            key=SECRET,
            issuer=ISSUER,
            audience=AUDIENCE,
            required_claims=("exp", "iss", "aud", "sub"),
            cache_key=CACHE_KEY,
        )
    )
    auth = JWTAuthenticator(no_iat, client=client)
    assert await client.invalidation.wait_synced(5)
    carol, dave = make_token("carol", iat=None), make_token("dave", iat=None)
    assert (await auth.authenticate(carol)).claims.iat == 0
    await auth.revoke_subject("carol")
    assert await refused(auth, carol)
    assert (await auth.authenticate(dave)).claims.sub == "dave"


async def test_revoke_subject_checks_its_argument_and_works_in_process(
    validator: JWTValidator, make_token: Any
) -> None:
    auth = JWTAuthenticator(validator, client=None)
    for bad in ("", "x" * 1025, None, 7):
        with pytest.raises(ValueError, match="sub"):
            await auth.revoke_subject(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_token_lifetime"):
        JWTAuthenticator(validator, client=None, max_token_lifetime=0)
    seen: list[Any] = []
    auth.on_subject_revoked(seen.append)
    token = make_token("erin")
    await auth.authenticate(token)
    assert auth.cached(token) is not None
    cutoff = await auth.revoke_subject("erin")
    assert auth.cached(token) is None
    assert await refused(auth, token)
    assert seen == [
        {"op": "revoke_subject", "sub": "erin", "cutoff": cutoff, "until": seen[0]["until"]}
    ]
    assert seen[0]["until"] == pytest.approx(cutoff + 86_400)


def test_the_cut_off_mirror_is_bounded_and_ignores_bad_events() -> None:
    now = [1000.0]
    mirror = CutoffMirror(lambda: now[0])
    for i in range(5000):
        mirror.add(f"user-{i}", now[0], now[0] + 10)
        now[0] += 0.1  # each ends 10 s after it was made: about 100 active at a time
    assert len(mirror.entries) < 2100
    assert not mirror.add("late", 0.0, now[0] - 1)  # ended already
    assert mirror.refuses("user-4999", int(now[0]) - 1)
    assert not mirror.refuses("user-4999", int(now[0]) + 1)
    for event in (
        {"op": "revoke_subject", "sub": 1, "cutoff": 1.0, "until": 2.0},
        {"op": "revoke_subject", "sub": "a", "cutoff": True, "until": 2.0},
        {"op": "revoke_subject", "sub": "a" * 2000, "cutoff": 1.0, "until": 2.0},
        {"op": "revoke", "sub": "a", "cutoff": 1.0, "until": 2.0},
    ):
        assert parse_subject_event(event) is None


async def test_a_cut_off_lasts_the_longest_token_lifetime_plus_the_leeway() -> None:
    settings = JWTSettings(
        algorithms=("HS256",),
        key=SECRET,
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway=30,
        max_token_lifetime=600,
    )
    auth = JWTAuthenticator(JWTValidator(settings), client=None)
    seen: list[Any] = []
    auth.on_subject_revoked(seen.append)
    cutoff = await auth.revoke_subject("frank")
    assert seen[0]["until"] == pytest.approx(cutoff + 600 + 30)
    given = JWTAuthenticator(JWTValidator(settings), client=None, max_token_lifetime=60)
    given.on_subject_revoked(seen.append)
    cutoff = await given.revoke_subject("frank")
    assert seen[1]["until"] == pytest.approx(cutoff + 60 + 30)
    for bad in (0, -1, 400 * 86_400, float("nan"), True):
        with pytest.raises(ValueError, match="max_token_lifetime"):
            JWTSettings(
                algorithms=("HS256",),
                key=SECRET,
                issuer=ISSUER,
                audience=AUDIENCE,
                max_token_lifetime=bad,
            )

"""Revocation covers the JWT leeway: a token accepted until ``exp + leeway`` can be revoked
until then, and the revocation (Redis deny key, index, every instance's mirror) lasts as
long; the verdict caches keep and serve a token within that window only."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.authstore import RevocationStore
from middleware import InvalidToken, JWTAuthenticator, JWTSettings, JWTValidator
from tests.middleware.conftest import AUDIENCE, CACHE_KEY, ISSUER, SECRET

LEEWAY = 30


class FakeClock:
    """Epoch seconds the test sets (PyJWT itself reads the real clock)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def leeway_validator() -> JWTValidator:
    return JWTValidator(
        JWTSettings(
            algorithms=("HS256",),
            key=SECRET,
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway=LEEWAY,
            cache_key=CACHE_KEY,
        )
    )


def test_the_authenticator_takes_the_validators_leeway(leeway_validator: JWTValidator) -> None:
    assert JWTAuthenticator(leeway_validator, client=None).leeway == LEEWAY
    assert JWTAuthenticator(leeway_validator, client=None, leeway=5).leeway == 5
    with pytest.raises(ValueError, match="leeway"):
        JWTAuthenticator(leeway_validator, client=None, leeway=61)


async def test_logout_inside_the_leeway_revokes_the_token(
    leeway_validator: JWTValidator,
    client: RedisClient,
    make_token: Any,
    redis_admin: redis.Redis,
) -> None:
    # Expired a second ago (real clock: the validator's); accepted for LEEWAY - 1 more.
    token = make_token(ttl=-1)
    claims = await leeway_validator.validate(token)
    clock = FakeClock(claims.exp + 1)
    authenticator = JWTAuthenticator(leeway_validator, client=client, clock=clock)
    assert await client.invalidation.wait_synced(5)
    assert (await authenticator.authenticate(token)).claims.sub == claims.sub
    await authenticator.revoke(token)  # logout at exp + 1
    with pytest.raises(InvalidToken, match="revoked"):
        await authenticator.authenticate(token)
    assert authenticator.cached(token) is None
    # The deny key and the index reach to exp + leeway, not to exp.
    deny = RevocationStore(client).deny_key(claims.iss, claims.jti)
    until_ms = (claims.exp + LEEWAY) * 1000
    assert redis_admin.pexpiretime(deny) == until_ms
    assert redis_admin.pttl(deny) > (claims.exp + LEEWAY - time.time() - 2) * 1000
    assert redis_admin.pexpiretime("gw:jwt-revocations") == until_ms
    [(_, score)] = redis_admin.zrange("gw:jwt-revocations", 0, -1, withscores=True)
    assert score == claims.exp + LEEWAY
    # Past the window, nothing is accepted and nothing needs writing.
    clock.now = claims.exp + LEEWAY
    assert authenticator.cached(token) is None


async def test_an_instance_started_after_exp_refuses_a_token_revoked_before_it(
    leeway_validator: JWTValidator,
    redis_config: RedisConfig,
    make_token: Any,
) -> None:
    token = make_token(ttl=-5)  # real clock: 5 s past exp, inside the leeway
    claims = await leeway_validator.validate(token)
    async with RedisClient(redis_config) as first_client:
        first = JWTAuthenticator(
            leeway_validator, client=first_client, clock=FakeClock(claims.exp - 10)
        )
        assert await first_client.invalidation.wait_synced(5)
        await first.revoke(token)  # before exp, as the first instance sees it
    # Another instance, fresh process state, same Redis, started after exp.
    async with RedisClient(redis_config) as second_client:
        second = JWTAuthenticator(leeway_validator, client=second_client)
        assert await second_client.invalidation.wait_synced(5)
        assert second.is_revoked(claims)  # reloaded from the index into the mirror
        with pytest.raises(InvalidToken, match="revoked"):
            await second.authenticate(token)
    # A third one, without the index (the deny key alone must refuse it).
    async with RedisClient(redis_config) as third_client:
        await third_client.execute("test", lambda r: r.delete("gw:jwt-revocations"))
        third = JWTAuthenticator(leeway_validator, client=third_client)
        assert await third_client.invalidation.wait_synced(5)
        assert not third.is_revoked(claims)
        with pytest.raises(InvalidToken, match="revoked"):
            await third.authenticate(token)


async def test_verdict_caches_serve_and_keep_a_token_within_its_window_only(
    leeway_validator: JWTValidator,
    client: RedisClient,
    make_token: Any,
    redis_admin: redis.Redis,
) -> None:
    token = make_token(ttl=100)
    claims = await leeway_validator.validate(token)
    clock = FakeClock(time.time())
    authenticator = JWTAuthenticator(leeway_validator, client=client, clock=clock)
    assert await client.invalidation.wait_synced(5)
    await authenticator.authenticate(token)
    [l2] = [k for k in redis_admin.keys("gw:jwt:*")]
    # L2 lives until exp + leeway at most (l2_ttl 300 s is longer than that).
    assert redis_admin.pttl(l2) <= (claims.exp + LEEWAY - clock.now) * 1000 + 1000
    assert redis_admin.pttl(l2) > (claims.exp + LEEWAY - clock.now - 5) * 1000
    pin = authenticator.pin(token)
    assert pin is not None
    # Inside the leeway the separate (cached) and fused (pinned) layers agree: served.
    clock.now = claims.exp + LEEWAY - 1
    assert authenticator.cached(token) is not None
    assert authenticator.is_current(pin)
    # At exp + leeway both stop serving.
    clock.now = claims.exp + LEEWAY
    assert authenticator.cached(token) is None
    assert not authenticator.is_current(pin)

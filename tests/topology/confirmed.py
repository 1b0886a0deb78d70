"""The five security writes, driven through public APIs, for the confirmed-write tests.

Each scenario builds its state on a :class:`RedisClient` (a session, a token, cached
permissions), performs one security write and returns the full Redis keys that write
touched (so a test can read them on a replica). The key layouts are the ones documented in
:mod:`gateway_redis.sessions` and :mod:`gateway_redis.authstore`, written out here so the
same tests run against older code.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from gateway_redis import RedisClient
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    APIKeyAuthenticator,
    APIKeySettings,
    CallablePermissions,
    InvalidToken,
    JWTAuthenticator,
    JWTSettings,
    JWTValidator,
    KeyRecord,
    PermissionCache,
    StaticKeys,
    TokenClaims,
)

ISSUER = "https://issuer.test"
SECRET = "Zq8v1LmT4xR7cN2pW9sK5bY3hJ6fD0gA-confirm"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def session_key(client: RedisClient, session_id: str) -> str:
    return client.key(f"session:{{{session_id[:12]}}}:{_sha(session_id)}")


def deny_key(client: RedisClient, iss: str, jti: str) -> str:
    return client.key("jwt-deny:" + _sha(f"{iss}\0{jti}"))


def rbac_key(client: RedisClient, version: int, subject: str) -> str:
    return client.key(f"rbac:{version}:{_sha(subject)}")


@dataclass
class Prepared:
    """A security write ready to run: ``write()`` performs it; ``keys`` are what it
    writes (deleted keys for logout and permission removal, the deny key for revocation);
    ``removes`` says whether the write removes them (else it creates them);
    ``after_failure()`` checks what must still hold on this instance if the write raised."""

    write: Callable[[], Awaitable[Any]]
    keys: list[str]
    removes: bool
    after_failure: Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


async def logout(client: RedisClient, bus: InvalidationBus) -> Prepared:
    sid = await client.create_session(f"u-{uuid.uuid4().hex[:8]}", {"n": 1})
    return Prepared(lambda: client.delete_session(sid), [session_key(client, sid)], True, _nothing)


async def logout_everywhere(client: RedisClient, bus: InvalidationBus) -> Prepared:
    user = f"u-{uuid.uuid4().hex[:8]}"
    ids = [await client.create_session(user, {"n": i}) for i in range(2)]
    return Prepared(
        lambda: client.delete_user_sessions(user),
        [session_key(client, sid) for sid in ids],
        True,
        _nothing,
    )


def _validator() -> JWTValidator:
    settings = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience="gw")
    return JWTValidator(settings)


def _token(sub: str) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iss": ISSUER, "aud": "gw", "iat": now, "exp": now + 300}
    return jwt.encode({**payload, "jti": uuid.uuid4().hex}, SECRET, algorithm="HS256")


async def revocation(client: RedisClient, bus: InvalidationBus) -> Prepared:
    authenticator = JWTAuthenticator(_validator(), client=client)
    token = _token("alice")
    claims: TokenClaims = (await authenticator.authenticate(token)).claims
    assert claims.jti is not None

    async def still_denied_here() -> None:
        assert authenticator.is_revoked(claims)
        assert authenticator.cached(token) is None
        with pytest.raises(InvalidToken) as refused:
            await authenticator.authenticate(token)
        assert refused.value.reason == "revoked"

    return Prepared(
        lambda: authenticator.revoke(token),
        [deny_key(client, ISSUER, claims.jti)],
        False,
        still_denied_here,
    )


async def subject_cutoff(client: RedisClient, bus: InvalidationBus) -> Prepared:
    """``revoke_subject`` ("log out everywhere" for tokens): one sorted set, emptied first
    so that its presence on the replica shows this write."""
    authenticator = JWTAuthenticator(_validator(), client=client)
    sub = f"s-{uuid.uuid4().hex[:8]}"
    token = _token(sub)
    await authenticator.authenticate(token)
    index = client.key("jwt-subject-cutoffs")
    await client.execute("test.reset", lambda r: r.delete(index))

    async def still_cut_off_here() -> None:
        assert authenticator.cached(token) is None
        with pytest.raises(InvalidToken) as refused:
            await authenticator.authenticate(token)
        assert refused.value.reason == "revoked"

    return Prepared(lambda: authenticator.revoke_subject(sub), [index], False, still_cut_off_here)


async def permission_removal(client: RedisClient, bus: InvalidationBus) -> Prepared:
    async def lookup(subject: str) -> list[str]:
        return ["orders:read"]

    cache = PermissionCache(CallablePermissions(lookup), client=client)
    subject = f"s-{uuid.uuid4().hex[:8]}"
    claims = await _validator().validate(_token(subject))
    assert await cache.permissions(claims) == {"orders:read"}  # cached in Redis (L2)
    version = cache.policy_version or 0
    return Prepared(
        lambda: cache.invalidate(subject), [rbac_key(client, version, subject)], True, _nothing
    )


API_KEY_SECRET = "apikey-confirm-secret-Hq3nX8vT1mC6pR9wK2sJ5bY7"
API_KEY_ISSUER = "gateway-redis/apikey"


async def _api_keys(
    client: RedisClient, bus: InvalidationBus
) -> tuple[APIKeyAuthenticator, str, str]:
    key_id = f"k-{uuid.uuid4().hex[:8]}"
    key = f"ak_{uuid.uuid4().hex}"
    table = StaticKeys(API_KEY_SECRET, [(key, KeyRecord(key_id, f"apikey:{key_id}"))])
    settings = APIKeySettings(lookup=table, secret=API_KEY_SECRET)
    authenticator = APIKeyAuthenticator(settings, client=client)
    # A new component makes the bus resync once; a lookup that overlaps the L1 flush is
    # not written to L2 (it may have raced an invalidation), so let it settle first.
    assert await bus.wait_synced(5)
    return authenticator, key_id, key


async def api_key_revocation(client: RedisClient, bus: InvalidationBus) -> Prepared:
    """An API key's revocation: the JWT denylist's layout under the ``apikey`` namespace."""
    authenticator, key_id, key = await _api_keys(client, bus)
    await authenticator.authenticate(key)
    deny = client.key("apikey-deny:" + _sha(f"{API_KEY_ISSUER}\0{key_id}"))

    async def still_denied_here() -> None:
        assert authenticator.is_revoked(key_id)
        assert authenticator.cached(key) is None
        with pytest.raises(InvalidToken) as refused:
            await authenticator.authenticate(key)
        assert refused.value.reason == "revoked"

    return Prepared(lambda: authenticator.revoke(key_id), [deny], False, still_denied_here)


async def api_key_invalidation(client: RedisClient, bus: InvalidationBus) -> Prepared:
    """An API key's record changed: its sealed L2 verdict is deleted."""
    authenticator, _, key = await _api_keys(client, bus)
    await authenticator.authenticate(key)  # cached in Redis (L2)
    digest = authenticator.digest(key)
    return Prepared(
        lambda: authenticator.invalidate(digest),
        [client.key("apikey:" + digest)],
        True,
        _nothing,
    )


SCENARIOS: dict[str, Callable[[RedisClient, InvalidationBus], Awaitable[Prepared]]] = {
    "logout": logout,
    "logout_everywhere": logout_everywhere,
    "revocation": revocation,
    "permission_removal": permission_removal,
    "subject_cutoff": subject_cutoff,
    "api_key_revocation": api_key_revocation,
    "api_key_invalidation": api_key_invalidation,
}

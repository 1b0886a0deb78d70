"""API keys and opaque tokens (issue 16): the cached authenticator against a real Redis
shared by two instances (revocation, role change, L2), the lookup path (called once per
key within the TTL; down: 503), and what the middleware makes of a request (claims, RBAC,
precedence over the JWT layer, CSRF)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from fastapi import Depends, FastAPI

from gateway_redis import RedisClient, RedisConfig
from middleware import (
    APIKeyAuthenticator,
    APIKeySettings,
    Gateway,
    InvalidToken,
    JWTSettings,
    KeyRecord,
    Presented,
    StaticKeys,
    ValidatorUnavailable,
)
from middleware.fastapi import Claims, RequirePermissions
from tests.middleware.conftest import AUDIENCE, ISSUER, SECRET

KEY_SECRET = "apikey-digest-secret-Hq3nX8vT1mC6pR9wK2sJ5bY7fD0gL4"
ALICE_KEY = "ak_live_alice_0123456789abcdef"
BOB_KEY = "ak_live_bob_fedcba9876543210xx"
JWT = JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)


class CountingLookup:
    """A key store over :class:`StaticKeys` that counts its calls and can be made to fail."""

    def __init__(self) -> None:
        self.table = StaticKeys(
            KEY_SECRET,
            [
                (ALICE_KEY, KeyRecord("alice", "apikey:alice", roles=("reader",))),
                (BOB_KEY, KeyRecord("bob", "apikey:bob", roles=("admin",), scopes=("x:y",))),
            ],
        )
        self.calls = 0
        self.down = False
        self.delay = 0.0

    async def __call__(self, presented: Presented) -> KeyRecord | None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise ConnectionError("key database unreachable")
        return await self.table(presented)


def settings(lookup: CountingLookup, **extra: Any) -> APIKeySettings:
    return APIKeySettings(lookup=lookup, secret=KEY_SECRET, **extra)


async def synced(client: RedisClient) -> None:
    assert await client.invalidation.wait_synced(5)


async def wait_for(predicate: Any, within: float = 3.0) -> float:
    """Seconds until ``await predicate()`` is true; fails after ``within`` (loaded CI)."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < within, "not propagated in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def reason_of(auth: APIKeyAuthenticator, key: str) -> str | None:
    try:
        await auth.authenticate(key)
    except InvalidToken as exc:
        return exc.reason
    return None


# -- the authenticator on a real Redis, two instances ------------------------------------


async def test_lookup_is_called_once_per_key_and_a_second_instance_reads_l2(
    client: RedisClient, redis_config: RedisConfig
) -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup), client=client)
    await synced(client)
    first = await a.authenticate(ALICE_KEY)
    assert first.source == "validator"
    assert not first.degraded
    assert first.claims.sub == "apikey:alice"
    assert first.claims.roles == ("reader",)
    assert first.claims.jti == "alice"
    for _ in range(20):
        assert (await a.authenticate(ALICE_KEY)).source == "l1"
        assert a.cached(ALICE_KEY) is not None
    assert lookup.calls == 1
    async with RedisClient(redis_config) as c2:
        await synced(c2)
        b = APIKeyAuthenticator(settings(lookup), client=c2)
        await synced(c2)
        assert (await b.authenticate(ALICE_KEY)).source == "l2"
    assert lookup.calls == 1  # within the TTL, over two instances


async def test_the_l2_entry_is_sealed_and_named_by_digest_only(
    client: RedisClient, redis_admin: Any
) -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup), client=client)
    await synced(client)
    await a.authenticate(ALICE_KEY)
    keys = [k.decode() for k in redis_admin.keys("*apikey:*")]
    assert keys == [client.key("apikey:" + a.digest(ALICE_KEY))]
    dump = b"".join(redis_admin.dump(k) or b"" for k in redis_admin.keys("*"))
    assert ALICE_KEY.encode() not in dump
    assert b"alice_0123" not in dump
    # A forged entry (write access to Redis alone) is a miss, not an identity.
    redis_admin.set(keys[0], b"gr1:" + b"0" * 64 + b':null\n{"sub":"apikey:root"}')
    async with RedisClient(client.config) as c2:
        await synced(c2)
        b = APIKeyAuthenticator(settings(lookup), client=c2)
        await synced(c2)
        result = await b.authenticate(ALICE_KEY)
        assert result.source == "validator"
        assert result.claims.sub == "apikey:alice"


async def test_a_revocation_on_one_instance_reaches_the_other_and_survives_restarts(
    client: RedisClient, redis_config: RedisConfig
) -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup), client=client)
    await synced(client)
    async with RedisClient(redis_config) as c2:
        await synced(c2)
        b = APIKeyAuthenticator(settings(lookup), client=c2)
        await synced(c2)
        await a.authenticate(ALICE_KEY)
        await b.authenticate(ALICE_KEY)
        assert b.cached(ALICE_KEY) is not None  # B serves it from L1
        await a.revoke("alice")
        assert await reason_of(a, ALICE_KEY) == "revoked"  # here at once
        took = await wait_for(lambda: _refused(b, ALICE_KEY))
        assert b.cached(ALICE_KEY) is None
        assert b.is_revoked("alice")
        assert await reason_of(b, BOB_KEY) is None  # only that key
        logging.getLogger(__name__).info("revocation reached B in %.3f s", took)
    # A new instance (nothing in memory) refuses it too: the denylist and its index.
    async with RedisClient(redis_config) as c3:
        await synced(c3)
        c = APIKeyAuthenticator(settings(lookup), client=c3)
        await synced(c3)
        assert c.is_revoked("alice")
        assert await reason_of(c, ALICE_KEY) == "revoked"


async def _refused(auth: APIKeyAuthenticator, key: str) -> bool:
    return await reason_of(auth, key) == "revoked"


async def test_a_role_change_reaches_every_instance(
    client: RedisClient, redis_config: RedisConfig
) -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup), client=client)
    await synced(client)
    async with RedisClient(redis_config) as c2:
        await synced(c2)
        b = APIKeyAuthenticator(settings(lookup), client=c2)
        await synced(c2)
        assert (await b.authenticate(ALICE_KEY)).claims.roles == ("reader",)
        digest = lookup.table.replace("alice", KeyRecord("alice", "apikey:alice", ("admin",)))
        assert digest == a.digest(ALICE_KEY)
        await a.invalidate(digest)

        async def promoted() -> bool:
            return (await b.authenticate(ALICE_KEY)).claims.roles == ("admin",)

        await wait_for(promoted)
        assert (await a.authenticate(ALICE_KEY)).claims.roles == ("admin",)


async def test_the_lookup_down_is_unavailable_never_cached_and_a_timeout_too(
    client: RedisClient,
) -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup, lookup_timeout=0.2), client=client)
    await synced(client)
    lookup.down = True
    with pytest.raises(ValidatorUnavailable):
        await a.authenticate(ALICE_KEY)
    lookup.down = False
    assert (await a.authenticate(ALICE_KEY)).claims.sub == "apikey:alice"
    lookup.delay = 1.0
    with pytest.raises(ValidatorUnavailable):
        await a.authenticate(BOB_KEY)


async def test_unknown_keys_are_remembered_by_digest_within_a_bound(client: RedisClient) -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup, negative_maxsize=50), client=client)
    await synced(client)
    for _ in range(3):
        assert await reason_of(a, "wrong-key-but-well-formed-0001") == "unknown_key"
    assert lookup.calls == 1
    for i in range(500):
        assert await reason_of(a, f"wrong-key-{i:06d}-padding-padding") == "unknown_key"
    assert len(a._negative) <= 50  # bounded, whatever the client sends
    assert await reason_of(a, "x" * 10_000) == "too_large"  # before hashing or lookup
    assert lookup.calls == 501


async def test_process_only_mode_and_bad_settings() -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup), client=None)
    assert (await a.authenticate(BOB_KEY)).claims.scopes == ("x:y",)
    await a.revoke("bob")
    assert await reason_of(a, BOB_KEY) == "revoked"
    with pytest.raises(ValueError, match="secret"):
        APIKeySettings(lookup=lookup, secret="short")
    with pytest.raises(ValueError, match="scheme"):
        APIKeySettings(lookup=lookup, secret=KEY_SECRET, scheme="Bearer")
    with pytest.raises(ValueError, match="header"):
        APIKeySettings(lookup=lookup, secret=KEY_SECRET, header="X API Key")
    with pytest.raises(ValueError, match="scheme="):
        APIKeySettings(lookup=lookup, secret=KEY_SECRET, header="Authorization")
    with pytest.raises(ValueError, match="key_id"):
        KeyRecord("", "apikey:x")
    with pytest.raises(ValueError, match="roles"):
        KeyRecord("x", "apikey:x", roles="admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        StaticKeys(KEY_SECRET, [(ALICE_KEY, KeyRecord("a", "s")), (ALICE_KEY, KeyRecord("b", "s"))])
    assert "alice_0123" not in repr(Presented("ab" * 32, ALICE_KEY))
    assert KEY_SECRET not in repr(settings(lookup))


# -- through the Gateway: claims, RBAC, precedence, CSRF -----------------------------------


@pytest.fixture(params=[True, False], ids=["fused", "separate"])
async def app(request: pytest.FixtureRequest, client: RedisClient) -> AsyncIterator[FastAPI]:
    lookup = CountingLookup()
    gateway = Gateway(
        client,
        jwt=JWT,
        permissions={"admin": ["admin:read"], "reader": ["doc:read"]},
        api_keys=settings(lookup),
    )
    app = FastAPI()
    app.state.lookup = lookup

    @app.get("/me")
    async def me(claims: Claims) -> dict[str, Any]:
        return {"sub": claims.sub, "roles": list(claims.roles)}

    @app.get("/admin", dependencies=[Depends(RequirePermissions("admin:read"))])
    async def admin(claims: Claims) -> dict[str, Any]:
        return {"sub": claims.sub}

    @app.post("/write")
    async def write(claims: Claims) -> dict[str, Any]:
        return {"sub": claims.sub}

    @app.get("/public")
    async def public() -> dict[str, Any]:
        return {"ok": True}

    gateway.install(app, fused=request.param, public_paths=["/public"], token_cookie="tok")
    await synced(client)
    return app


def http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://t")


async def test_an_api_key_caller_gets_claims_and_its_roles(app: FastAPI) -> None:
    async with http(app) as h:
        r = await h.get("/me", headers={"X-API-Key": ALICE_KEY})
        assert r.status_code == 200
        assert r.json() == {"sub": "apikey:alice", "roles": ["reader"]}
        assert (await h.get("/admin", headers={"X-API-Key": ALICE_KEY})).status_code == 403
        r = await h.get("/admin", headers={"X-API-Key": BOB_KEY})
        assert r.status_code == 200
        assert r.json() == {"sub": "apikey:bob"}
        for _ in range(5):
            assert (await h.get("/me", headers={"X-API-Key": ALICE_KEY})).status_code == 200
    assert app.state.lookup.calls == 2  # one per key


async def test_a_wrong_key_gets_a_bare_401_and_public_paths_stay_public(app: FastAPI) -> None:
    async with http(app) as h:
        r = await h.get("/me", headers={"X-API-Key": "ak_live_wrong_000000000000"})
        assert r.status_code == 401
        assert "key" not in r.text.lower()
        assert "unknown" not in r.text
        assert (await h.get("/public", headers={"X-API-Key": "nope"})).status_code == 200
        assert (await h.get("/me")).status_code == 401


async def test_a_key_and_a_bearer_token_together_are_refused(app: FastAPI) -> None:
    now = int(time.time())
    token = pyjwt.encode(
        {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}, SECRET
    )
    async with http(app) as h:
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await h.get("/me", headers=bearer)).json()["sub"] == "u"
        both = {**bearer, "X-API-Key": ALICE_KEY}
        assert (await h.get("/me", headers=both)).status_code == 401


async def test_an_api_key_is_not_ambient_for_csrf(app: FastAPI) -> None:
    cross_site = {"Origin": "https://evil.example", "Cookie": "tok=whatever"}
    async with http(app) as h:
        r = await h.post("/write", headers={**cross_site, "X-API-Key": ALICE_KEY})
        assert r.status_code == 200
        assert r.json() == {"sub": "apikey:alice"}
        r = await h.post("/write", headers={**cross_site, "X-API-Key": "ak_live_wrong_0000000000"})
        assert r.status_code == 401


async def test_the_lookup_down_answers_503_not_500(app: FastAPI) -> None:
    app.state.lookup.down = True
    async with http(app) as h:
        r = await h.get("/me", headers={"X-API-Key": ALICE_KEY})
        assert r.status_code == 503
        assert "Retry-After" in r.headers
        app.state.lookup.down = False
        assert (await h.get("/me", headers={"X-API-Key": ALICE_KEY})).status_code == 200


async def test_concurrent_first_requests_share_one_lookup(client: RedisClient) -> None:
    lookup = CountingLookup()
    lookup.delay = 0.05
    a = APIKeyAuthenticator(settings(lookup), client=client)
    await synced(client)
    results = await asyncio.gather(*(a.authenticate(ALICE_KEY) for _ in range(200)))
    assert {r.claims.sub for r in results} == {"apikey:alice"}
    assert lookup.calls == 1
    wrong = await asyncio.gather(
        *(reason_of(a, "ak_live_wrong_key_000000000") for _ in range(50)),
    )
    assert set(wrong) == {"unknown_key"}
    assert lookup.calls == 2
    assert a._pending == {}


async def test_odd_strings_given_directly_are_refused_not_raised() -> None:
    lookup = CountingLookup()
    a = APIKeyAuthenticator(settings(lookup), client=None)
    for odd in ("\ud800lone-surrogate-key-000", "\x00" * 20, "ключ" * 10, " " * 20):
        assert await reason_of(a, odd) == "unknown_key"
        assert a.cached(odd) is None
    assert await reason_of(a, "") == "malformed"


async def test_the_gateway_checks_its_api_keys_argument(client: RedisClient) -> None:
    with pytest.raises(ValueError, match="api_keys"):
        Gateway(client, jwt=JWT, api_keys={"ci": ALICE_KEY})  # type: ignore[arg-type]
    assert Gateway(client, jwt=JWT).api_keys is None
    gateway = Gateway(client, jwt=JWT, api_keys=settings(CountingLookup()))
    assert isinstance(gateway.api_keys, APIKeyAuthenticator)
    assert "apikeys" in repr(gateway)


async def test_a_cancelled_first_request_hands_its_lookup_to_a_waiter() -> None:
    lookup = CountingLookup()
    lookup.delay = 0.1
    a = APIKeyAuthenticator(settings(lookup), client=None)
    leader = asyncio.ensure_future(a.authenticate(ALICE_KEY))
    await asyncio.sleep(0.02)  # the leader is in its lookup
    waiters = [asyncio.ensure_future(a.authenticate(ALICE_KEY)) for _ in range(5)]
    await asyncio.sleep(0.02)
    leader.cancel()
    results = await asyncio.gather(*waiters)
    assert {r.claims.sub for r in results} == {"apikey:alice"}
    assert leader.cancelled()
    assert lookup.calls == 2  # the cancelled one, then one waiter for all
    assert a._pending == {}

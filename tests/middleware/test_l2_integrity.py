"""What the verdict caches may trust (issue 13 items 9 and 11), against a real Redis and a
real JWKS HTTP server on loopback:

* item 11: an L2 value is sealed with an HMAC under the shared ``cache_key``; a value
  written into Redis by anyone else (the L2 key of an RS256/JWKS token is computable from
  public configuration) is a miss, logged once; without a cache key L2 is not used;
* item 9: a verdict remembers the JWKS ``kid`` that verified it; once a refetch shows the
  issuer removed that kid, the verdict leaves L1 and is no longer served from L2 (on each
  instance, at its own refetch).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway_redis import RedisClient, RedisConfig
from middleware import InvalidToken, JWTAuthenticator, JWTSettings, JWTValidator
from tests.middleware.conftest import AUDIENCE, CACHE_KEY, ISSUER, SECRET


class JWKSServer:
    """A JWKS document served over HTTP on 127.0.0.1 (``document`` may be replaced)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    data.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return data


def payload(sub: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    return {**claims, "jti": uuid.uuid4().hex, **extra}


def rs256(key: rsa.RSAPrivateKey, kid: str, sub: str, **extra: Any) -> str:
    return jwt.encode(payload(sub, **extra), key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return tuple(  # type: ignore[return-value]
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)
    )


@pytest.fixture
def issuer(keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Iterator[JWKSServer]:
    server = JWKSServer({"keys": [jwk(keys[0], "k1"), jwk(keys[1], "k2")]})
    yield server
    server.close()


def jwks_validator(url: str, **overrides: Any) -> JWTValidator:
    options: dict[str, Any] = {
        "algorithms": ("RS256",),
        "jwks_url": url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_refresh_interval": 0.3,
        "jwks_min_refresh_interval": 0.0,
        "cache_key": CACHE_KEY,
    }
    options.update(overrides)
    return JWTValidator(JWTSettings(**options))


async def instance(client: RedisClient, validator: JWTValidator) -> JWTAuthenticator:
    auth = JWTAuthenticator(validator, client=client)
    assert await client.invalidation.wait_synced(5)
    return auth


def l2_key(validator: JWTValidator, token: str) -> str:
    return "gw:jwt:" + hashlib.sha256(validator.fingerprint.encode() + token.encode()).hexdigest()


# -- item 11: sealed L2 ---------------------------------------------------------------------


async def test_a_forged_l2_entry_for_an_rs256_jwks_token_is_not_trusted(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    issuer: JWKSServer,
    client: RedisClient,
    redis_admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    validator = jwks_validator(issuer.url)
    auth = await instance(client, validator)
    genuine = rs256(keys[0], "k1", "alice")
    assert (await auth.authenticate(genuine)).source == "validator"  # keys loaded, L2 written
    # The attacker can write to Redis and knows the public configuration: any token string
    # (here signed by a key of their own) gets claims of their choosing under its L2 key.
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = rs256(attacker, "k1", "admin", roles=["admin"])
    claims = json.dumps(payload("admin", roles=["admin"])).encode()
    sealed_genuine = redis_admin.get(l2_key(validator, genuine))
    assert isinstance(sealed_genuine, bytes)
    values = [
        claims,  # the claims as they are (what L2 held before)
        b"gr1:" + b"0" * 64 + b':"k1"\n' + claims,  # a made-up seal
        sealed_genuine,  # a genuine entry moved to another token's key
    ]
    caplog.set_level(logging.WARNING, logger="middleware.jwt")
    other = await instance(client, validator)
    for value in values:
        redis_admin.set(l2_key(validator, forged), value, px=60_000)
        with pytest.raises(InvalidToken) as refused:
            await other.authenticate(forged)
        assert refused.value.reason == "bad_signature"
        other = await instance(client, validator)  # no negative cache: a new instance
    logged = [r for r in caplog.records if "integrity check" in r.getMessage()]
    assert len(logged) == 3  # once per instance (three), not per request
    for i in range(20):  # more forged reads on one instance: no more log lines
        another = rs256(attacker, "k1", f"admin-{i}")
        redis_admin.set(l2_key(validator, another), claims, px=60_000)
        with pytest.raises(InvalidToken):
            await other.authenticate(another)
    assert len([r for r in caplog.records if "integrity check" in r.getMessage()]) == 4
    # The genuine token is still served from its (authentic) L2 entry.
    assert (await other.authenticate(genuine)).source == "l2"


async def test_without_a_cache_key_l2_is_not_used_for_tokens(
    client: RedisClient,
    redis_admin: redis.Redis,
    make_token: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    validator = JWTValidator(
        JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)
    )
    caplog.set_level(logging.WARNING, logger="middleware.jwt")
    auth = await instance(client, validator)
    warnings = [r for r in caplog.records if "cache_key" in r.getMessage()]
    assert len(warnings) == 1
    token = make_token("alice")
    for _ in range(3):
        await auth.authenticate(token)
    assert redis_admin.keys("gw:jwt:*") == []
    other = await instance(client, validator)
    assert (await other.authenticate(token)).source == "validator"  # L1 still works:
    assert (await other.authenticate(token)).source == "l1"
    assert len([r for r in caplog.records if "cache_key" in r.getMessage()]) == 2  # per start


@pytest.mark.parametrize(
    ("cache_key", "match"),
    [
        ("too-short", "at least 32 bytes"),
        (b"x" * 31, "at least 32 bytes"),
        (12345, "str or bytes"),
        (SECRET, "differ from key"),
    ],
)
def test_cache_key_is_checked(cache_key: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        JWTSettings(
            algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE, cache_key=cache_key
        )
    assert CACHE_KEY not in repr(
        JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE,
                    cache_key=CACHE_KEY)
    )  # fmt: skip
    with pytest.raises(ValueError, match="cache_key"):
        JWTAuthenticator(
            JWTValidator(JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER,
                                     audience=AUDIENCE)),
            client=None,
            cache_key=b"short",
        )  # fmt: skip


# -- item 9: a key removed from the JWKS ------------------------------------------------------


async def test_verdicts_of_a_key_removed_from_the_jwks_leave_l1_and_l2(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    issuer: JWKSServer,
    client: RedisClient,
    redis_config: RedisConfig,
) -> None:
    auth = await instance(client, jwks_validator(issuer.url))
    retired = rs256(keys[1], "k2", "alice")
    kept = rs256(keys[0], "k1", "bob")
    for token in (retired, kept):
        assert (await auth.authenticate(token)).source == "validator"
        assert auth.cached(token) is not None
    async with RedisClient(redis_config) as c2:
        other = await instance(c2, jwks_validator(issuer.url))  # its own JWKS fetches
        assert (await other.authenticate(rs256(keys[0], "k1", "carol"))).source == "validator"
        assert (await other.authenticate(retired)).source == "l2"
        assert other.cached(retired) is not None
        # The issuer removes k2. Each instance sees it at its next refetch (after
        # jwks_refresh_interval), here made by the next token the validator checks.
        issuer.document = {"keys": [jwk(keys[0], "k1")]}
        await asyncio.sleep(0.35)
        await auth.authenticate(rs256(keys[0], "k1", "dave"))
        assert auth.cached(retired) is None  # out of L1 at once
        assert auth.cached(kept) is not None  # a verdict of a listed key stays
        with pytest.raises(InvalidToken) as refused:
            await auth.authenticate(retired)  # and not served from L2
        assert refused.value.reason == "unknown_kid"
        await other.authenticate(rs256(keys[0], "k1", "erin"))
        assert other.cached(retired) is None
        with pytest.raises(InvalidToken, match="unknown_kid"):
            await other.authenticate(retired)
    # A new instance (its key set fetched by the first L2 hit) does not serve the L2
    # verdict of the removed key either.
    restarted = await instance(client, jwks_validator(issuer.url))
    assert (await restarted.authenticate(kept)).source == "l2"
    with pytest.raises(InvalidToken, match="unknown_kid"):
        await restarted.authenticate(retired)


async def test_a_verdict_served_from_l2_does_not_postpone_the_jwks_refetch(
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    issuer: JWKSServer,
    client: RedisClient,
) -> None:
    writer = await instance(client, jwks_validator(issuer.url))
    retired = rs256(keys[1], "k2", "alice")
    await writer.authenticate(retired)  # in L2 now
    reader = JWTAuthenticator(jwks_validator(issuer.url), client=client, l1_ttl=0.2)
    assert await client.invalidation.wait_synced(5)
    assert (await reader.authenticate(rs256(keys[0], "k1", "bob"))).source == "validator"
    assert (await reader.authenticate(retired)).source == "l2"
    issuer.document = {"keys": [jwk(keys[0], "k1")]}
    # The refetch is due and the L1 entry gone; no new token reaches the validator: the L2
    # hit itself refetches the key set and finds k2 gone.
    await asyncio.sleep(0.35)
    with pytest.raises(InvalidToken, match="unknown_kid"):
        await reader.authenticate(retired)

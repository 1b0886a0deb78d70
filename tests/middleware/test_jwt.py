"""JWT middleware and the cached authenticator against a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message
from starlette.websockets import WebSocket

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.invalidation import InvalidationBus
from middleware import (
    InvalidToken,
    JWTAuthenticator,
    JWTMiddleware,
    JWTValidator,
    TokenClaims,
    ValidatorUnavailable,
    get_claims,
)
from tests.middleware.conftest import CACHE_KEY

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]


async def me(request: Request) -> JSONResponse:
    claims = get_claims(request)
    return JSONResponse(
        {
            "sub": claims.sub,
            "user": request.user.identity if request.user.is_authenticated else None,
            "scopes": list(request.auth.scopes),
        }
    )


@requires("authenticated")
async def protected(request: Request) -> JSONResponse:
    return JSONResponse({"display_name": request.user.display_name})


async def public(request: Request) -> JSONResponse:
    return JSONResponse({"authenticated": request.user.is_authenticated})


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"sub": websocket.user.identity})
    await websocket.close()


def build_app(authenticator: JWTAuthenticator, **options: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/me", me),
            Route("/protected", protected),
            Route("/public", public),
            Route("/strict", me),
            WebSocketRoute("/ws", ws_endpoint),
        ],
        middleware=[
            Middleware(
                JWTMiddleware,
                authenticator=authenticator,
                public_paths=["/public"],
                **options,
            )
        ],
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def l2_claims(raw: Any) -> TokenClaims:
    """The claims of a sealed L2 value (``gr1:<mac>:<kid>\n<claims JSON>``)."""
    return TokenClaims.from_json(bytes(raw).split(b"\n", 1)[1])


def jwt_keys(admin: redis.Redis) -> list[bytes]:
    return sorted(k for k in admin.keys("gw:jwt:*"))


async def test_valid_token_sets_user_auth_and_typed_claims(
    authenticator: JWTAuthenticator, make_token: Any, http_client: HttpFactory
) -> None:
    token = make_token("alice", scope="read write")
    async with http_client(build_app(authenticator)) as http:
        r = await http.get("/me", headers=bearer(token))
        assert r.status_code == 200
        assert r.json() == {
            "sub": "alice",
            "user": "alice",
            "scopes": ["authenticated", "read", "write"],
        }
        r = await http.get("/protected", headers=bearer(token))
        assert r.json() == {"display_name": "alice"}


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, "Bearer"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
        ({"Authorization": "Bearer "}, 'Bearer error="invalid_token"'),
        ({"Authorization": "Bearer not.a.token"}, 'Bearer error="invalid_token"'),
        ({"Authorization": "Bearer abc"}, 'Bearer error="invalid_token"'),
    ],
)
async def test_missing_or_bad_token_is_a_generic_401(
    authenticator: JWTAuthenticator,
    http_client: HttpFactory,
    headers: dict[str, str],
    challenge: str,
) -> None:
    async with http_client(build_app(authenticator)) as http:
        r = await http.get("/me", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == challenge
    assert r.json() == {"error": "unauthorized", "detail": "Authentication required."}


async def test_public_path_serves_anonymous_with_missing_or_bad_token(
    authenticator: JWTAuthenticator, make_token: Any, http_client: HttpFactory
) -> None:
    async with http_client(build_app(authenticator)) as http:
        assert (await http.get("/public")).json() == {"authenticated": False}
        r = await http.get("/public", headers=bearer("garbage"))
        assert r.json() == {"authenticated": False}
        r = await http.get("/public", headers=bearer(make_token()))
        assert r.json() == {"authenticated": True}


async def test_verified_claims_are_cached_in_l1_and_l2_until_exp(
    authenticator: JWTAuthenticator, make_token: Any, redis_admin: redis.Redis
) -> None:
    token = make_token(ttl=120)
    first = await authenticator.authenticate(token)
    assert first.source == "validator"
    assert not first.degraded
    [key] = jwt_keys(redis_admin)
    ttl = redis_admin.pttl(key)
    assert 0 < ttl <= 120_000
    assert l2_claims(redis_admin.get(key)) == first.claims
    assert (await authenticator.authenticate(token)).source == "l1"


async def test_l2_hit_is_used_by_a_second_instance(
    authenticator: JWTAuthenticator,
    validator: JWTValidator,
    redis_config: RedisConfig,
    make_token: Any,
) -> None:
    token = make_token()
    await authenticator.authenticate(token)
    async with RedisClient(redis_config) as c2:
        bus2 = c2.invalidation
        assert await bus2.wait_synced(5)
        other = JWTAuthenticator(validator, client=c2)
        assert await bus2.wait_synced(5)
        assert (await other.authenticate(token)).source == "l2"
        assert (await other.authenticate(token)).source == "l1"


class Counting:
    """A validator that counts calls and says "expired" once told the clock moved on."""

    def __init__(self, inner: JWTValidator) -> None:
        self.inner, self.calls, self.expired = inner, 0, False

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    async def validate(self, token: str) -> TokenClaims:
        self.calls += 1
        if self.expired:
            raise InvalidToken("expired")
        return await self.inner.validate(token)


async def test_cache_hits_recheck_exp_in_l1_and_l2(
    validator: JWTValidator, bus: InvalidationBus, client: RedisClient, make_token: Any
) -> None:
    now = [time.time()]
    counting = Counting(validator)
    auth = JWTAuthenticator(counting, client=client, clock=lambda: now[0], cache_key=CACHE_KEY)
    assert await bus.wait_synced(5)
    token = make_token(ttl=60)
    await auth.authenticate(token)
    assert (await auth.authenticate(token)).source == "l1"
    assert counting.calls == 1
    now[0] += 61
    counting.expired = True
    with pytest.raises(InvalidToken, match="expired"):
        await auth.authenticate(token)
    assert counting.calls == 2  # neither L1 nor the L2 entry was served
    fresh = JWTAuthenticator(counting, client=client, clock=lambda: now[0], cache_key=CACHE_KEY)
    with pytest.raises(InvalidToken, match="expired"):
        await fresh.authenticate(token)
    assert counting.calls == 3


async def test_corrupt_l2_value_is_a_miss_not_an_error(
    validator: JWTValidator,
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    redis_admin: redis.Redis,
    authenticator: JWTAuthenticator,
) -> None:
    token = make_token()
    await authenticator.authenticate(token)
    [key] = jwt_keys(redis_admin)
    for garbage in (b"{not json", b'{"sub":1}', b"\xff\xfe", b"[]"):
        redis_admin.set(key, garbage)
        fresh = JWTAuthenticator(validator, client=client)
        result = await fresh.authenticate(token)
        assert result.source == "validator"
        assert l2_claims(redis_admin.get(key)) == result.claims
    redis_admin.delete(key)
    redis_admin.hset(key, "x", "y")  # wrong type
    assert (await JWTAuthenticator(validator, client=client).authenticate(token)).claims.sub


async def test_rejected_tokens_are_never_written_to_redis(
    authenticator: JWTAuthenticator, make_token: Any, redis_admin: redis.Redis
) -> None:
    bad = [
        make_token(ttl=-10),
        make_token(key="another-secret-entirely-0123456789abcdefXYZ"),
        make_token(iss="https://evil"),
        make_token(aud="other"),
        make_token(nbf=int(time.time()) + 3600),
        "garbage",
    ]
    for token in bad:
        for _ in range(2):
            with pytest.raises(InvalidToken):
                await authenticator.authenticate(token)
    assert jwt_keys(redis_admin) == []


async def test_validator_outage_is_503_and_never_cached(
    bus: InvalidationBus,
    client: RedisClient,
    make_token: Any,
    validator: JWTValidator,
    http_client: HttpFactory,
) -> None:
    class Flaky:
        down = True

        @property
        def fingerprint(self) -> str:
            return validator.fingerprint

        async def validate(self, token: str) -> TokenClaims:
            if self.down:
                raise ValidatorUnavailable("jwks down")
            return await validator.validate(token)

    flaky = Flaky()
    app = build_app(JWTAuthenticator(flaky, client=client))
    token = make_token()
    async with http_client(app) as http:
        r = await http.get("/me", headers=bearer(token))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        flaky.down = False
        assert (await http.get("/me", headers=bearer(token))).status_code == 200


async def test_revocation_reaches_a_second_instance_within_100_ms(
    authenticator: JWTAuthenticator,
    validator: JWTValidator,
    redis_config: RedisConfig,
    make_token: Any,
    http_client: HttpFactory,
) -> None:
    token = make_token()
    async with RedisClient(redis_config) as c2:
        bus2 = c2.invalidation
        assert await bus2.wait_synced(5)
        other = JWTAuthenticator(validator, client=c2)
        assert await bus2.wait_synced(5)
        async with http_client(build_app(other)) as http2:
            for _ in range(2):  # warm: the second request is an L1 hit
                assert (await http2.get("/me", headers=bearer(token))).status_code == 200
            started = time.perf_counter()
            await authenticator.revoke(token)
            while True:
                r = await http2.get("/me", headers=bearer(token))
                if r.status_code == 401:
                    break
                assert time.perf_counter() - started < 0.1, "revocation not seen in 100 ms"
                await asyncio.sleep(0.001)
            took = time.perf_counter() - started
        with pytest.raises(InvalidToken, match="revoked"):
            await authenticator.authenticate(token)
        # a third instance started later learns it from Redis
        async with RedisClient(redis_config) as c3:
            bus3 = c3.invalidation
            third = JWTAuthenticator(validator, client=c3)
            assert await bus3.wait_synced(5)
            assert third.is_revoked(await validator.validate(token))
    print(f"revocation seen by the second instance after {took * 1000:.2f} ms")


async def test_revoke_by_issuer_and_jti(
    authenticator: JWTAuthenticator,
    make_token: Any,
    validator: JWTValidator,
    redis_admin: redis.Redis,
) -> None:
    token = make_token()
    claims = await validator.validate(token)
    await authenticator.authenticate(token)
    assert claims.jti is not None
    await authenticator.revoke((claims.iss, claims.jti), expires_at=claims.exp)
    with pytest.raises(InvalidToken, match="revoked"):
        await authenticator.authenticate(token)
    # Every key written expires: the denylist entry and the index at the token's exp.
    [deny] = redis_admin.keys("gw:jwt-deny:*")
    for key in (deny, b"gw:jwt-revocations"):
        assert 0 < redis_admin.pttl(key) <= (claims.exp - time.time()) * 1000 + 1000
    with pytest.raises(ValueError, match="jti"):
        await authenticator.revoke(make_token(jti=None))


async def test_websocket_token_from_subprotocol_selects_bearer(
    authenticator: JWTAuthenticator, make_token: Any
) -> None:
    app = build_app(authenticator)
    sent = await _ws_call(
        app, [(b"sec-websocket-protocol", f"bearer, {make_token('bob')}".encode())]
    )
    assert sent[0] == {"type": "websocket.accept", "subprotocol": "bearer", "headers": []}
    assert json.loads(sent[1]["text"]) == {"sub": "bob"}
    rejected = await _ws_call(app, [(b"sec-websocket-protocol", b"bearer, nope")])
    assert rejected == [{"type": "websocket.close", "code": 1008, "reason": ""}]


async def _ws_call(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    inbox = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "subprotocols": ["bearer"],
        "app": app,
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


@pytest.mark.slow
async def test_redis_outage_validates_locally_and_keeps_known_revocations(
    fault_server: EmbeddedRedis, validator: JWTValidator, make_token: Any, http_client: HttpFactory
) -> None:
    config = RedisConfig(url=fault_server.url, probe_interval=0.2, operation_timeout=0.5)
    revoked, good = make_token(), make_token()
    async with (
        RedisClient(config) as c1,
        RedisClient(config) as c2,
    ):
        b1 = c1.invalidation
        b2 = c2.invalidation
        assert await b1.wait_synced(5)
        assert await b2.wait_synced(5)
        a1, a2 = JWTAuthenticator(validator, client=c1), JWTAuthenticator(validator, client=c2)
        await a1.revoke(revoked)
        await asyncio.sleep(0.05)
        fault_server.kill()
        app = build_app(a2, fail_closed_paths=["/strict"])
        async with http_client(app) as http:
            for _ in range(3):
                assert (await http.get("/me", headers=bearer(good))).status_code == 200
                assert (await http.get("/me", headers=bearer(revoked))).status_code == 401
                assert (await http.get("/me", headers=bearer("x.y.z"))).status_code == 401
                r = await http.get("/strict", headers=bearer(good))
                assert r.status_code == 503
        result = await a2.authenticate(good)
        assert result.degraded
        assert result.source == "validator"

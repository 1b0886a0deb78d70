"""JWTMiddleware and JWTAuthenticator(client=None) on the token-validator twin: no Redis."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from middleware import InvalidToken, JWTAuthenticator, JWTMiddleware, get_claims_or_none
from middleware.jwt import TokenRevoked
from tests.twins import ManualClock, MemoryValidator

HttpFactory = Callable[[ASGIApp], httpx.AsyncClient]


async def whoami(request: Request) -> JSONResponse:
    claims = get_claims_or_none(request)
    return JSONResponse(
        {
            "sub": claims.sub if claims else None,
            "authenticated": request.user.is_authenticated,
            "scopes": list(request.auth.scopes),
        }
    )


def build(authenticator: JWTAuthenticator) -> Starlette:
    return Starlette(
        routes=[Route("/me", whoami), Route("/health", whoami), Route("/public/page", whoami)],
        middleware=[
            Middleware(
                JWTMiddleware,
                authenticator=authenticator,
                public_paths=["/health", "/public/*"],
            )
        ],
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: httpx.Response, challenge: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"error": "unauthorized", "detail": "Authentication required."}


async def test_a_valid_bearer_token_admits_the_request_with_its_claims(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    token = tokens.issue("alice", scope="orders profile")
    async with http_client(build(authenticator)) as http:
        r = await http.get("/me", headers=bearer(token))
    assert r.status_code == 200
    assert r.json() == {
        "sub": "alice",
        "authenticated": True,
        "scopes": ["authenticated", "orders", "profile"],
    }


async def test_a_warm_token_is_served_from_l1_without_asking_the_validator_again(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    token = tokens.issue("alice")
    async with http_client(build(authenticator)) as http:
        for _ in range(5):
            assert (await http.get("/me", headers=bearer(token))).status_code == 200
    assert tokens.calls == 1
    cached = authenticator.cached(token)
    assert cached is not None
    assert cached.source == "l1"


async def test_public_paths_admit_anonymous_requests_and_still_read_a_good_token(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    async with http_client(build(authenticator)) as http:
        r = await http.get("/health")
        assert r.status_code == 200
        assert r.json() == {"sub": None, "authenticated": False, "scopes": []}
        r = await http.get("/public/page", headers=bearer("not-a-token"))
        assert r.status_code == 200
        assert r.json()["authenticated"] is False
        r = await http.get("/public/page", headers=bearer(tokens.issue("bob")))
        assert r.json()["sub"] == "bob"


async def test_a_missing_token_gets_a_401_with_a_plain_bearer_challenge(
    authenticator: JWTAuthenticator, http_client: HttpFactory
) -> None:
    async with http_client(build(authenticator)) as http:
        assert_unauthorized(await http.get("/me"), "Bearer")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-issued", "Bearer ", "Basic dXNlcjpwdw==", "Bearer"],
    ids=["unknown-token", "empty-token", "basic-scheme", "scheme-only"],
)
async def test_bad_or_foreign_credentials_get_a_401(
    authenticator: JWTAuthenticator, http_client: HttpFactory, authorization: str
) -> None:
    async with http_client(build(authenticator)) as http:
        r = await http.get("/me", headers={"Authorization": authorization})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json() == {"error": "unauthorized", "detail": "Authentication required."}


async def test_an_unknown_token_gets_the_invalid_token_challenge(
    authenticator: JWTAuthenticator, http_client: HttpFactory
) -> None:
    async with http_client(build(authenticator)) as http:
        assert_unauthorized(
            await http.get("/me", headers=bearer("not-issued")), 'Bearer error="invalid_token"'
        )


async def test_the_bearer_scheme_is_case_insensitive_and_surrounding_spaces_are_ignored(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    token = tokens.issue("alice")
    async with http_client(build(authenticator)) as http:
        for value in (f"bearer {token}", f"BEARER {token}", f"  Bearer   {token}  "):
            r = await http.get("/me", headers={"Authorization": value})
            assert r.status_code == 200, value
            assert r.json()["sub"] == "alice"


async def test_two_authorization_headers_are_refused_as_ambiguous(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    token = tokens.issue("alice")
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    async with http_client(build(authenticator)) as http:
        r = await http.get("/me", headers=headers)
    assert_unauthorized(r, 'Bearer error="invalid_token"')


async def test_an_expired_token_is_refused_even_when_it_was_cached(
    tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    clock = ManualClock()
    validator = MemoryValidator(clock=clock)
    authenticator = JWTAuthenticator(validator, client=None, clock=clock)
    token = validator.issue("alice", ttl=60)
    async with http_client(build(authenticator)) as http:
        assert (await http.get("/me", headers=bearer(token))).status_code == 200
        clock.advance(61)
        assert (await http.get("/me", headers=bearer(token))).status_code == 401


async def test_a_revoked_token_is_refused_at_once_in_process(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    token = tokens.issue("alice")
    other = tokens.issue("alice")
    heard: list[TokenRevoked] = []
    authenticator.on_revoked(heard.append)
    async with http_client(build(authenticator)) as http:
        assert (await http.get("/me", headers=bearer(token))).status_code == 200
        await authenticator.revoke(token)
        r = await http.get("/me", headers=bearer(token))
        assert_unauthorized(r, 'Bearer error="invalid_token"')
        assert (await http.get("/me", headers=bearer(other))).status_code == 200
    claims = tokens.claims(token)
    assert authenticator.is_revoked(claims)
    assert heard == [{"op": "revoke", "iss": claims.iss, "jti": claims.jti, "exp": claims.exp}]
    with pytest.raises(InvalidToken) as refused:
        await authenticator.authenticate(token)
    assert refused.value.reason == "revoked"


async def test_a_revocation_by_issuer_and_jti_covers_a_token_not_seen_yet(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    token = tokens.issue("alice", jti="jti-42")
    await authenticator.revoke(("https://issuer.test", "jti-42"))
    async with http_client(build(authenticator)) as http:
        assert (await http.get("/me", headers=bearer(token))).status_code == 401


async def test_a_rejected_token_is_remembered_briefly_without_asking_the_validator(
    authenticator: JWTAuthenticator, tokens: MemoryValidator, http_client: HttpFactory
) -> None:
    async with http_client(build(authenticator)) as http:
        for _ in range(3):
            assert (await http.get("/me", headers=bearer("not-issued"))).status_code == 401
    assert tokens.calls == 1


def test_the_client_argument_must_be_given_explicitly(tokens: MemoryValidator) -> None:
    with pytest.raises(TypeError):
        JWTAuthenticator(tokens)  # type: ignore[call-arg]
    assert JWTAuthenticator(tokens, client=None).client is None

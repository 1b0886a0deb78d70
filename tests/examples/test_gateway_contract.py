"""The example gateway's contract, in process: login, cookies, /api/*, logout, key setups."""

from __future__ import annotations

import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://issuer.example"
AUDIENCE = "gateway-api"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def set_cookies(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


async def login(http: httpx.AsyncClient, user: str) -> tuple[str, httpx.Response]:
    r = await http.post("/auth/login", json={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    return r.json()["access_token"], r


async def test_login_returns_a_token_with_the_contract_claims_and_a_secure_cookie(
    inprocess_gateway: Any,
) -> None:
    _, http = await inprocess_gateway()
    token, r = await login(http, "alice")
    assert r.json()["token_type"] == "bearer"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"sub", "roles", "exp", "iat", "jti", "iss", "aud"}
    assert (claims["sub"], claims["roles"], claims["iss"], claims["aud"]) == (
        "alice", ["admin"], ISSUER, AUDIENCE,
    )  # fmt: skip
    [(name, morsel)] = set_cookies(r).items()
    assert name == "__Host-session"
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"


async def test_cookie_secure_can_be_turned_off_for_plain_http(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway(GATEWAY_COOKIE_SECURE="0")
    _, r = await login(http, "bob")
    [(name, morsel)] = set_cookies(r).items()
    assert name == "session"
    assert not morsel["secure"]
    assert morsel["httponly"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice", "password": "wrong"},
        {"username": "mallory", "password": "mallory-password"},
        {"username": "alice"},
    ],
)
async def test_bad_logins_are_refused(inprocess_gateway: Any, body: dict[str, str]) -> None:
    _, http = await inprocess_gateway()
    r = await http.post("/auth/login", json=body)
    assert r.status_code in (400, 401)
    assert "set-cookie" not in r.headers
    assert "access_token" not in r.text


async def test_form_login_works_too(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    r = await http.post("/auth/login", data={"username": "bob", "password": "bob-password"})
    assert r.status_code == 200


async def test_api_routes_follow_roles(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    alice, _ = await login(http, "alice")
    bob, _ = await login(http, "bob")
    http.cookies.clear()
    assert (await http.get("/api/me", headers=bearer(alice))).json() == {
        "sub": "alice",
        "roles": ["admin"],
    }
    assert (await http.get("/api/me", headers=bearer(bob))).json() == {
        "sub": "bob",
        "roles": ["user"],
    }
    assert (await http.get("/api/admin", headers=bearer(alice))).status_code == 200
    r = await http.get("/api/admin", headers=bearer(bob))
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden", "detail": "You do not have permission to do this."}
    for path in ("/api/me", "/api/admin"):
        r = await http.get(path)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_session_endpoint_needs_only_the_cookie(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    r = await http.get("/api/session")
    assert r.status_code == 401
    await login(http, "alice")
    r = await http.get("/api/session")
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == "alice"
    assert body["metadata"]["username"] == "alice"
    assert http.cookies["__Host-session"] not in r.text  # the ID is never echoed


async def test_logout_deletes_the_session_revokes_the_token_and_clears_the_cookie(
    inprocess_gateway: Any, redis_admin: redis.Redis
) -> None:
    _, http = await inprocess_gateway()
    token, _ = await login(http, "alice")
    session_id = http.cookies["__Host-session"]
    r = await http.post("/auth/logout", headers=bearer(token))
    assert r.status_code == 200
    cleared = set_cookies(r)["__Host-session"]
    assert cleared.value == ""
    assert cleared["max-age"] == "0"
    assert (await http.get("/api/me", headers=bearer(token))).status_code == 401
    http.cookies.set("__Host-session", session_id)
    assert (await http.get("/api/session")).status_code == 401
    assert redis_admin.keys("gw:jwt-deny:*")


async def test_cookie_only_logout_revokes_the_sessions_token(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    token, r = await login(http, "bob")
    csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
    assert (await http.post("/auth/logout", headers=csrf)).status_code == 200
    assert (await http.get("/api/me", headers=bearer(token))).status_code == 401


async def test_relogin_replaces_the_session(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    await login(http, "alice")
    first = http.cookies["__Host-session"]
    await login(http, "bob")
    second = http.cookies["__Host-session"]
    assert first != second
    assert (await http.get("/api/session")).json()["user_id"] == "bob"
    http.cookies.set("__Host-session", first)
    assert (await http.get("/api/session")).status_code == 401


async def test_public_key_only_verifies_but_cannot_log_in(
    inprocess_gateway: Any, rsa_key: tuple[rsa.RSAPrivateKey, Path, Path]
) -> None:
    key, _, public = rsa_key
    _, http = await inprocess_gateway(GATEWAY_JWT_PUBLIC_KEY=str(public))
    r = await http.post("/auth/login", json={"username": "alice", "password": "alice-password"})
    assert r.status_code == 501
    now = int(time.time())
    token = jwt.encode(
        {"sub": "idp-user", "roles": ["user"], "iat": now, "exp": now + 60,
         "jti": uuid.uuid4().hex, "iss": ISSUER, "aud": AUDIENCE},
        key, algorithm="RS256",
    )  # fmt: skip
    assert (await http.get("/api/me", headers=bearer(token))).json()["sub"] == "idp-user"


async def test_private_key_signs_rs256(
    inprocess_gateway: Any, rsa_key: tuple[rsa.RSAPrivateKey, Path, Path]
) -> None:
    _, private, _ = rsa_key
    _, http = await inprocess_gateway(GATEWAY_JWT_PRIVATE_KEY=str(private))
    token, _ = await login(http, "alice")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert (await http.get("/api/admin", headers=bearer(token))).status_code == 200


async def test_leeway_is_configurable_and_capped(inprocess_gateway: Any) -> None:
    app, _ = await inprocess_gateway(GATEWAY_JWT_LEEWAY="30")
    assert app.state.keys.settings.leeway == 30
    with pytest.raises(ValueError, match="leeway"):
        await inprocess_gateway(GATEWAY_JWT_LEEWAY="61")


async def test_failed_logins_are_throttled_per_user_and_address_across_instances(
    inprocess_gateway: Any, redis_admin: redis.Redis
) -> None:
    _, a = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="3", GATEWAY_LOGIN_WINDOW="30")
    _, b = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="3", GATEWAY_LOGIN_WINDOW="30")
    wrong = {"username": "alice", "password": "wrong"}
    # Three failures, spread over two instances: the count is shared through Redis.
    for http in (a, b, a):
        assert (await http.post("/auth/login", json=wrong)).status_code == 401
    # Now even the right password is refused for that pair until the window ends.
    for http in (a, b):
        r = await http.post("/auth/login", json={"username": "alice", "password": "alice-password"})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 30
        assert "access_token" not in r.text
        assert "set-cookie" not in r.headers
    # Another user from the same address is not affected.
    await login(a, "bob")
    # The key names carry a digest, never the username.
    keys = [k.decode() for k in redis_admin.scan_iter("*login-attempts:pair:*")]
    assert len(keys) == 1
    assert "alice" not in keys[0]
    assert 0 < redis_admin.pttl(keys[0]) <= 30_000
    # The window ends: the right password works and clears the count.
    redis_admin.delete(keys[0])
    await login(a, "alice")
    assert list(redis_admin.scan_iter("*login-attempts:pair:*")) == []


async def test_a_success_clears_earlier_failures(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway(GATEWAY_LOGIN_LIMIT="2")
    wrong = {"username": "bob", "password": "wrong"}
    assert (await http.post("/auth/login", json=wrong)).status_code == 401
    await login(http, "bob")
    assert (await http.post("/auth/login", json=wrong)).status_code == 401
    await login(http, "bob")  # one failure since the success: still allowed


@pytest.mark.parametrize("env", [{"GATEWAY_LOGIN_LIMIT": "0"}, {"GATEWAY_LOGIN_WINDOW": "soon"}])
def test_bad_throttle_settings_are_refused(env: dict[str, str]) -> None:
    from examples.gateway import create_app
    from tests.examples.conftest import gateway_env

    with pytest.raises(ValueError, match=next(iter(env))):
        create_app(gateway_env("redis://127.0.0.1:1", **env))

"""CSRF protection of the example gateway, black box: a login form posted from another site
is refused (login CSRF), a same-origin login works, and unsafe requests that carry the
session cookie need the session's token (X-CSRF-Token); bearer requests do not."""

from __future__ import annotations

from typing import Any

import httpx

from gateway_redis.embedded import EmbeddedRedis

EVIL = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
FORM = {"username": "bob", "password": "bob-password"}


async def test_a_cross_site_login_post_is_refused(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    r = await http.post("/auth/login", data=FORM, headers=EVIL)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "forbidden"
    assert "set-cookie" not in r.headers
    assert "access_token" not in r.text
    # An older browser sends no fetch metadata: Origin alone decides.
    r = await http.post("/auth/login", data=FORM, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert "set-cookie" not in r.headers


def test_a_cross_site_login_post_is_refused_by_the_served_gateway(
    redis_server: EmbeddedRedis, redis_admin: object, launch_gateway: Any
) -> None:
    base = launch_gateway(redis_server.url)
    with httpx.Client(base_url=base) as http:
        r = http.post("/auth/login", data=FORM, headers=EVIL)
        assert r.status_code == 403
        assert "set-cookie" not in r.headers
        own = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        assert http.post("/auth/login", data=FORM, headers=own).status_code == 200


async def test_a_same_origin_login_works(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    for headers in (
        {"Origin": "https://testserver", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "https://testserver"},
        {"Sec-Fetch-Site": "same-origin"},
        {},  # not a browser (curl, a test)
    ):
        r = await http.post("/auth/login", json=FORM, headers=headers)
        assert r.status_code == 200, (headers, r.text)
        assert r.json()["csrf_token"]
        assert "__Host-session" in http.cookies


async def test_allowed_origins_are_configurable(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway(GATEWAY_CSRF_ALLOWED_ORIGINS="https://app.example.com")
    other = {"Origin": "https://app.example.com", "Sec-Fetch-Site": "same-site"}
    assert (await http.post("/auth/login", json=FORM, headers=other)).status_code == 200
    assert (await http.post("/auth/login", json=FORM, headers=EVIL)).status_code == 403


async def test_cookie_requests_need_the_sessions_token(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    login = await http.post("/auth/login", json=FORM)
    token = login.json()["csrf_token"]
    session = await http.get("/api/session")
    assert session.json()["csrf_token"] == token  # how a reloaded page gets it back
    # The session cookie alone (as a forged form would carry it): no token, wrong token.
    assert (await http.post("/auth/logout")).status_code == 403
    wrong = {"X-CSRF-Token": "A" * len(token)}
    assert (await http.post("/auth/logout", headers=wrong)).status_code == 403
    cross = {**EVIL, "X-CSRF-Token": token}
    assert (await http.post("/auth/logout", headers=cross)).status_code == 403
    assert (await http.get("/api/session")).status_code == 200  # nothing happened
    # The right token: logged out.
    right = {"X-CSRF-Token": token, "Origin": "https://testserver"}
    assert (await http.post("/auth/logout", headers=right)).status_code == 200
    assert (await http.get("/api/session")).status_code == 401


async def test_a_new_login_gets_a_new_token(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    first = (await http.post("/auth/login", json=FORM)).json()["csrf_token"]
    second = (await http.post("/auth/login", json=FORM)).json()["csrf_token"]
    assert first != second
    assert (await http.post("/auth/logout", headers={"X-CSRF-Token": first})).status_code == 403
    assert (await http.post("/auth/logout", headers={"X-CSRF-Token": second})).status_code == 200


async def test_bearer_requests_need_no_token(inprocess_gateway: Any) -> None:
    _, http = await inprocess_gateway()
    admin = await http.post("/auth/login", json={"username": "alice", "password": "alice-password"})
    bearer = {"Authorization": f"Bearer {admin.json()['access_token']}"}
    # The cookie is there too, but a page of another site cannot add this header.
    r = await http.post("/api/channels/system:broadcast/publish", json={"n": 1}, headers=bearer)
    assert r.status_code == 200, r.text
    assert (await http.post("/auth/logout", headers=bearer)).status_code == 200

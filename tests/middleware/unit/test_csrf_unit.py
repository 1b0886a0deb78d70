"""CSRFMiddleware on the in-memory session store: the origin checks (Sec-Fetch-Site, Origin,
allowed origins, the server's own origin), the session-bound token (missing, wrong, right,
a new one per session), the bearer exemption and the settings' validation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from middleware import (
    CSRFMiddleware,
    CSRFSettings,
    SessionManager,
    SessionMiddleware,
    csrf_fields,
    csrf_token,
    get_session_handle,
)
from middleware.csrf import CSRF_SESSION_KEY, SAFE_METHODS

SITE = "https://testserver"
EVIL = "https://evil.example"


async def login(request: Request) -> JSONResponse:
    metadata = {"name": "alice", **(csrf_fields() if "stored" in request.query_params else {})}
    await get_session_handle(request).create("alice", metadata)
    return JSONResponse({"csrf_token": csrf_token(request)})


async def token(request: Request) -> JSONResponse:
    try:
        return JSONResponse({"csrf_token": csrf_token(request)})
    except LookupError:
        return JSONResponse({"csrf_token": None}, status_code=401)


async def change(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build(sessions: SessionManager, **settings: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/token", token),
            Route("/change", change, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ],
        middleware=[
            Middleware(SessionMiddleware, sessions=sessions),
            Middleware(
                CSRFMiddleware,
                settings=CSRFSettings(token_exempt_paths=("/login",), **settings),
                cookie_names=("__Host-session",),
            ),
        ],
    )


def client(app: Starlette, base: str = SITE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


async def logged_in(http: httpx.AsyncClient) -> str:
    r = await http.post("/login", headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200, r.text
    value: str = r.json()["csrf_token"]
    return value


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": EVIL}, 403),  # no fetch metadata: Origin decides
        ({"Origin": "null"}, 403),
        ({"Origin": "https://testserver.evil.example"}, 403),
        ({"Origin": "http://testserver"}, 403),  # another scheme is another origin
        ({"Sec-Fetch-Site": "same-site", "Origin": "https://a.testserver"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),  # cross-site and no Origin at all
        ({"Origin": SITE, "Sec-Fetch-Site": "same-origin"}, 200),
        ({"Origin": SITE}, 200),
        ({"Origin": "https://TESTSERVER:443"}, 200),  # normalised
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "none"}, 200),  # user-initiated
        ({}, 200),  # not a browser
    ],
)
async def test_login_gets_the_origin_check(
    sessions: SessionManager, headers: dict[str, str], status: int
) -> None:
    async with client(build(sessions)) as http:
        r = await http.post("/login", headers=headers)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["error"] == "forbidden"
        assert "set-cookie" not in r.headers


async def test_two_origin_headers_are_refused(sessions: SessionManager) -> None:
    async with client(build(sessions)) as http:
        r = await http.post("/login", headers=[("Origin", SITE), ("Origin", SITE)])
    assert r.status_code == 403


async def test_allowed_origins_pass_even_cross_site(sessions: SessionManager) -> None:
    app = build(sessions, allowed_origins=("https://app.example.com",))
    async with client(app) as http:
        cross = {"Origin": "https://app.example.com", "Sec-Fetch-Site": "cross-site"}
        assert (await http.post("/login", headers=cross)).status_code == 200
        other = {"Origin": "https://app.example.com:8443", "Sec-Fetch-Site": "cross-site"}
        assert (await http.post("/login", headers=other)).status_code == 403


async def test_safe_methods_are_never_checked(sessions: SessionManager) -> None:
    async with client(build(sessions)) as http:
        await logged_in(http)
        cross = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
        assert (await http.get("/change", headers=cross)).status_code == 200
        assert (await http.head("/change", headers=cross)).status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_a_cookie_session_needs_its_token_for_unsafe_methods(
    sessions: SessionManager, method: str
) -> None:
    async with client(build(sessions)) as http:
        value = await logged_in(http)
        assert (await http.request(method, "/change")).status_code == 403
        wrong = {"X-CSRF-Token": value[:-1] + ("A" if value[-1] != "A" else "B")}
        assert (await http.request(method, "/change", headers=wrong)).status_code == 403
        huge = {"X-CSRF-Token": value * 100}
        assert (await http.request(method, "/change", headers=huge)).status_code == 403
        right = {"X-CSRF-Token": value}
        assert (await http.request(method, "/change", headers=right)).status_code == 200
        # Same site and right token, but from another site: the origin check still refuses.
        evil = {**right, "Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
        assert (await http.request(method, "/change", headers=evil)).status_code == 403


async def test_the_token_is_stored_in_the_session_and_renewed_with_it(
    sessions: SessionManager,
) -> None:
    async with client(build(sessions)) as http:
        first = await logged_in(http)
        again = (await http.get("/token")).json()["csrf_token"]
        assert again == first  # stable for the session's life
        session_id = http.cookies["__Host-session"]
        stored = await sessions.get(session_id)
        assert stored is not None
        assert stored.metadata[CSRF_SESSION_KEY] == first
        second = await logged_in(http)  # a new session (login): a new token
        assert second != first
        old = {"X-CSRF-Token": first}
        assert (await http.post("/change", headers=old)).status_code == 403
        assert (await http.post("/change", headers={"X-CSRF-Token": second})).status_code == 200


async def test_a_token_made_with_the_session_is_the_sessions_token(
    sessions: SessionManager,
) -> None:
    async with client(build(sessions)) as http:
        r = await http.post("/login?stored", headers={"Sec-Fetch-Site": "same-origin"})
        value = r.json()["csrf_token"]
        stored = await sessions.get(http.cookies["__Host-session"])
        assert stored is not None
        assert stored.metadata[CSRF_SESSION_KEY] == value
        assert (await http.post("/change", headers={"X-CSRF-Token": value})).status_code == 200


async def test_without_a_session_there_is_no_token(sessions: SessionManager) -> None:
    async with client(build(sessions)) as http:
        assert (await http.get("/token")).status_code == 401
        # An unknown session cookie: anonymous, only the origin check applies.
        http.cookies.set("__Host-session", "x" * 43)
        assert (await http.post("/change")).status_code == 200


async def test_a_bearer_request_is_exempt_but_basic_is_not(sessions: SessionManager) -> None:
    async with client(build(sessions)) as http:
        await logged_in(http)
        bearer = {"Authorization": "Bearer abc", "Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
        assert (await http.post("/change", headers=bearer)).status_code == 200
        basic = {"Authorization": "Basic YTpi"}
        assert (await http.post("/change", headers=basic)).status_code == 403


async def test_behind_a_tls_proxy_the_public_origin_is_configured(
    sessions: SessionManager,
) -> None:
    # The proxy speaks plain HTTP to the app: the ASGI scheme is http, the page is https.
    app = build(sessions, allowed_origins=("https://testserver",))
    async with client(app, base="http://testserver") as http:
        assert (await http.post("/login", headers={"Origin": SITE})).status_code == 200
    async with client(build(sessions), base="http://testserver") as http:
        assert (await http.post("/login", headers={"Origin": SITE})).status_code == 403
        # Fetch metadata decides for current browsers, whatever the proxy did.
        same = {"Origin": SITE, "Sec-Fetch-Site": "same-origin"}
        assert (await http.post("/login", headers=same)).status_code == 200


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"allowed_origins": "https://a.example"}, "not one string"),
        ({"allowed_origins": ("a.example",)}, "allowed_origins"),
        ({"allowed_origins": ("https://a.example/path",)}, "allowed_origins"),
        ({"header_name": "X CSRF"}, "header_name"),
        ({"token_exempt_paths": "/login"}, "not one string"),
        ({"token_exempt_paths": ("login",)}, "start with '/'"),
    ],
)
def test_bad_settings_raise_value_error(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CSRFSettings(**options)


def test_bad_middleware_arguments_raise_value_error() -> None:
    app = Starlette()
    with pytest.raises(ValueError, match="cookie_names"):
        CSRFMiddleware(app, cookie_names="session")
    with pytest.raises(ValueError, match="cookie_names"):
        CSRFMiddleware(app, cookie_names=())
    with pytest.raises(ValueError, match="settings"):
        CSRFMiddleware(app, settings={"header_name": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sorted(SAFE_METHODS))
async def test_a_safe_method_passes_through_untouched(method: str) -> None:
    # GatewayMiddleware relies on this: it sends a warm request with a safe method past
    # this layer. A cross-site request with the session cookie and no token still reaches
    # the app, with the very scope, receive and send this layer got.
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body is not read")

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    headers = [(b"origin", EVIL.encode()), (b"sec-fetch-site", b"cross-site")]
    headers.append((b"cookie", b"__Host-session=abc"))
    scope = {"type": "http", "method": method, "path": "/change", "headers": headers}
    await CSRFMiddleware(app)(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert seen[0][0] is scope

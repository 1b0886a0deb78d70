"""Fuzzing bearer headers and JWT segments (middleware.jwt).

Documented errors: :meth:`JWTValidator.validate` raises ``InvalidToken`` "for every
unacceptable input; no other exception escapes". It has a safety net that turns any
unexpected exception into ``InvalidToken("malformed")``: these tests also fail when the net
catches something (the ``InvalidToken``'s cause must be ``None`` or a PyJWT error), so an
unexpected exception cannot hide behind it. Tokens are signed with the right key, so the
claim parsing behind the signature check is fuzzed too. A rejected token leaves nothing
cached; :class:`JWTMiddleware` answers any header combination with 200 or 401 (never an
exception or a 500) and lets through exactly one well-formed ``Bearer`` header.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from middleware import InvalidToken, JWTAuthenticator, JWTMiddleware, JWTSettings, JWTValidator
from middleware.jwt.middleware import bearer_token

SECRET = "fuzz-secret-0123456789abcdef0123456789abcdef"
ISSUER = "https://issuer.fuzz"
AUDIENCE = "fuzz-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: bytes, payload: bytes, key: str = SECRET) -> str:
    """A compact JWS over raw header and payload bytes (any bytes: not only JSON)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def good_payload(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "jti": "j-1",
        "roles": ["user"],
    }
    payload.update(changes)
    return payload


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=2**1000, max_value=2**1100),  # past float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
CLAIMS = ("sub", "iss", "aud", "iat", "exp", "nbf", "jti", "roles", "scope", "scp")
headers = st.one_of(
    st.fixed_dictionaries(
        {"alg": st.just("HS256")},
        optional={"typ": json_values, "kid": json_values, "crit": json_values},
    ),
    st.dictionaries(
        st.sampled_from(("alg", "typ", "kid", "crit", "b64", "jku")), json_values, max_size=4
    ),
)
payloads = st.builds(
    lambda changes, drop: {k: v for k, v in good_payload(**changes).items() if k not in drop},
    st.dictionaries(st.sampled_from(CLAIMS), json_values, max_size=3),
    st.sets(st.sampled_from(CLAIMS), max_size=2),
)


def _json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


signed_tokens = st.one_of(
    st.builds(lambda h, p: sign(_json(h), _json(p)), headers, payloads),
    st.builds(sign, st.binary(max_size=40), st.binary(max_size=40)),
    st.builds(lambda p: sign(b'{"alg":"HS256"}', p), st.binary(max_size=60)),
)
tokens = st.one_of(
    signed_tokens,
    st.text(max_size=120),
    st.from_regex(r"\A[A-Za-z0-9_=+/-]{0,30}\.[A-Za-z0-9_=+/-]{0,30}\.[A-Za-z0-9_=+/-]{0,30}\Z"),
    signed_tokens.map(lambda t: t + "."),
    signed_tokens.map(lambda t: t.replace(".", "..", 1)),
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def validator() -> JWTValidator:
    return JWTValidator(
        JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)
    )


@given(st.binary(max_size=80))
@example(b"Bearer")
@example(b"Bearer ")
@example(b"bEaReR  tok  ")
@example(b"\xffBearer x")
def test_bearer_header_parse_never_raises(value: bytes) -> None:
    token = bearer_token(value)
    if token is not None:
        scheme = value.decode("latin-1").strip().partition(" ")[0]
        assert scheme.lower() == "bearer"
        assert token == token.strip()


@given(tokens)
@example(sign(b'{"alg":"HS256"}', _json(good_payload(exp=2**64))))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(exp=1e30))))
@example(sign(b'{"alg":"HS256"}', b'{"sub":"a","sub":"b"}'))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(aud=[AUDIENCE, 1]))))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(iss=[ISSUER]))))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(jti=7))))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(sub=["alice"]))))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(roles="admin"))))
@example(sign(b'{"alg":"HS256"}', _json(good_payload(scope=7))))
@example(sign(b'{"alg":"HS256","crit":["exp"]}', _json(good_payload())))
@example(sign(b'{"alg":"HS256","b64":false}', _json(good_payload())))
@example(sign(b'{"alg":"HS256","kid":{"a":1}}', _json(good_payload())))
@example(sign(b'{"alg":"HS256"}', b"[" * 50_000))
@example(sign(b'{"alg":"HS256"}', b'{"exp":NaN}'))
def test_validate_raises_only_invalid_token_and_caches_no_rejection(
    loop: asyncio.AbstractEventLoop, validator: JWTValidator, token: str
) -> None:
    authenticator = JWTAuthenticator(validator, client=None)
    try:
        claims = loop.run_until_complete(validator.validate(token))
    except InvalidToken as exc:
        error: InvalidToken | None = exc
    else:
        error = None
    if error is not None:
        cause = error.__cause__
        assert cause is None or isinstance(cause, jwt.PyJWTError), repr(cause)
        with pytest.raises(InvalidToken):
            loop.run_until_complete(authenticator.authenticate(token))
        assert authenticator.cached(token) is None
        return
    assert claims.iss == ISSUER
    assert isinstance(claims.sub, str)
    assert all(isinstance(r, str) for r in claims.roles)
    result = loop.run_until_complete(authenticator.authenticate(token))
    assert result.claims == claims


async def _protected(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("ok")(scope, receive, send)


def _call(
    loop: asyncio.AbstractEventLoop, app: Any, kind: str, raw_headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https" if kind == "http" else "wss",
        "path": "/api",
        "raw_path": b"/api",
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "subprotocols": [],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 443),
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    first = (
        {"type": "http.request", "body": b""} if kind == "http" else {"type": "websocket.connect"}
    )
    pending = [first]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        return {"type": "http.disconnect"} if kind == "http" else {"type": "websocket.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app_ws(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _protected(scope, receive, send)
        else:
            await app_ws(scope, receive, send)

    middleware = JWTMiddleware(inner, authenticator=app, cookie_name="access_token")
    loop.run_until_complete(middleware(scope, receive, send))
    return sent


header_names = st.sampled_from((b"authorization", b"cookie", b"sec-websocket-protocol", b"x-other"))
header_values = st.one_of(
    st.binary(max_size=60),
    signed_tokens.map(lambda t: b"Bearer " + t.encode()),
    signed_tokens.map(lambda t: b"bearer, " + t.encode()),
    signed_tokens.map(lambda t: b"access_token=" + t.encode()),
    st.sampled_from((b"Bearer", b"Bearer ", b"bearer", b"bearer,", b"Basic abc", b"access_token=")),
)


@given(
    st.lists(st.tuples(header_names, header_values), max_size=4),
    st.sampled_from(("http", "websocket")),
)
@example([(b"sec-websocket-protocol", b"bearer")], "websocket")
@example([(b"sec-websocket-protocol", b"bearer, ")], "websocket")
@example([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer a")], "http")
@example([(b"cookie", b'access_token="x'), (b"cookie", b"\xff=\xfe")], "http")
def test_middleware_answers_any_headers_with_200_or_401(
    loop: asyncio.AbstractEventLoop,
    validator: JWTValidator,
    raw_headers: list[tuple[bytes, bytes]],
    kind: str,
) -> None:
    authenticator = JWTAuthenticator(validator, client=None)
    sent = _call(loop, authenticator, kind, raw_headers)
    starts = [
        m for m in sent if m["type"] in ("http.response.start", "websocket.http.response.start")
    ]
    if starts:
        assert starts[0]["status"] in (200, 401), starts
    else:  # a WebSocket accepted or closed
        assert sent, "no answer"
        assert sent[0]["type"] in ("websocket.accept", "websocket.close"), sent


@given(
    st.lists(
        st.tuples(st.sampled_from((b"x-other", b"cookie", b"accept")), st.binary(max_size=30)),
        max_size=3,
    )
)
def test_one_good_bearer_header_is_let_through(
    loop: asyncio.AbstractEventLoop,
    validator: JWTValidator,
    others: list[tuple[bytes, bytes]],
) -> None:
    authenticator = JWTAuthenticator(validator, client=None)
    token = sign(b'{"alg":"HS256","typ":"JWT"}', _json(good_payload()))
    sent = _call(
        loop, authenticator, "http", [*others, (b"authorization", b"Bearer " + token.encode())]
    )
    assert sent[0]["status"] == 200

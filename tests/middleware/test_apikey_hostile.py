"""A hostile-input corpus against the API-key layer (issue 16): raw ASGI header bytes that
no HTTP client library would send (control characters, non-ASCII, NUL, thousands of
headers), through the whole Gateway stack on a real Redis. Every one answers 401, never a
5xx; over-size and malformed values never reach the lookup; no key or credential ever
appears in a log record."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import Message

from gateway_redis import RedisClient
from middleware import APIKeySettings, Gateway, JWTSettings, KeyRecord, Presented, StaticKeys
from middleware.fastapi import Claims
from tests.middleware.conftest import AUDIENCE, ISSUER, SECRET

KEY_SECRET = "apikey-digest-secret-Hq3nX8vT1mC6pR9wK2sJ5bY7fD0gL4"
GOOD = "ak_live_good_0123456789abcdef"

CORPUS: dict[str, list[tuple[bytes, bytes]]] = {
    "empty": [(b"x-api-key", b"")],
    "spaces": [(b"x-api-key", b"   \t ")],
    "huge": [(b"x-api-key", b"k" * 100_000)],
    "just_over_the_cap": [(b"x-api-key", b"k" * 513)],
    "non_ascii_latin1": [(b"x-api-key", GOOD.encode() + b"\xff\xfe")],
    "non_ascii_utf8": [(b"x-api-key", "ключ-ключ-ключ-ключ".encode())],
    "nul": [(b"x-api-key", GOOD.encode() + b"\x00")],
    "control_chars": [(b"x-api-key", b"ak\x01\x02\x1b[31m\x7f" + GOOD.encode())],
    "inner_space": [(b"x-api-key", b"ak_live good 0123456789abcdef")],
    "newline": [(b"x-api-key", GOOD.encode() + b"\r\nX-Evil: 1")],
    "duplicate_same": [(b"x-api-key", GOOD.encode()), (b"x-api-key", GOOD.encode())],
    "duplicate_other": [(b"x-api-key", GOOD.encode()), (b"x-api-key", b"ak_live_other_00000000")],
    "many_key_headers": [(b"x-api-key", b"k%05d-padding-padding" % i) for i in range(2_000)],
    "key_and_bearer": [(b"x-api-key", GOOD.encode()), (b"authorization", b"Bearer abc.def.ghi")],
    "scheme_and_header": [
        (b"x-api-key", GOOD.encode()),
        (b"authorization", b"ApiKey " + GOOD.encode()),
    ],
    "scheme_empty": [(b"authorization", b"ApiKey ")],
    "scheme_huge": [(b"authorization", b"ApiKey " + b"a" * 20_000)],
    "scheme_twice": [(b"authorization", b"ApiKey " + GOOD.encode())] * 2,
    "scheme_non_ascii": [(b"authorization", b"apikey \xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9")],
    "wrong_key": [(b"x-api-key", b"ak_live_wrong_0123456789abcd")],
    "wrong_key_case": [(b"x-api-key", GOOD.upper().encode())],
    "many_other_headers": [(b"x-filler-%d" % i, b"v") for i in range(5_000)]
    + [(b"x-api-key", b"ak_live_wrong_0123456789abcd")],
}


async def call(app: Any, headers: list[tuple[bytes, bytes]], path: str = "/me") -> int:
    """Status of one raw ASGI HTTP request to ``app`` with exactly these header bytes."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("t", 443),
    }
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


@pytest.fixture(params=[True, False], ids=["fused", "separate"])
async def gateway_app(request: pytest.FixtureRequest, client: RedisClient) -> Any:
    table = StaticKeys(KEY_SECRET, [(GOOD, KeyRecord("good", "apikey:good", ("reader",)))])
    calls: list[str] = []

    async def lookup(presented: Presented) -> KeyRecord | None:
        calls.append(presented.digest)
        return await table(presented)

    gateway = Gateway(
        client,
        jwt=JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE),
        permissions={"reader": ["doc:read"]},
        api_keys=APIKeySettings(lookup=lookup, secret=KEY_SECRET, scheme="ApiKey"),
    )
    app = FastAPI()

    @app.get("/me")
    async def me(claims: Claims) -> dict[str, Any]:
        return {"sub": claims.sub}

    gateway.install(app, fused=request.param)
    assert await client.invalidation.wait_synced(5)
    app.state.calls = calls
    return app


async def test_every_hostile_request_gets_401_and_never_a_5xx(
    gateway_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert await call(gateway_app, [(b"x-api-key", GOOD.encode())]) == 200
    assert await call(gateway_app, [(b"authorization", b"ApiKey " + GOOD.encode())]) == 200
    assert await call(gateway_app, [(b"authorization", b"APIKEY  " + GOOD.encode())]) == 200
    baseline = len(gateway_app.state.calls)
    statuses = {name: await call(gateway_app, headers) for name, headers in CORPUS.items()}
    assert statuses == dict.fromkeys(CORPUS, 401)
    # Only well-formed single keys were looked up (the two wrong ones; by digest).
    assert len(gateway_app.state.calls) - baseline <= 3
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert GOOD not in text
    assert GOOD.upper() not in text
    assert "ak_live_wrong" not in text

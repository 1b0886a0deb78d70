"""Fuzzing session IDs and the session cookie: ``gateway_redis.sessions.codec.is_valid_id``
and :class:`~middleware.SessionMiddleware` reading ``Cookie`` headers (on the in-memory
store twin: the parsing under test is the middleware's, no Redis needed).

Documented behaviour: a malformed, missing, empty or doubled (different values) session
cookie means no session, never an error; the request is served (200 here, anonymous) and
nothing stored changes: no session created, deleted, rotated or written; only a cookie
that carries the live session's ID serves that session.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway_redis.sessions.codec import ID_LENGTH, is_valid_id
from middleware import SessionManager
from tests.middleware.sessionapp import build
from tests.twins import MemorySessionStore

COOKIE = "__Host-session"
ID_PATTERN = r"\A[0-9a-f]{12}\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]\Z"
valid_ids = st.from_regex(ID_PATTERN)


B64 = string.ascii_letters + string.digits + "_-"
ALPHABETS = [string.digits + "abcdef"] * 12 + ["."] + [B64] * 42 + ["AEIMQUYcgkosw048"]


@given(st.one_of(valid_ids, st.text(max_size=70), st.integers(), st.none(), st.binary()))
@example("0" * 12 + "." + "A" * 43)
@example("0" * 12 + "." + "A" * 42 + "B")  # last character: 6 bits of which 2 unused
@example("0" * 12 + "." + "A" * 43 + "\n")
def test_is_valid_id_never_raises(value: object) -> None:
    result = is_valid_id(value)
    assert result is (isinstance(value, str) and re.fullmatch(ID_PATTERN, value) is not None)


@given(valid_ids, st.integers(min_value=0, max_value=ID_LENGTH - 1), st.characters())
def test_one_character_outside_its_alphabet_makes_an_id_invalid(
    good: str, index: int, char: str
) -> None:
    assert is_valid_id(good)
    changed = good[:index] + char + good[index + 1 :]
    assert is_valid_id(changed) is (char in ALPHABETS[index])
    assert not is_valid_id(good[:-1])
    assert not is_valid_id(good + "A")


class _Site:
    """The session test app on the store twin, driven through raw ASGI on one loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = MemorySessionStore()
        self.manager = SessionManager(store=self.store)
        self.app = build(self.manager)
        self.session_id = ""
        self.snapshot: Any = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def call(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 443),
            "state": {},
        }
        sent: list[dict[str, Any]] = []
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], list(start.get("headers", [])), content

    async def state(self) -> Any:
        session = await self.store.get(self.session_id)
        counts = {k: v for k, v in self.store.calls.items() if k not in ("get", "touch")}
        return sorted(self.store.ids()), dict(session.metadata), session.expires_at, counts


@pytest.fixture(scope="module")
def site() -> Iterator[_Site]:
    s = _Site()
    status, headers, _ = s.run(
        s.call("POST", "/login", [(b"content-type", b"application/json")], b'{"user":"alice"}')
    )
    assert status == 200
    cookie = next(v for k, v in headers if k == b"set-cookie").decode()
    s.session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    assert is_valid_id(s.session_id)
    s.snapshot = s.run(s.state())
    yield s
    s.loop.close()


cookie_names = st.one_of(
    st.just(COOKIE),
    st.sampled_from(("session", "__host-session", " " + COOKIE, COOKIE + " ", "x")),
    st.text(st.characters(codec="latin-1"), max_size=8),
)


def _pairs(live_id: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    value = st.one_of(
        live_id,
        valid_ids,
        st.text(st.characters(codec="latin-1"), max_size=60),
        live_id.map(lambda v: f'"{v}"'),
        live_id.map(lambda v: v + "x"),
    )
    pair = st.builds(
        lambda n, sep, v: f"{n}{sep}{v}", cookie_names, st.sampled_from(("=", "", "==")), value
    )
    return st.lists(pair, max_size=4).flatmap(
        lambda ps: st.sampled_from((";", "; ", " ;", ",")).map(lambda sep: sep.join(ps))
    )


def _values(headers: list[bytes]) -> set[str]:
    """The session cookie's values in ``Cookie`` headers, as RFC 6265 splits them."""
    found = set()
    for header in headers:
        for item in header.decode("latin-1").split(";"):
            name, sep, value = item.strip().partition("=")
            if sep and name == COOKIE and value:
                found.add(value.strip('"'))
    return found


@given(data=st.data())
@example(data=None)
def test_hostile_cookies_never_fail_and_never_change_the_store(site: _Site, data: Any) -> None:
    live = st.just(site.session_id)
    if data is None:  # a doubled cookie with two values (cookie tossing): no session
        headers = [f"{COOKIE}={site.session_id}; {COOKIE}=other".encode("latin-1")]
    else:
        headers = [h.encode("latin-1") for h in data.draw(st.lists(_pairs(live), max_size=3))]
    status, _, body = site.run(site.call("GET", "/show", [(b"cookie", h) for h in headers]))
    assert status == 200, body
    served = b'"user":"alice"' in body
    if served:
        assert any(site.session_id.encode() in h for h in headers)
        # Given twice with different values (cookie tossing): trust neither.
        assert len(_values(headers)) == 1, headers
    assert site.run(site.state()) == site.snapshot


@given(
    st.lists(st.from_regex(r"\A[A-Za-z0-9_]{1,10}=[!#-+\--:<-~]{0,20}\Z"), max_size=4), st.data()
)
def test_the_live_cookie_is_found_among_any_others(
    site: _Site, others: list[str], data: Any
) -> None:
    others = [o for o in others if not o.startswith(COOKIE)]
    position = data.draw(st.integers(min_value=0, max_value=len(others)))
    pairs = [*others[:position], f"{COOKIE}={site.session_id}", *others[position:]]
    header = "; ".join(pairs).encode()
    status, _, body = site.run(site.call("GET", "/show", [(b"cookie", header)]))
    assert status == 200, body
    assert b'"user":"alice"' in body, header
    assert site.run(site.state()) == site.snapshot

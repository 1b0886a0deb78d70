"""Fuzzing invalidation events: what any publisher on Redis can put on the invalidation
channel, read by the bus (gateway_redis.invalidation) and the parsers of the JWT, RBAC and
session events (``parse_revoke_event``, ``PermissionCache``'s handler,
``parse_session_event``).

Documented behaviour: an event this version does not understand is ignored (the parsers
return None). A handler that raises turns every L1 cache off on this instance until a
resync, so a hostile body must never make one raise: through a real Redis channel, the bus
stays in sync, and cached entries survive events that are not theirs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import redis
from hypothesis import example, given
from hypothesis import strategies as st

from gateway_redis import RedisClient, RedisConfig
from gateway_redis.embedded import EmbeddedRedis
from gateway_redis.invalidation import InvalidationBus
from gateway_redis.sessions.events import parse_session_event
from middleware import (
    JWTAuthenticator,
    JWTSettings,
    JWTValidator,
    PermissionCache,
    SessionManager,
    parse_revoke_event,
)
from tests.twins import MemoryPermissions

SECRET = "fuzz-events-secret-0123456789abcdef0123456789"
ISSUER = "https://issuer.events"
AUDIENCE = "events-api"

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=2**1000, max_value=2**1100),  # past float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ("op", "iss", "jti", "exp", "ids", "user", "version", "subject", "ns", "src")
OPS = ("revoke", "drop", "drop_user", "version", "subject", "other")
loose_events = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(json_values, st.sampled_from(OPS), st.lists(json_scalars, max_size=3)),
    max_size=5,
)
# Events of each documented shape with one field of any value: they reach deeper.
shaped_events = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("revoke"),
            "iss": st.text(max_size=5),
            "jti": st.text(max_size=5),
            "exp": json_values,
        }
    ),
    st.fixed_dictionaries({"op": st.just("drop"), "ids": json_values}),
    st.fixed_dictionaries({"op": st.just("drop_user"), "user": json_values}),
    st.fixed_dictionaries({"op": st.just("version"), "version": json_values}),
    st.fixed_dictionaries({"op": st.just("subject"), "subject": json_values}),
)
events = st.one_of(loose_events, shaped_events)

HUGE = 10**400  # an integer JSON number past float range: Python's json reads it exactly


@given(events)
@example({"op": "revoke", "iss": "i", "jti": "j", "exp": HUGE})  # raised OverflowError
@example({"op": "revoke", "iss": "i", "jti": "j", "exp": True})
@example({"op": "revoke", "iss": "i", "jti": "j", "exp": math.inf})
@example({"op": "revoke", "iss": "i", "jti": "j", "exp": math.nan})
def test_revoke_events_parse_or_are_ignored(event: dict[str, Any]) -> None:
    parsed = parse_revoke_event(event)
    if parsed is None:
        return
    assert parsed["op"] == "revoke"
    assert isinstance(parsed["iss"], str)
    assert isinstance(parsed["jti"], str)
    assert isinstance(parsed["exp"], float)
    assert math.isfinite(parsed["exp"])
    assert not isinstance(event["exp"], bool)


@given(events)
@example({"op": "drop", "ids": ["a", 1, None, ["b"]]})
@example({"op": "drop_user", "user": ["x"]})
def test_session_events_parse_or_are_ignored(event: dict[str, Any]) -> None:
    parsed = parse_session_event(event)
    if parsed is None:
        return
    if parsed["op"] == "drop":
        assert all(isinstance(i, str) for i in parsed["ids"])
    else:
        assert parsed["op"] == "drop_user"
        assert isinstance(parsed["user"], str)


class _Instance:
    """One gateway's components on a real Redis, driven on a private loop."""

    def __init__(self, server: EmbeddedRedis) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = RedisClient(RedisConfig(url=server.url))
        self.run(self.client.connect())
        self.bus = self.run(self._bus())  # asked for on the loop: it starts at once
        validator = JWTValidator(
            JWTSettings(algorithms=("HS256",), key=SECRET, issuer=ISSUER, audience=AUDIENCE)
        )
        # L1 lifetimes far past a long fuzz run: an entry that merely expired mid-example
        # must not look like one a rejected event dropped.
        self.authenticator = JWTAuthenticator(validator, client=self.client, l1_ttl=3600)
        self.permissions = PermissionCache(
            MemoryPermissions({"user": {"read"}}), client=self.client, ttl=3600
        )
        self.sessions = SessionManager(client=self.client, l1_ttl=3600)
        assert self.run(self.bus.wait_synced(5))
        self.admin = redis.Redis.from_url(server.url)
        self.wire = self.client.config.channel_prefix + self.bus.channel
        self.marks: list[int] = []
        self.arrived = asyncio.Event()
        self.bus.on_event("fuzz-mark", self._mark)
        now = int(time.time())
        self.token = jwt.encode(
            {
                "sub": "alice",
                "iss": ISSUER,
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + 7200,
                "jti": "alice-1",
                "roles": ["user"],
            },
            SECRET,
            algorithm="HS256",
        )
        self.claims = self.run(self.authenticator.authenticate(self.token)).claims
        self.run(self.permissions.permissions(self.claims))
        self.session_id = self.run(self.client.sessions.create("alice", {}))
        self.run(self.sessions.get(self.session_id))
        self.count = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _mark(self, event: Any) -> None:
        self.marks.append(event["n"])
        self.arrived.set()

    async def _bus(self) -> InvalidationBus:
        return self.client.invalidation

    def cached(self) -> tuple[bool, bool, bool]:
        return (
            self.authenticator.cached(self.token) is not None,
            self.permissions.cached(self.claims) is not None,
            self.sessions.cached(self.session_id) is not None,
        )

    def deliver(self, raw: bytes) -> None:
        """Publish ``raw`` as another process would, then a marker; wait for the marker."""
        self.count += 1
        self.admin.publish(self.wire, raw)
        self.admin.publish(self.wire, json.dumps({"ns": "fuzz-mark", "src": "x", "n": self.count}))

        async def marked() -> None:
            while self.count not in self.marks:
                self.arrived.clear()
                await self.arrived.wait()

        self.run(asyncio.wait_for(marked(), 5))

    def close(self) -> None:
        self.admin.close()
        self.run(self.client.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def instance(redis_server: EmbeddedRedis) -> Iterator[_Instance]:
    gateway = _Instance(redis_server)
    yield gateway
    gateway.close()


def _theirs(event: dict[str, Any], instance: _Instance) -> bool:
    """Whether ``event`` may legitimately drop one of the instance's cached entries."""
    if event.get("ns") == "jwt":
        parsed = parse_revoke_event(event)
        return parsed is not None and parsed["jti"] == "alice-1"
    if event.get("ns") == "rbac":
        return event.get("op") in ("version", "subject")
    if event.get("ns") == "session":
        return parse_session_event(event) is not None
    return False


bodies = st.one_of(
    st.builds(
        lambda ns, e: {**e, "ns": ns, "src": "another-instance"},
        st.sampled_from(("jwt", "rbac", "session", "other")),
        events,
    ),
    events,
)


@given(st.one_of(bodies.map(lambda e: json.dumps(e).encode()), st.binary(max_size=40)))
@example(b'{"ns":"jwt","src":"x","op":"revoke","iss":"i","jti":"j","exp":1' + b"0" * 400 + b"}")
@example(b'{"ns":"jwt","src":"x","op":"revoke","iss":"i","jti":"j","exp":Infinity}')
@example(b'{"ns":"rbac","src":"x","op":"version","version":"7"}')
@example(b'{"ns":"rbac","src":"x","op":"subject","subject":["alice"]}')
@example(b'{"ns":"session","src":"x","op":"drop","ids":{"a":1}}')
@example(b'{"ns":["jwt"],"src":"x"}')
def test_hostile_events_never_turn_l1_off(instance: _Instance, raw: bytes) -> None:
    if not instance.bus.healthy or instance.cached() != (True, True, True):
        # An accepted event dropped an entry: warm the caches again.
        assert instance.run(instance.bus.wait_synced(5))
        instance.run(instance.authenticator.authenticate(instance.token))
        instance.run(instance.permissions.permissions(instance.claims))
        instance.run(instance.sessions.get(instance.session_id))
    assert instance.cached() == (True, True, True)
    resyncs = instance.bus.resyncs
    instance.deliver(raw)
    assert instance.bus.healthy, f"L1 turned off by {raw!r}"
    assert instance.bus.resyncs == resyncs
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict) or not _theirs(event, instance):
        assert instance.cached() == (True, True, True), raw

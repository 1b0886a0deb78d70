"""In-memory twins of the middleware's seams, for unit tests that run without Redis.

- :class:`MemorySessionStore` implements :class:`middleware.sessions.SessionBackend` with
  the semantics the middleware relies on from :class:`gateway_redis.sessions.SessionStore`:
  IDs of the same shape (a random tag, then 256 random bits), absolute and idle expiry,
  merging updates that never resurrect a session, delete, regenerate, "log out
  everywhere", the per-user cap (a create over ``max_per_user`` ends the sessions that
  expire soonest), and the same change events delivered to ``on_change`` handlers at once.
  ``down = True`` makes every call raise :class:`~gateway_redis.RedisUnavailable`.
- :class:`MemoryValidator` implements :class:`middleware.TokenValidator`: it knows the
  tokens it issued (:meth:`MemoryValidator.issue`) and raises :class:`InvalidToken` for
  anything else.
- :class:`MemoryPermissions` implements :class:`middleware.PermissionSource` (cacheable):
  role -> permissions, counting calls.

``tests/middleware/test_twins_contract.py`` runs the session twin and the Redis store
through the same contract, so the twin cannot drift from what it stands in for.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from gateway_redis import RedisUnavailable, SerializationError, SessionNotFound
from gateway_redis.localcache import LocalCache
from gateway_redis.sessions import (
    Session,
    SessionEvent,
    SessionEventHandler,
    id_digest,
)
from gateway_redis.sessions.codec import new_id
from gateway_redis.support import check_seconds
from middleware import InvalidToken, TokenClaims
from middleware.jwt.claims import build_claims
from middleware.websocket._auth import Identity
from middleware.websocket._connection import Connection
from middleware.websocket.limits import WebSocketLimits

__all__ = [
    "ManualClock",
    "MemoryPermissions",
    "MemorySessionStore",
    "MemoryValidator",
    "idle_connection",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ID_TAIL = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = set("0123456789abcdef")


def _seconds(name: str, value: float | timedelta) -> float:
    seconds = check_seconds(name, value)
    if seconds > 400 * 86400:
        raise ValueError(f"{name} must be at most 400 days, got {value!r}")
    return seconds


def _valid_id(session_id: object) -> bool:
    return (
        isinstance(session_id, str)
        and len(session_id) == 56
        and session_id[12] == "."
        and set(session_id[:12]) <= _HEX
        and set(session_id[13:]) <= _ID_TAIL
    )


def _check_user(user_id: object) -> str:
    if not isinstance(user_id, str):
        raise TypeError("user_id must be str")
    if not user_id:
        raise ValueError("user_id must not be empty")
    return user_id


def _encode(metadata: object) -> tuple[dict[str, str], list[str]]:
    """(name -> JSON text to write, names to delete), as the Redis store encodes them."""
    if not isinstance(metadata, Mapping):
        raise TypeError("metadata must be a mapping")
    written: dict[str, str] = {}
    removed: list[str] = []
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise TypeError("metadata keys must be str")
        if value is None:
            removed.append(name)
            continue
        try:
            written[name] = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except TypeError as exc:
            raise SerializationError(f"metadata[{name!r}] is not JSON-serializable") from exc
    return written, removed


@dataclass
class _Record:
    user_id: str
    created_ms: int
    last_ms: int
    expires_ms: int
    fields: dict[str, str] = field(default_factory=dict)  # name -> JSON text


class MemorySessionStore:
    """Sessions in a dict; see the module docstring. ``clock`` gives epoch seconds (times
    are kept in whole milliseconds, as Redis keeps them). ``calls`` counts operations by
    name. Not thread-safe; one event loop."""

    def __init__(
        self,
        *,
        default_ttl: float | timedelta = 86400,
        idle_timeout: float | timedelta | None = None,
        max_per_user: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_per_user, bool) or not isinstance(max_per_user, int):
            raise ValueError("max_per_user must be an int from 1 to 100000")
        if not 1 <= max_per_user <= 100_000:
            raise ValueError("max_per_user must be an int from 1 to 100000")
        self._cap = max_per_user
        self._ttl_ms = round(_seconds("default_ttl", default_ttl) * 1000)
        self._idle_ms = (
            0 if idle_timeout is None else round(_seconds("idle_timeout", idle_timeout) * 1000)
        )
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._handlers: list[SessionEventHandler] = []
        self._caches: list[LocalCache[Any, Any]] = []
        self.calls: Counter[str] = Counter()
        self.events: list[SessionEvent] = []
        self.down = False

    # -- the SessionBackend Protocol --------------------------------------------------

    async def create(
        self,
        user_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> str:
        self._enter("create")
        user_id = _check_user(user_id)
        written, _ = _encode({} if metadata is None else metadata)
        ttl_ms = self._ttl_ms if ttl is None else round(_seconds("ttl", ttl) * 1000)
        now = self._now_ms()
        session_id = new_id()
        self._records[session_id] = _Record(user_id, now, now, now + ttl_ms, written)
        mine = [
            (r.expires_ms, i)
            for i, r in self._records.items()
            if r.user_id == user_id and i != session_id and self._is_live(r, now)
        ]
        over = sorted(mine)[: max(0, len(mine) + 1 - self._cap)]
        for _, ended in over:
            del self._records[ended]
        if over:
            self._emit({"op": "drop", "ids": [id_digest(i) for _, i in over]})
        return session_id

    async def get(self, session_id: str) -> Session:
        self._enter("get")
        return self._session(session_id, self._live(session_id))

    async def update(self, session_id: str, metadata: Mapping[str, Any]) -> Session:
        self._enter("update")
        written, removed = _encode(metadata)
        record = self._live(session_id)  # a session that is gone is never written to
        record.fields.update(written)
        for name in removed:
            record.fields.pop(name, None)
        session = self._session(session_id, record)
        self._emit({"op": "drop", "ids": [id_digest(session_id)]})
        return session

    async def touch(self, session_id: str) -> Session:
        self._enter("touch")
        record = self._live(session_id)
        record.last_ms = self._now_ms()
        return self._session(session_id, record)

    async def delete(self, session_id: str) -> None:
        self._enter("delete")
        if not _valid_id(session_id):
            return
        self._records.pop(session_id, None)
        self._emit({"op": "drop", "ids": [id_digest(session_id)]})

    async def regenerate(self, session_id: str) -> str:
        self._enter("regenerate")
        record = self._live(session_id)
        del self._records[session_id]
        fresh = new_id()
        record.last_ms = self._now_ms()
        self._records[fresh] = record
        self._emit({"op": "drop", "ids": [id_digest(session_id)]})
        return fresh

    async def delete_user_sessions(self, user_id: str) -> int:
        self._enter("delete_user_sessions")
        user_id = _check_user(user_id)
        now = self._now_ms()
        doomed = [i for i, r in self._records.items() if r.user_id == user_id]
        live = sum(1 for i in doomed if self._is_live(self._records[i], now))
        for session_id in doomed:
            del self._records[session_id]
        self._emit({"op": "drop_user", "user": id_digest(user_id)})
        return live

    def on_change(self, handler: SessionEventHandler) -> Callable[[], None]:
        self._handlers.append(handler)

        def remove() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return remove

    def local_cache(self, name: str, *, maxsize: int, ttl: float) -> LocalCache[Any, Any]:
        # Every change is delivered here at once: the cache never needs bypassing.
        cache: LocalCache[Any, Any] = LocalCache(maxsize=maxsize, ttl=ttl, name=name)
        self._caches.append(cache)
        return cache

    # -- test helpers --------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every stored session ID, live or not."""
        return list(self._records)

    # -- internals -----------------------------------------------------------------------

    def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.down:
            raise RedisUnavailable(f"{operation}: the twin is down")

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _is_live(self, record: _Record, now: int) -> bool:
        idle_ended = self._idle_ms and record.last_ms + self._idle_ms <= now
        return record.expires_ms > now and not idle_ended

    def _live(self, session_id: str) -> _Record:
        record = self._records.get(session_id) if _valid_id(session_id) else None
        if record is None:
            raise SessionNotFound("session not found")
        if not self._is_live(record, self._now_ms()):
            del self._records[session_id]  # as the key's TTL would have removed it
            raise SessionNotFound("session not found")
        return record

    def _session(self, session_id: str, record: _Record) -> Session:
        idle = record.last_ms + self._idle_ms if self._idle_ms else None
        return Session(
            id=session_id,
            user_id=record.user_id,
            metadata=MappingProxyType({k: json.loads(v) for k, v in record.fields.items()}),
            created_at=_EPOCH + timedelta(milliseconds=record.created_ms),
            last_accessed_at=_EPOCH + timedelta(milliseconds=record.last_ms),
            expires_at=_EPOCH + timedelta(milliseconds=record.expires_ms),
            idle_expires_at=None if idle is None else _EPOCH + timedelta(milliseconds=idle),
        )

    def _emit(self, event: SessionEvent) -> None:
        self.events.append(event)
        for handler in list(self._handlers):
            try:
                handler(event)
            except Exception:
                # As the bus does: a failed handler may have left a copy stale.
                for cache in self._caches:
                    cache.clear()


class ManualClock:
    """Epoch seconds that move only when a test says so (:meth:`advance`)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryValidator:
    """A :class:`~middleware.TokenValidator` that knows the tokens it issued.

    :meth:`issue` returns a new opaque token (URL-safe, no dots) for the given claims;
    :meth:`validate` returns them, raising ``InvalidToken("expired")`` once ``exp`` has
    passed (by ``clock``, epoch seconds) and ``InvalidToken("bad_signature")`` for any
    token it did not issue. ``calls`` counts validations.
    """

    fingerprint = "memory-validator"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tokens: dict[str, TokenClaims] = {}
        self.calls = 0

    def issue(
        self,
        sub: str = "user-1",
        *,
        roles: Iterable[str] = ("user",),
        ttl: int = 300,
        iss: str = "https://issuer.test",
        **extra: Any,
    ) -> str:
        """A new token for ``sub`` with ``roles``, valid for ``ttl`` seconds; ``extra``
        claims are added (a unique ``jti`` unless given)."""
        now = int(self._clock())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": iss,
            "aud": "gateway",
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
            **extra,
        }
        token = secrets.token_urlsafe(24)
        self._tokens[token] = build_claims(payload)
        return token

    def claims(self, token: str) -> TokenClaims:
        """The claims ``token`` was issued with (no checks)."""
        return self._tokens[token]

    async def validate(self, token: str) -> TokenClaims:
        self.calls += 1
        claims = self._tokens.get(token)
        if claims is None:
            raise InvalidToken("bad_signature")
        if claims.exp <= self._clock():
            raise InvalidToken("expired")
        return claims


class MemoryPermissions:
    """A cacheable :class:`~middleware.PermissionSource`: the union of the permissions of
    the principal's roles (``claims.roles``), from a role -> permissions map that tests may
    change (``roles``). ``calls`` counts lookups; ``failing = True`` makes them raise."""

    cacheable = True

    def __init__(self, roles: Mapping[str, Iterable[str]]) -> None:
        self.roles = {role: frozenset(granted) for role, granted in roles.items()}
        self.calls = 0
        self.failing = False

    async def permissions(self, claims: TokenClaims) -> frozenset[str]:
        self.calls += 1
        if self.failing:
            raise RuntimeError("the permission twin is failing")
        granted: set[str] = set()
        for role in claims.roles:
            granted |= self.roles.get(role, frozenset())
        return frozenset(granted)


async def _never_received() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def _sent_nowhere(_message: Any) -> None:
    return None


async def _not_handled(_conn: Connection, _text: str) -> None:
    return None


def idle_connection(
    identity: Identity, *, principal: Any = None, limits: WebSocketLimits | None = None
) -> Connection:
    """A bridge :class:`Connection` whose client sends nothing and whose frames go nowhere
    (its outbox is read with ``_take``); ``principal`` is only asked what a test asks."""
    return Connection(
        send=_sent_nowhere, receive=_never_received, identity=identity,
        principal=principal, limits=limits or WebSocketLimits(), handle=_not_handled,
    )  # fmt: skip

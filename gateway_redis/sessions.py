"""The session store: one Redis hash per session plus a per-user index, kept atomic by Lua.

Key layout (``<p>`` is the client's key prefix, ``<tag>`` 12 hex digits derived from the
user id, ``sha256(x)`` a hex digest)::

    <p>session:{<tag>}:<sha256(session_id)>     hash: user_id, created_at,
                                                 last_accessed_at, expires_at (ms since
                                                 the epoch) and m:<name> = JSON value
    <p>user-sessions:{<tag>}:<sha256(user_id)>  sorted set: session IDs, score = absolute
                                                 expiry (ms); TTL = the latest expiry

A session ID is ``<tag>.<43 url-safe characters>`` (256 random bits). The tag is in the
ID so that a lookup by ID alone can name the hash slot of both keys: on Redis Cluster the
session and its user's index always share a slot, so every multi-key script stays atomic.
Raw session IDs and user ids never appear in key names or logs. Every write is a fixed
Lua script (never built from input) that passes all its keys as ``KEYS``; times come from
the Redis server's clock (``TIME``), so instances with skewed clocks agree.

On Redis Cluster the operations that touch more than one key (create, regenerate, delete,
listing, "log out everywhere") run as single-key steps instead. While a slot migrates,
Redis answers TRYAGAIN to a command whose keys are not all on one node, and keys created
meanwhile (a new session, a regenerated ID) land on the importing node while the user's
index may still be on the other: a script over both fails for as long as that lasts,
for a new key the whole migration. Single-key commands only ever get ASK/MOVED, which the
client follows. The steps keep three invariants:

* every live session whose ID has been handed out is in its user's index: create and
  regenerate write the hash, then the index entry, and return the ID only then; so
  "log out everywhere" finds it;
* an index entry whose session is gone is harmless and pruned at the next read of the
  index (delete removes the hash first, then the entry);
* a deleted session is never written again (update and touch check it in the same
  script), and regenerate's old ID stops working (read and deleted in one script)
  before the new one exists.

A call that fails between steps leaves at worst a hash whose ID nobody was given
(unusable, gone at its TTL), a stale index entry (pruned), or after regenerate no
session at all (the user logs in again). A create racing "log out everywhere" ends as if
it came just after it (the new session stays). Writing the index entry first would be
unsafe: "log out everywhere" could remove it between the steps, and the session would
live on outside the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from redis import exceptions as rexc

from gateway_redis.client import ttl_milliseconds
from gateway_redis.errors import CommandError, SerializationError, SessionNotFound

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from gateway_redis.client import RedisClient

__all__ = ["Session", "SessionStore"]

_log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TAG_DOMAIN = b"gateway-redis/session-slot-tag/v1\x00"
_ID_RE = re.compile(r"[0-9a-f]{12}\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_ID_LENGTH = 56
# Browsers cap cookie lifetimes at 400 days; a longer session cannot be carried anyway.
_MAX_TTL_MS = 400 * 86_400_000
_CHUNK = 256  # sessions per script call, so one call never blocks Redis for long

_LUA_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(x) return string.format('%.0f', x) end
-- absolute expiry (ms) of a live session; nil when it is missing, corrupt or expired
local function live_until(key, now, idle)
  local v = redis.pcall('HMGET', key, 'expires_at', 'last_accessed_at')
  if v.err then return nil end  -- not a hash
  local exp, last = tonumber(v[1]), tonumber(v[2])
  if exp == nil or last == nil or exp <= now or (idle > 0 and last + idle <= now) then
    return nil
  end
  return exp
end
local function expire(key, exp, now, idle)
  local px = exp - now
  if idle > 0 and idle < px then px = idle end
  redis.call('PEXPIRE', key, num(px))
end
-- write a new session hash (fields from ARGV[first], in pairs); returns now, expiry
local function write_session(key, user_id, ttl, idle, first)
  local now = now_ms()
  local exp = now + ttl
  redis.call('HSET', key, 'user_id', user_id, 'created_at', num(now),
             'last_accessed_at', num(now), 'expires_at', num(exp))
  for i = first, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  expire(key, exp, now, idle)
  return now, exp
end
local function index_add(idx, id, exp, now)
  redis.call('ZADD', idx, num(exp), id)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', num(now))
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', idx, num(tonumber(top[2]) - now))
end
"""

# Scripts that return {now, hash} give nil when the session is not live, and then write
# nothing: a save racing a logout cannot resurrect the session.
_LUA = {
    # KEYS: session, index. ARGV: id, user_id, ttl_ms, idle_ms, (m:name, json)*.
    # A retry after a lost reply rewrites the same fields: harmless.
    "create": """
local now, exp = write_session(KEYS[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), 5)
index_add(KEYS[2], ARGV[1], exp, now)
""",
    # -- Redis Cluster: single-key steps (see the module docstring) --
    # KEYS: session. ARGV: user_id, ttl_ms, idle_ms, (m:name, json)*. Returns the expiry.
    "create_hash": """
local _, exp = write_session(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), 4)
return exp
""",
    # KEYS: index. ARGV: id, expiry (ms), optionally an id to remove (regenerate)
    "index_add": """
if ARGV[3] then redis.call('ZREM', KEYS[1], ARGV[3]) end
index_add(KEYS[1], ARGV[1], tonumber(ARGV[2]), now_ms())
""",
    # KEYS: session. ARGV: idle_ms. Returns {now, hash or {} when not live}.
    "load": """
local now = now_ms()
if not live_until(KEYS[1], now, tonumber(ARGV[1])) then return {now, {}} end
return {now, redis.call('HGETALL', KEYS[1])}
""",
    # Regenerate, step 1: read and delete the old session at once. KEYS: old. ARGV: idle_ms
    "take": """
local now = now_ms()
if not live_until(KEYS[1], now, tonumber(ARGV[1])) then return false end
local hash = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return {now, hash}
""",
    # Step 2: write it under the new ID. KEYS: new. ARGV: idle_ms, flat hash.
    # Returns {now, hash, expiry}, or nil when it expired meanwhile. Retry-safe.
    "restore": """
local now, idle = now_ms(), tonumber(ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'last_accessed_at', num(now))
local exp = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if exp == nil or exp <= now then
  redis.call('DEL', KEYS[1])
  return false
end
expire(KEYS[1], exp, now, idle)
return {now, redis.call('HGETALL', KEYS[1]), exp}
""",
    "get": "return {now_ms(), redis.call('HGETALL', KEYS[1])}",
    # KEYS: session. ARGV: idle_ms, n, n values (m:name, json)*, then m:names to delete
    "update": """
local now, idle, n = now_ms(), tonumber(ARGV[1]), tonumber(ARGV[2])
if not live_until(KEYS[1], now, idle) then return false end
for i = 3, n + 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = n + 3, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
return {now, redis.call('HGETALL', KEYS[1])}
""",
    # KEYS: session. ARGV: idle_ms
    "touch": """
local now, idle = now_ms(), tonumber(ARGV[1])
local exp = live_until(KEYS[1], now, idle)
if not exp then return false end
redis.call('HSET', KEYS[1], 'last_accessed_at', num(now))
expire(KEYS[1], exp, now, idle)
return {now, redis.call('HGETALL', KEYS[1])}
""",
    # KEYS: index, session keys. ARGV: the sessions' IDs. Returns {deleted, left in index}.
    # IDs are never reused, so deleting an ID read from the index a moment ago is safe.
    "delete": """
local deleted = 0
for i = 1, #ARGV do
  deleted = deleted + redis.call('DEL', KEYS[i + 1])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return {deleted, redis.call('ZCARD', KEYS[1])}
""",
    # KEYS: index, session keys. ARGV: idle_ms, IDs (ARGV[i] names KEYS[i]).
    # Returns {now, hash or {} for each}; prunes dead sessions from the index.
    "load_many": """
local now, idle = now_ms(), tonumber(ARGV[1])
local out = {now}
for i = 2, #KEYS do
  out[i] = {}
  if live_until(KEYS[i], now, idle) then out[i] = redis.call('HGETALL', KEYS[i])
  else redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return out
""",
    # KEYS: old session, new session, index. ARGV: old id, new id, user_id, idle_ms
    "regenerate": """
local now, idle = now_ms(), tonumber(ARGV[4])
local exp = live_until(KEYS[1], now, idle)
if not exp or redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[3] then
  -- a retry whose first attempt went through (nobody else knows the new ID)
  if redis.call('HGET', KEYS[2], 'user_id') ~= ARGV[3] then return false end
  return {now, redis.call('HGETALL', KEYS[2])}
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'last_accessed_at', num(now))
expire(KEYS[2], exp, now, idle)
redis.call('ZREM', KEYS[3], ARGV[1])
index_add(KEYS[3], ARGV[2], exp, now)
return {now, redis.call('HGETALL', KEYS[2])}
""",
}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tag(user_id: str) -> str:
    return hashlib.sha256(_TAG_DOMAIN + user_id.encode()).hexdigest()[:12]


def _ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _valid_id(session_id: object) -> bool:
    return (
        isinstance(session_id, str)
        and len(session_id) == _ID_LENGTH
        and _ID_RE.fullmatch(session_id) is not None
    )


def _check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be str, got {type(user_id).__name__}")
    if not user_id:
        raise ValueError("user_id must not be empty")
    user_id.encode()  # UnicodeEncodeError (a ValueError) for lone surrogates
    return user_id


def _encode_metadata(metadata: object) -> tuple[list[str], list[str]]:
    """``(m:name, json, ...)`` pairs to write and ``m:name`` fields to delete (value None)."""
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    pairs: list[str] = []
    removed: list[str] = []
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise TypeError(f"metadata keys must be str, got {type(name).__name__}")
        name.encode()
        if value is None:
            removed.append("m:" + name)
            continue
        try:
            data = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except TypeError as exc:
            raise SerializationError(f"metadata[{name!r}] is not JSON-serializable: {exc}") from exc
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"metadata[{name!r}] cannot be stored as JSON: {exc}") from exc
        pairs += ["m:" + name, data]
    return pairs, removed


def _ttl_ms(name: str, ttl: float | timedelta) -> int:
    ms = ttl_milliseconds(ttl)
    if ms > _MAX_TTL_MS:
        raise ValueError(f"{name} must be at most 400 days, got {ttl!r}")
    return ms


@dataclass(frozen=True, slots=True)
class Session:
    """One session as stored in Redis; a snapshot, not a live view.

    Times are UTC-aware datetimes at millisecond precision, from the Redis server's clock.
    ``expires_at`` is the absolute expiry (creation + TTL), which nothing extends;
    ``idle_expires_at`` is when the session ends unless touched (``last_accessed_at`` +
    the store's idle timeout; None without one): it ends at the earlier of the two.
    ``metadata`` is a read-only mapping of JSON values. The ID and metadata stay out of
    ``repr`` (the ID is a bearer credential; logs must not carry it).
    """

    id: str = field(repr=False)
    user_id: str
    metadata: Mapping[str, Any] = field(repr=False, hash=False)
    created_at: datetime
    last_accessed_at: datetime
    expires_at: datetime
    idle_expires_at: datetime | None = None


class SessionStore:
    """Sessions in Redis with absolute and optional idle expiry, safe under concurrency.

    ``default_ttl`` (seconds or timedelta, default 24 h as in the Go service) is the
    absolute lifetime of a new session. ``idle_timeout`` (seconds or timedelta, default
    None = no idle limit) ends a session that has not been :meth:`touch`-ed for that long;
    it is applied when sessions are read, so changing it affects existing sessions. Both
    are capped at 400 days (``ValueError``).

    Every call goes through :meth:`RedisClient.execute` under one deadline and raises
    :class:`~gateway_redis.RedisUnavailable` when Redis is down or does not answer.
    Unknown, malformed, expired, deleted and corrupt sessions all raise
    :class:`~gateway_redis.SessionNotFound`; malformed IDs are rejected without a Redis
    call. The store holds no per-request state and may be shared.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        default_ttl: float | timedelta = 86400,
        idle_timeout: float | timedelta | None = None,
    ) -> None:
        self._client = client
        self._ttl_ms = _ttl_ms("default_ttl", default_ttl)
        self._idle_ms = 0 if idle_timeout is None else _ttl_ms("idle_timeout", idle_timeout)
        self._scripts: dict[str, AsyncScript] = {}
        # Redis Cluster: one key per command (see the module docstring).
        self._single_key = client.config.mode == "cluster"

    @property
    def client(self) -> RedisClient:
        """The client this store runs on (its session listeners hear every change)."""
        return self._client

    # -- public API -----------------------------------------------------------------------

    async def create(
        self,
        user_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> str:
        """Create a session for ``user_id`` and return its new ID.

        ``metadata`` values must be JSON-serializable (keys str); a value of None is left
        out. ``ttl`` (seconds or timedelta, > 0, at most 400 days) overrides the default
        absolute lifetime. Raises ``TypeError``/``ValueError`` (including
        :class:`~gateway_redis.SerializationError`) before any Redis call, and
        :class:`~gateway_redis.RedisUnavailable`. On Redis Cluster the hash and the index
        entry are written one after the other (see the module docstring), so logins keep
        working while the user's slot migrates; the same holds for every method here.
        """
        user_id = _check_user_id(user_id)
        pairs, _ = _encode_metadata({} if metadata is None else metadata)
        ttl_ms = self._ttl_ms if ttl is None else _ttl_ms("ttl", ttl)
        tag = _tag(user_id)
        session_id = f"{tag}.{secrets.token_urlsafe(32)}"
        key, index = self._session_key(session_id), self._index_key(user_id)
        if not self._single_key:
            args: list[str | int] = [session_id, user_id, ttl_ms, self._idle_ms, *pairs]
            await self._client.execute("session.create", self._call("create", [key, index], args))
            return session_id
        write_hash = self._call("create_hash", [key], [user_id, ttl_ms, self._idle_ms, *pairs])

        async def call(r: Redis) -> None:
            expires = await write_hash(r)
            await self._call("index_add", [index], [session_id, int(expires)])(r)

        await self._client.execute("session.create", call)
        return session_id

    async def get(self, session_id: str) -> Session:
        """The live session ``session_id``; read-only (does not extend the idle timeout).

        Raises :class:`~gateway_redis.SessionNotFound` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        key = self._checked_key(session_id)
        reply = await self._run("session.get", self._call("get", [key]))
        return self._decode(session_id, reply)

    async def update(self, session_id: str, metadata: Mapping[str, Any]) -> Session:
        """Merge ``metadata`` into the session atomically and return the result.

        Only the given fields change; a value of None deletes that field. Concurrent
        updates of different fields all survive. A session that is gone (deleted,
        expired) is never written to, so a slow save after a logout cannot resurrect it.
        Does not change expiry (use :meth:`touch`). Raises ``TypeError``/``ValueError``
        before any Redis call, :class:`~gateway_redis.SessionNotFound` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        pairs, removed = _encode_metadata(metadata)
        key = self._checked_key(session_id)
        args: list[str | int] = [self._idle_ms, len(pairs), *pairs, *removed]
        reply = await self._run("session.update", self._call("update", [key], args))
        session = self._decode(session_id, reply)
        await self._client._session_changed("update", session_id=session_id)
        return session

    async def touch(self, session_id: str) -> Session:
        """Record an access: set ``last_accessed_at`` to now and restart the idle timeout.

        The key's TTL becomes min(idle timeout, time left until the absolute expiry):
        touching never extends a session past ``expires_at``. Raises
        :class:`~gateway_redis.SessionNotFound` and :class:`~gateway_redis.RedisUnavailable`.
        """
        key = self._checked_key(session_id)
        reply = await self._run("session.touch", self._call("touch", [key], [self._idle_ms]))
        return self._decode(session_id, reply)

    async def delete(self, session_id: str) -> None:
        """Delete the session and its index entry (atomically, but on Cluster: the session
        first); no error if it is gone.

        A malformed ID is a no-op. Raises :class:`~gateway_redis.RedisUnavailable`.
        """
        if not _valid_id(session_id):
            return
        key = self._session_key(session_id)

        async def call(r: Redis) -> None:
            try:
                raw = await r.hget(key, "user_id")
                user_id = _text(raw) if raw is not None else None
            except (rexc.ResponseError, UnicodeDecodeError):  # not a hash / not UTF-8
                user_id = None
            if user_id is None or _tag(user_id) != session_id[:12]:
                await r.delete(key)  # missing, or corrupt: there is no index entry to trust
                return
            await self._delete(r, self._index_key(user_id), [session_id])

        # Logout protects security: confirmed by a replica when there is one (DESIGN).
        await self._client.execute("session.delete", call, confirm=True)
        await self._client._session_changed("delete", session_id=session_id)

    async def get_user_sessions(self, user_id: str) -> list[Session]:
        """Every live session of ``user_id``, soonest absolute expiry first.

        Expired, deleted and corrupt entries are pruned from the index as it is read.
        Raises ``TypeError``/``ValueError`` for a bad ``user_id`` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        index = self._index_key(_check_user_id(user_id))

        async def call(r: Redis) -> list[tuple[str, Any]]:
            return await self._load(r, index, await self._members(r, index, user_id))

        sessions = []
        for session_id, reply in await self._client.execute("session.get_user_sessions", call):
            try:
                sessions.append(self._decode(session_id, reply))
            except SessionNotFound:
                continue
        return sessions

    async def delete_user_sessions(self, user_id: str) -> int:
        """Delete every session of ``user_id`` ("log out everywhere"); returns how many.

        Sessions created while this runs are caught by a second pass. The count is of
        sessions this call removed (a retried call after a lost reply may count fewer).
        Raises ``TypeError``/``ValueError`` for a bad ``user_id`` and
        :class:`~gateway_redis.RedisUnavailable`.
        """
        index = self._index_key(_check_user_id(user_id))

        async def call(r: Redis) -> int:
            deleted = 0
            for _ in range(3):
                n, left = await self._delete(r, index, await self._members(r, index, user_id))
                deleted += n
                if not left:
                    break
            return deleted

        deleted: int = await self._client.execute(
            "session.delete_user_sessions", call, confirm=True
        )
        await self._client._session_changed("delete_user", user_id=user_id)
        return deleted

    async def regenerate(self, session_id: str) -> str:
        """Give the session a new ID (at login, on privilege change); returns the new ID.

        User, metadata, ``created_at`` and absolute expiry carry over; the access time is
        set to now. The old ID stops working in the same atomic step (on Cluster: before
        the new one exists; a failure in between ends the session). Raises
        :class:`~gateway_redis.SessionNotFound` and :class:`~gateway_redis.RedisUnavailable`.
        """
        old_key = self._checked_key(session_id)
        new_id = f"{session_id[:12]}.{secrets.token_urlsafe(32)}"
        new_key = self._session_key(new_id)

        async def call(r: Redis) -> Any:
            if self._single_key:
                return await self._regenerate_in_steps(r, session_id, new_id)
            user_id = self._decode(session_id, await self._call("get", [old_key])(r)).user_id
            keys = [old_key, new_key, self._index_key(user_id)]
            return await self._call(
                "regenerate", keys, [session_id, new_id, user_id, self._idle_ms]
            )(r)

        self._decode(new_id, await self._run("session.regenerate", call))
        await self._client._session_changed("delete", session_id=session_id)
        return new_id

    # -- internals ------------------------------------------------------------------------

    def _session_key(self, session_id: str) -> str:
        return self._client.key(f"session:{{{session_id[:12]}}}:{_sha256(session_id)}")

    def _index_key(self, user_id: str) -> str:
        return self._client.key(f"user-sessions:{{{_tag(user_id)}}}:{_sha256(user_id)}")

    def _checked_key(self, session_id: str) -> str:
        if not _valid_id(session_id):
            raise SessionNotFound("session not found")
        return self._session_key(session_id)

    def _call(
        self, name: str, keys: list[str], args: Sequence[str | int] = ()
    ) -> Callable[[Redis], Awaitable[Any]]:
        """``call(r)`` runs script ``name`` by EVALSHA (loading it once if Redis lacks it)."""

        def call(r: Redis) -> Awaitable[Any]:
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = r.register_script(_LUA_LIB + _LUA[name])
            return script(keys, args, client=r)

        return call

    def _chunks(self, index: str, ids: list[str]) -> Iterator[tuple[list[str], list[str]]]:
        """``(ids, [index, *their session keys])`` in chunks of :data:`_CHUNK`."""
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            yield chunk, [index, *(self._session_key(i) for i in chunk)]

    async def _load(self, r: Redis, index: str, ids: list[str]) -> list[tuple[str, Any]]:
        """``(id, [now, hash])`` for the live sessions among ``ids``; the others leave
        ``index``."""
        found: list[tuple[str, Any]] = []
        if self._single_key:
            dead = []
            for i in ids:
                now, flat = await self._call("load", [self._session_key(i)], [self._idle_ms])(r)
                if flat:
                    found.append((i, [now, flat]))
                else:
                    dead.append(i)  # IDs are never reused: it cannot come back
            if dead:
                await r.zrem(index, *dead)
            return found
        for chunk, keys in self._chunks(index, ids):
            now, *hashes = await self._call("load_many", keys, [self._idle_ms, *chunk])(r)
            found += [(i, [now, h]) for i, h in zip(chunk, hashes, strict=True) if h]
        return found

    async def _delete(self, r: Redis, index: str, ids: list[str]) -> tuple[int, int]:
        """Delete the sessions ``ids`` and their entries in ``index``; returns (sessions
        that existed, entries left in the index). Nothing to delete: ``(0, 0)``."""
        if not ids:
            return 0, 0
        if self._single_key:
            deleted = 0
            for i in ids:  # the sessions first: a stale entry is harmless, a session not
                deleted += int(await r.delete(self._session_key(i)))  # in the index is not
            await r.zrem(index, *ids)
            return deleted, int(await r.zcard(index))
        deleted = left = 0
        for chunk, keys in self._chunks(index, ids):
            n, left = await self._call("delete", keys, chunk)(r)
            deleted += int(n)
        return deleted, int(left)

    async def _regenerate_in_steps(self, r: Redis, old_id: str, new_id: str) -> Any:
        """Cluster :meth:`regenerate`: take the old session (read and delete), write it
        under the new ID, then swap the index entries. Returns ``[now, hash]`` or None."""
        taken = await self._call("take", [self._session_key(old_id)], [self._idle_ms])(r)
        if taken is None:
            return None
        user_id = self._decode(old_id, taken).user_id  # corrupt: gone, and not found
        new_key = self._session_key(new_id)
        restored = await self._call("restore", [new_key], [self._idle_ms, *taken[1]])(r)
        if restored is None:
            return None
        index_args: list[str | int] = [new_id, int(restored[2]), old_id]
        await self._call("index_add", [self._index_key(user_id)], index_args)(r)
        return restored

    async def _members(self, r: Redis, index: str, user_id: str) -> list[str]:
        """The IDs in ``index``; entries that cannot belong to ``user_id`` are removed."""
        tag, ids, bad = _tag(user_id), list[str](), list[Any]()
        for raw in await r.zrange(index, 0, -1):
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if _valid_id(text) and text[:12] == tag:
                ids.append(text)
            else:
                bad.append(raw)  # written by someone else: it names no session of ours
        if bad:
            _log.warning("dropping %d malformed entries from a session index", len(bad))
            await r.zrem(index, *bad)
        return ids

    async def _run(self, operation: str, call: Callable[[Redis], Awaitable[Any]]) -> Any:
        """``client.execute`` for scripts that return ``{now, hash}`` or nil (not found)."""
        try:
            reply = await self._client.execute(operation, call)
        except CommandError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            _log.warning("%s: a session key holds the wrong type", operation)
            raise SessionNotFound("session not found") from None
        if reply is None:
            raise SessionNotFound("session not found")
        return reply

    def _decode(self, session_id: str, reply: Any) -> Session:
        """Build a :class:`Session` from ``[now_ms, flat HGETALL]``; corrupt -> not found."""
        try:
            now, flat = int(reply[0]), reply[1]
            if not flat:
                raise SessionNotFound("session not found")
            fields = {_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
            user_id = _text(fields["user_id"])
            created, last, expires = (
                int(fields[f]) for f in ("created_at", "last_accessed_at", "expires_at")
            )
            metadata = {k[2:]: json.loads(v) for k, v in fields.items() if k.startswith("m:")}
            if _tag(user_id) != session_id[:12]:
                raise ValueError("user id does not match the session ID's slot tag")
        except SessionNotFound:
            raise
        except (KeyError, ValueError, TypeError, IndexError, RecursionError) as exc:
            _log.warning(
                "corrupt session record %s: %s", _sha256(session_id)[:8], type(exc).__name__
            )
            raise SessionNotFound("session not found") from None
        idle_until = last + self._idle_ms if self._idle_ms else None
        if expires <= now or (idle_until is not None and idle_until <= now):
            raise SessionNotFound("session not found")
        return Session(
            id=session_id,
            user_id=user_id,
            metadata=MappingProxyType(metadata),
            created_at=_ms(created),
            last_accessed_at=_ms(last),
            expires_at=_ms(expires),
            idle_expires_at=None if idle_until is None else _ms(idle_until),
        )

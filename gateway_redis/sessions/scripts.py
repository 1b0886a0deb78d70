"""The session store's Lua: a shared library of functions and one script per operation.

Every script is fixed source (never built from input) and names all its keys in
``KEYS``; times come from the Redis server's clock (``TIME``), so instances with skewed
clocks agree. :class:`Scripts` runs them by EVALSHA, loading each one once. Public (by
module path, not re-exported) so that tools and the benchmarks run the very same steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["LIBRARY", "SCRIPTS", "Scripts"]

LIBRARY = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(x) return string.format('%.0f', x) end
-- absolute expiry (ms) of a live session; nil when it is missing, corrupt or expired
local function live_until(key, now, idle)
  local v = redis.pcall('HMGET', key, 'expires_at', 'last_accessed_at')
  if v.err then
    -- not a hash: no session; any other refusal (an ACL without HMGET...) is an error
    if string.sub(v.err, 1, 9) == 'WRONGTYPE' then return nil end
    return error(v)
  end
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
-- members of idx beyond the first cap, soonest expiry first, never new (the one just
-- added); members not in the '<tag>:<digest>' form (0.1.0's raw IDs) are not counted
local function over_cap(idx, new, cap)
  local excess, out = redis.call('ZCARD', idx) - cap, {}
  if excess <= 0 then return out end
  -- the soonest-ending entries, one more in case the new one is among them; all of them
  -- when 0.1.0's raw IDs are in the way
  for _, stop in ipairs({excess, -1}) do
    out = {}
    for _, m in ipairs(redis.call('ZRANGE', idx, 0, stop)) do
      if #out >= excess then break end
      if m ~= new and string.match(m, '^%x+:%x+$') then out[#out + 1] = m end
    end
    if #out >= excess then break end
  end
  return out
end
"""

# Scripts that return {now, hash} give nil when the session is not live, and then write
# nothing: a save racing a logout cannot resurrect the session.
SCRIPTS = {
    # KEYS: session, index. ARGV: index member, user_id, ttl_ms, idle_ms, cap, the session
    # key prefix, (m:name, json)*. Then ends the user's sessions over the cap, soonest
    # expiry first (never the new one): the only keys a script names that are not in KEYS
    # (derived from the index, which only this script knows at once; never on Cluster,
    # where "create_hash" and "index_add" run instead). Returns the ended sessions' digests.
    # A retry after a lost reply rewrites the same fields: harmless.
    "create": """
local now, exp = write_session(KEYS[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), 7)
index_add(KEYS[2], ARGV[1], exp, now)
local ended = {}
for _, m in ipairs(over_cap(KEYS[2], ARGV[1], tonumber(ARGV[5]))) do
  local tag, digest = string.match(m, '^(%x+):(%x+)$')
  if redis.call('DEL', ARGV[6] .. '{' .. tag .. '}:' .. digest) == 1 then
    ended[#ended + 1] = digest
  end
  redis.call('ZREM', KEYS[2], m)
end
return ended
""",
    # -- Redis Cluster: single-key steps (see the module docstring) --
    # KEYS: session. ARGV: user_id, ttl_ms, idle_ms, (m:name, json)*. Returns the expiry.
    "create_hash": """
local _, exp = write_session(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), 4)
return exp
""",
    # KEYS: index. ARGV: member, expiry (ms), cap, optionally a member to remove
    # (regenerate). Returns the members over the cap (left in the index: the caller ends
    # their sessions, then removes them, so no live session is ever outside the index).
    "index_add": """
if ARGV[4] then redis.call('ZREM', KEYS[1], ARGV[4]) end
index_add(KEYS[1], ARGV[1], tonumber(ARGV[2]), now_ms())
return over_cap(KEYS[1], ARGV[1], tonumber(ARGV[3]))
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
    # KEYS: index, session keys. ARGV: the sessions' index members. Returns {deleted, left
    # in index}. IDs are never reused, so deleting one read from the index is safe.
    "delete": """
local deleted = 0
for i = 1, #ARGV do
  deleted = deleted + redis.call('DEL', KEYS[i + 1])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return {deleted, redis.call('ZCARD', KEYS[1])}
""",
    # KEYS: index, session keys. ARGV: idle_ms, index members (ARGV[i] names KEYS[i]).
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
    # KEYS: old session, new session, index. ARGV: old member, new member, user_id, idle_ms
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


class Scripts:
    """The scripts of one session store, each registered on first use."""

    def __init__(self) -> None:
        self._registered: dict[str, AsyncScript] = {}

    def call(
        self, name: str, keys: list[str], args: Sequence[str | int] = ()
    ) -> Callable[[Redis], Awaitable[Any]]:
        """``call(r)`` runs script ``name`` by EVALSHA (loading it once if Redis lacks it)."""

        def call(r: Redis) -> Awaitable[Any]:
            script = self._registered.get(name)
            if script is None:
                script = self._registered[name] = r.register_script(LIBRARY + SCRIPTS[name])
            return script(keys, args, client=r)

        return call

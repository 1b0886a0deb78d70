"""The Lua of channel presence: join (and heartbeat), leave, list and count, with expiry.

Fixed source, never built from input; every key in ``KEYS`` (one hash slot: the three
keys share the channel's hash tag). Portable layout (Redis 6.2+, no per-field expiry):

* ``z``: sorted set, member = connection id, score = its expiry (server time, ms);
* ``h``: hash, connection id -> ``<len(user)>:<user><info JSON>``;
* ``u``: hash, user -> number of that user's connections (the unique-user count is
  ``HLEN``, so :data:`STATS` costs O(1) after pruning).

Every script first prunes members whose score is past the server's ``TIME`` (at most
:data:`PRUNE` per call: a later call finishes the job), so a connection that is not
refreshed (its instance died) is gone one TTL after its last heartbeat, without any
instance having to notice. Every write extends the three keys' expiry to one TTL: a
channel whose every instance died disappears whole.
"""

from __future__ import annotations

from typing import Final

__all__ = ["JOIN", "LEAVE", "LIST", "PRUNE", "STATS"]

PRUNE: Final = 10_000

_COMMON: Final = """
local z, h, u = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function user_of(rec)
  local colon = string.find(rec, ':', 1, true)
  local n = tonumber(string.sub(rec, 1, colon - 1))
  return string.sub(rec, colon + 1, colon + n)
end
-- removes c, appends {conn, user} to out when it was present
local function drop(c, out)
  local rec = redis.call('HGET', h, c)
  redis.call('ZREM', z, c)
  if rec then
    local user = user_of(rec)
    if redis.call('HINCRBY', u, user, -1) <= 0 then redis.call('HDEL', u, user) end
    redis.call('HDEL', h, c)
    out[#out + 1] = c
    out[#out + 1] = user
  end
end
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 10000)
for _, c in ipairs(expired) do drop(c, gone) end
"""

JOIN: Final = (
    _COMMON
    + """
-- ARGV: ttl_ms, then (conn, user, record) triples. Adds or refreshes each connection.
-- Returns {joined: flat {conn, user}..., pruned: flat {conn, user}..., connections}.
local ttl = tonumber(ARGV[1])
local joined = {}
for i = 2, #ARGV, 3 do
  local c, user, rec = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', h, c)
  if old and user_of(old) ~= user then
    drop(c, {})
    old = false
  end
  redis.call('ZADD', z, now + ttl, c)
  redis.call('HSET', h, c, rec)
  if not old then
    redis.call('HINCRBY', u, user, 1)
    joined[#joined + 1] = c
    joined[#joined + 1] = user
  end
end
redis.call('PEXPIRE', z, ttl)
redis.call('PEXPIRE', h, ttl)
redis.call('PEXPIRE', u, ttl)
return {joined, gone, redis.call('ZCARD', z)}
"""
)

LEAVE: Final = (
    _COMMON
    + """
-- ARGV: conns. Returns {left: flat {conn, user}..., pruned: flat {conn, user}...,
-- connections}.
local left = {}
for i = 1, #ARGV do drop(ARGV[i], left) end
return {left, gone, redis.call('ZCARD', z)}
"""
)

LIST: Final = (
    _COMMON
    + """
-- ARGV: limit. Returns {records (at most limit, by expiry), pruned}.
local conns = redis.call('ZRANGE', z, 0, tonumber(ARGV[1]) - 1)
local out = {}
for i, c in ipairs(conns) do
  out[#out + 1] = c
  out[#out + 1] = redis.call('HGET', h, c) or ''
end
return {out, gone}
"""
)

STATS: Final = (
    _COMMON
    + """
-- Returns {connections, unique users, pruned}.
return {redis.call('ZCARD', z), redis.call('HLEN', u), gone}
"""
)

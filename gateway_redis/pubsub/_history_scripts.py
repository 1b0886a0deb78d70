"""The Lua of channel history: publish with a position, read what followed a position.

Fixed source, never built from input; every key in ``KEYS`` (one hash slot: the meta
hash, the stream and the idempotency marker share the channel's hash tag). The channel
itself is ``ARGV[1]``: for a sharded channel it hashes to the same slot as the keys, which
is what lets ``SPUBLISH`` run inside the script on Redis Cluster.

Layout: the meta hash holds ``e`` (the epoch) and ``o`` (the last offset); the stream
holds one entry per message with ID ``<offset>-0`` and field ``p`` (the published bytes).
A missing meta hash means the history may be gone: a new epoch is started (and any stream
left behind is deleted, so a stale entry is never served under the new epoch).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["PUBLISH", "READ", "ScriptRunner"]

_EPOCH: Final = """
local function epoch_of(meta, stream, fresh, meta_ttl)
  local epoch = redis.call('HGET', meta, 'e')
  if epoch then return epoch end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', fresh, 'o', 0)
  redis.call('PEXPIRE', meta, meta_ttl)
  return fresh
end
"""

PUBLISH: Final = (
    _EPOCH
    + """
-- KEYS: meta, stream, [idempotency marker]. ARGV: channel, sharded ('1'/'0'), envelope
-- head ('{' or '{<trace headers>,'), body, size, ttl_ms, meta_ttl_ms, fresh epoch,
-- idempotency window ms. Returns {epoch, offset, receivers, replayed (0/1)}.
if KEYS[3] then
  local seen = redis.call('HMGET', KEYS[3], 'e', 'o', 'r')
  if seen[1] then return {seen[1], tonumber(seen[2]), tonumber(seen[3]), 1} end
end
local meta, stream = KEYS[1], KEYS[2]
local epoch = epoch_of(meta, stream, ARGV[8], ARGV[7])
local offset = redis.call('HINCRBY', meta, 'o', 1)
redis.call('PEXPIRE', meta, ARGV[7])
local payload = '{"_gw":' .. ARGV[3] .. '"epoch":"' .. epoch .. '","offset":"'
  .. offset .. '"},"data":' .. ARGV[4] .. '}'
redis.call('XADD', stream, 'MAXLEN', ARGV[5], offset .. '-0', 'p', payload)
redis.call('PEXPIRE', stream, ARGV[6])
local receivers
if ARGV[2] == '1' then
  receivers = redis.call('SPUBLISH', ARGV[1], payload)
else
  receivers = redis.call('PUBLISH', ARGV[1], payload)
end
if KEYS[3] then
  redis.call('HSET', KEYS[3], 'e', epoch, 'o', offset, 'r', receivers)
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
end
return {epoch, offset, receivers, 0}
"""
)

READ: Final = (
    _EPOCH
    + """
-- KEYS: meta, stream. ARGV: fresh epoch, meta_ttl_ms, since epoch ('' for the position
-- only), since offset, limit. Returns {epoch, offset} for the position; else
-- {epoch, offset, payloads} when every message after since is kept (payloads may be
-- fewer than all: limit), {epoch, offset, false} when recovery is impossible.
local meta, stream = KEYS[1], KEYS[2]
local epoch = epoch_of(meta, stream, ARGV[1], ARGV[2])
local top = tonumber(redis.call('HGET', meta, 'o'))
if ARGV[3] == '' then return {epoch, top} end
local since = tonumber(ARGV[4])
if ARGV[3] ~= epoch or since > top then return {epoch, top, false} end
if since == top then return {epoch, top, {}} end
local first = string.format('%d-0', since + 1)
local entries = redis.call('XRANGE', stream, first, '+', 'COUNT', ARGV[5])
if #entries == 0 or entries[1][1] ~= first then return {epoch, top, false} end
local out = {}
for i, entry in ipairs(entries) do out[i] = entry[2][2] end
return {epoch, top, out}
"""
)


class ScriptRunner:
    """Runs the history scripts by EVALSHA, registering each once (redis-py's script
    object loads it again after a NOSCRIPT, e.g. after a server restart or failover)."""

    def __init__(self) -> None:
        self._registered: dict[str, AsyncScript] = {}

    def call(
        self, source: str, keys: list[str], args: Sequence[str | int | bytes]
    ) -> Callable[[Redis], Awaitable[Any]]:
        """``call(r)`` runs ``source`` (:data:`PUBLISH` or :data:`READ`) on ``r``."""

        def call(r: Redis) -> Awaitable[Any]:
            script = self._registered.get(source)
            if script is None:
                script = self._registered[source] = r.register_script(source)
            return script(keys, args, client=r)

        return call

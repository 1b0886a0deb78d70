"""Redis Cluster: the session store's multi-key operations as single-key steps.

On Redis Cluster the session operations that touch more than one key (create, regenerate,
delete, listing, "log out everywhere") run as the single-key steps here. While a slot migrates,
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
  before the new one exists;
* at most ``cap`` sessions per user once a create returns: the index entry is added and
  the entries over the cap are chosen in one script; their sessions are deleted, then
  their entries (so a failure in between leaves them listed, never live and unlisted).

A call that fails between steps leaves at worst a hash whose ID nobody was given
(unusable, gone at its TTL), a stale index entry (pruned), or after regenerate no
session at all (the user logs in again). A create racing "log out everywhere" ends as if
it came just after it (the new session stays). Writing the index entry first would be
unsafe: "log out everywhere" could remove it between the steps, and the session would
live on outside the index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway_redis.sessions.codec import as_text

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.sessions.scripts import Scripts

__all__ = ["SingleKeySteps"]


class SingleKeySteps:
    """The Cluster versions of the :class:`~gateway_redis.sessions.SessionStore` steps that
    touch a session and its user's index.

    ``session_key(member)`` (an index member), ``index_key(user_id)`` name the keys and
    ``member(session_id)`` the index entries; ``idle_ms`` is the store's idle timeout (0:
    none), ``cap`` its sessions per user and ``scripts`` its Lua scripts.
    """

    def __init__(
        self,
        scripts: Scripts,
        *,
        session_key: Callable[[str], str],
        index_key: Callable[[str], str],
        member: Callable[[str], str],
        idle_ms: int,
        cap: int,
    ) -> None:
        self._call = scripts.call
        self._session_key = session_key
        self._index_key = index_key
        self._member = member
        self._idle_ms = idle_ms
        self._cap = cap

    async def create(
        self,
        r: Redis,
        member: str,
        user_id: str,
        ttl_ms: int,
        pairs: list[str],
    ) -> list[str]:
        """Write the session's hash, then its index entry; end the user's sessions over
        the cap. Returns the index members of the sessions ended."""
        key, index = self._session_key(member), self._index_key(user_id)
        args: list[str | int] = [user_id, ttl_ms, self._idle_ms, *pairs]
        expires = await self._call("create_hash", [key], args)(r)
        index_args: list[str | int] = [member, int(expires), self._cap]
        over = [as_text(m) for m in await self._call("index_add", [index], index_args)(r)]
        if over:
            await self.delete(r, index, over)
        return over

    async def load(self, r: Redis, index: str, ids: list[str]) -> list[tuple[str, Any]]:
        """``(member, [now, hash])`` for the live sessions among the index members
        ``ids``, one at a time; the others leave ``index``."""
        found: list[tuple[str, Any]] = []
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

    async def delete(self, r: Redis, index: str, ids: list[str]) -> tuple[int, int]:
        """Delete the sessions ``ids`` (``ids`` not empty), then their entries in
        ``index``; returns (sessions that existed, entries left in the index)."""
        deleted = 0
        for i in ids:  # the sessions first: a stale entry is harmless, a session not
            deleted += int(await r.delete(self._session_key(i)))  # in the index is not
        await r.zrem(index, *ids)
        return deleted, int(await r.zcard(index))

    async def regenerate(
        self,
        r: Redis,
        old_id: str,
        new_id: Callable[[str], str],
        user_of: Callable[[str, Any], str],
    ) -> Any:
        """Take the old session (read and delete), write it under ``new_id(user_id)``, then
        swap the index entries. ``user_of(id, [now, hash])`` is the session's user id
        (raises when the record is corrupt). Returns ``[now, hash, expiry]`` or None."""
        old = self._member(old_id)
        taken = await self._call("take", [self._session_key(old)], [self._idle_ms])(r)
        if taken is None:
            return None
        user_id = user_of(old_id, taken)  # corrupt: gone, and not found
        new = self._member(new_id(user_id))
        new_key = self._session_key(new)
        restored = await self._call("restore", [new_key], [self._idle_ms, *taken[1]])(r)
        if restored is None:
            return None
        # A swap: the count is unchanged, nothing goes over the cap.
        index_args: list[str | int] = [new, int(restored[2]), self._cap, old]
        await self._call("index_add", [self._index_key(user_id)], index_args)(r)
        return restored

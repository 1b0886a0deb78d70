"""A user's session index: its members, the keys they name, and the chunked load and
delete of the sessions it lists (private: the store's multi-session steps).

An index member is ``<tag>:<sha256(session ID)>``, ``<tag>`` the hash tag of the session's
key (:mod:`~.tags`): it names the key, ``<p>session:{<tag>}:<sha256(session ID)>``, and
nothing that grants the session. Indexes written by 0.1.0 hold raw session IDs; those are
still understood, and replaced by their member form whenever the index is read (listing,
"log out everywhere"), so the raw IDs leave Redis at the first read or at their expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway_redis.sessions._cluster import SingleKeySteps
from gateway_redis.sessions.codec import as_text, parse_member, sha256_hex
from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.client import RedisClient
    from gateway_redis.sessions.scripts import Scripts
    from gateway_redis.sessions.tags import TagScheme

__all__ = ["UserIndex", "digests"]

_log = logging.getLogger(__name__)
_CHUNK = 256  # sessions per script call, so one call never blocks Redis for long


class UserIndex:
    """Key names and multi-session steps of one session store on ``client``.

    ``tags`` says which slot each key is in, ``idle_ms`` is the store's idle timeout (0:
    none), ``cap`` its sessions per user.
    :attr:`steps` are the single-key steps the store runs on Redis Cluster (None
    elsewhere); :meth:`load` and :meth:`delete` use them there by themselves.
    """

    def __init__(
        self, client: RedisClient, scripts: Scripts, tags: TagScheme, *, idle_ms: int, cap: int
    ) -> None:
        self._client = client
        self._tags = tags
        self._call = scripts.call
        self._idle_ms = idle_ms
        self.steps: SingleKeySteps | None = None
        if client.config.mode == "cluster":
            self.steps = SingleKeySteps(
                scripts,
                session_key=self.key_of,
                index_key=self.index_key,
                member=self.member,
                idle_ms=idle_ms,
                cap=cap,
            )

    def session_key(self, session_id: str) -> str:
        """The key of the session ``session_id`` (a well-formed ID)."""
        return self.key_of(self.member(session_id))

    def member(self, session_id: str) -> str:
        """How the user's index names ``session_id``: ``<key tag>:<sha256(session_id)>``."""
        return f"{self._tags.key_tag(session_id)}:{sha256_hex(session_id)}"

    def key_of(self, member: str) -> str:
        """The key of the session an index ``member`` names (as :meth:`members` returns
        them)."""
        return self._client.key(f"session:{{{member[:12]}}}:{member[13:]}")

    @property
    def session_prefix(self) -> str:
        """What every session key starts with (the create script builds keys with it)."""
        return self._client.key("session:")

    def index_key(self, user_id: str) -> str:
        tag = self._tags.user_tag(user_id)
        return self._client.key(f"user-sessions:{{{tag}}}:{sha256_hex(user_id)}")

    async def members(self, r: Redis, index: str) -> list[str]:
        """The members of ``index``; malformed ones are removed, 0.1.0's raw IDs replaced
        by their member form."""
        found, bad, raw_ids = list[str](), list[Any](), dict[str, float]()
        entries: list[Any] = await r.zrange(index, 0, -1, withscores=True)
        for raw, score in entries:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            member = parse_member(text)
            if member is None:
                bad.append(raw)  # written by someone else: it names no session of ours
                continue
            found.append(member)
            if member != text:
                raw_ids[member] = score
                bad.append(raw)
        if raw_ids:
            await r.zadd(index, raw_ids)
        if bad:
            if len(bad) > len(raw_ids):
                malformed = len(bad) - len(raw_ids)
                _log.warning(
                    "dropping %d malformed entries from a session index",
                    malformed,
                    extra=log_fields(
                        "sessions", "session_index_pruned", "malformed", entries=malformed
                    ),
                )
            await r.zrem(index, *bad)
        return found

    def _chunks(self, index: str, members: list[str]) -> Iterator[tuple[list[str], list[str]]]:
        """``(members, [index, *their session keys])`` in chunks of :data:`_CHUNK`."""
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            yield chunk, [index, *(self.key_of(m) for m in chunk)]

    async def load(self, r: Redis, index: str, members: list[str]) -> list[tuple[str, Any]]:
        """``(member, [now, hash])`` for the live sessions among ``members``; the others
        leave ``index``."""
        if self.steps is not None:
            return await self.steps.load(r, index, members)
        found: list[tuple[str, Any]] = []
        for chunk, keys in self._chunks(index, members):
            now, *hashes = await self._call("load_many", keys, [self._idle_ms, *chunk])(r)
            found += [(m, [now, h]) for m, h in zip(chunk, hashes, strict=True) if h]
        return found

    async def delete(self, r: Redis, index: str, members: list[str]) -> tuple[int, int]:
        """Delete the sessions ``members`` name and their entries in ``index``; returns
        (sessions that existed, entries left in the index). Nothing to delete: ``(0, 0)``."""
        if not members:
            return 0, 0
        if self.steps is not None:
            return await self.steps.delete(r, index, members)
        deleted = left = 0
        for chunk, keys in self._chunks(index, members):
            n, left = await self._call("delete", keys, chunk)(r)
            deleted += int(n)
        return deleted, int(left)


def digests(members: list[Any]) -> list[str]:
    """The ID digests (as session events carry them) of index ``members``."""
    return [as_text(m)[13:] for m in members]

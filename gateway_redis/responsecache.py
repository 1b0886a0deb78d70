"""The Redis side of the response cache (L2): stored responses, tag versions, fill locks.

The ASGI side (:mod:`middleware.responsecache`) keeps L1 and decides what is cached; every
Redis command of it lives here. Keys (``<prefix>`` being the client's, ``<fp>`` the
caller's fingerprint of a cache key, a hex digest):

* ``<prefix>rc:e:<fp>``: one response (:class:`StoredResponse`, binary), for its fresh
  lifetime plus its stale bound;
* ``<prefix>rc:t:<sha256(tag)>``: the tag's version, a random token written by each
  invalidation of the tag, kept for :attr:`ResponseCacheStore.max_lifetime` or a day,
  whichever is longer;
* ``<prefix>rc:l:<fp>``: the fill lock of a key (SET NX PX, a random token).

Invalidation by tag, correct on Cluster and under races: each entry records the versions
its tags had *before* its response was computed; a read checks them against the current
versions and treats any difference as a miss. An invalidation writes a new random version
(never a counter: an expired counter would restart at a value an old entry recorded), so a
response computed while its tag was being invalidated is never served after it. Each key
is read and written on its own (pipelines without transactions), so entries and tags may
live in different slots. A tag key lives at least as long as any entry can
(``max_lifetime``, and at least a day), so an entry never outlives the version that
followed the one it recorded.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.client import RedisClient

__all__ = ["ResponseCacheStore", "StoredResponse"]

_MAGIC = b"GRC1"
_TAG_TTL_MS = 86_400_000
_HEADER = struct.Struct(">4sI")
# Compare-and-delete: only the holder of the lock token releases it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One cached response: ``status``, ``headers`` (raw ASGI pairs, the cache's own
    ``etag``/``cache-control`` not included), ``body``, the strong ``etag`` (quoted),
    ``created`` (epoch seconds), ``ttl`` (fresh seconds), ``stale`` (seconds it may still
    be served after that, see the cache's stale rules), ``versions`` (tag -> the tag's
    version read before the response was computed)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    etag: str
    created: float
    ttl: float
    stale: float = 0.0
    versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def tags(self) -> tuple[str, ...]:
        """The entry's tags."""
        return tuple(self.versions)

    def age(self, now: float) -> float:
        """Seconds since the response was computed (never negative)."""
        return max(0.0, now - self.created)

    def remaining(self, now: float) -> float:
        """Fresh seconds left (negative once stale)."""
        return self.ttl - self.age(now)

    def encode(self) -> bytes:
        """The binary form stored in Redis."""
        meta = json.dumps(
            {
                "s": self.status,
                "h": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
                "e": self.etag,
                "c": self.created,
                "t": self.ttl,
                "x": self.stale,
                "v": dict(self.versions),
            },
            separators=(",", ":"),
        ).encode()
        return _HEADER.pack(_MAGIC, len(meta)) + meta + self.body

    @classmethod
    def decode(cls, raw: bytes) -> StoredResponse | None:
        """The response stored as ``raw``, or None when it is not one (corrupt, foreign)."""
        try:
            magic, size = _HEADER.unpack_from(raw)
            if magic != _MAGIC or size > len(raw) - _HEADER.size:
                return None
            meta = json.loads(raw[_HEADER.size : _HEADER.size + size])
            versions = meta["v"]
            if not isinstance(versions, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
            ):
                return None
            return cls(
                status=int(meta["s"]),
                headers=tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in meta["h"]),
                body=bytes(raw[_HEADER.size + size :]),
                etag=str(meta["e"]),
                created=float(meta["c"]),
                ttl=float(meta["t"]),
                stale=float(meta["x"]),
                versions=versions,
            )
        except (ValueError, TypeError, KeyError, struct.error, AttributeError, RecursionError):
            return None


class ResponseCacheStore:
    """Stored responses, tag versions and fill locks on ``client`` (see the module
    docstring). ``max_lifetime`` (seconds) is the longest an entry may live (fresh plus
    stale): :meth:`save` caps at it, and tag versions live that long. Holds no state
    besides its key names."""

    def __init__(self, client: RedisClient, *, max_lifetime: float = 86_400.0) -> None:
        if isinstance(max_lifetime, bool) or not isinstance(max_lifetime, (int, float)):
            raise ValueError(f"max_lifetime must be a number of seconds, got {max_lifetime!r}")
        if not 0 < max_lifetime <= 60 * 86_400:
            raise ValueError(f"max_lifetime must be in (0, 60 days], got {max_lifetime!r}")
        self._client = client
        self._max_lifetime_ms = max(1, int(max_lifetime * 1000))

    @property
    def max_lifetime(self) -> float:
        """The longest lifetime of an entry, in seconds."""
        return self._max_lifetime_ms / 1000

    def _entry(self, fingerprint: str) -> str:
        return self._client.key("rc:e:" + fingerprint)

    def _lock(self, fingerprint: str) -> str:
        return self._client.key("rc:l:" + fingerprint)

    def _tag(self, tag: str) -> str:
        return self._client.key("rc:t:" + hashlib.sha256(tag.encode()).hexdigest())

    async def versions(self, tags: Iterable[str]) -> dict[str, str]:
        """The current version of each tag (``""`` for a tag never invalidated). Read
        before computing the response that :meth:`save` then stores with them."""
        wanted = list(dict.fromkeys(tags))
        if not wanted:
            return {}
        keys = [self._tag(t) for t in wanted]

        async def read(r: Redis) -> list[Any]:
            if len(keys) == 1:
                return [await r.get(keys[0])]
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            return list(await pipe.execute())

        values = await self._client.execute("responsecache.versions", read, miss=True)
        return {t: _text(v) for t, v in zip(wanted, values, strict=True)}

    async def load(self, fingerprint: str) -> StoredResponse | None:
        """The stored response of ``fingerprint``, or None (missing, corrupt, or one of its
        tags invalidated since it was computed). Raises
        :class:`~gateway_redis.CacheUnavailable`."""
        key = self._entry(fingerprint)
        raw: Any = await self._client.execute("responsecache.load", lambda r: r.get(key), miss=True)
        if raw is None:
            return None
        stored = StoredResponse.decode(bytes(raw))
        if stored is None:
            return None
        if stored.versions:
            current = await self.versions(stored.versions)
            if current != dict(stored.versions):
                return None
        return stored

    async def save(self, fingerprint: str, response: StoredResponse) -> None:
        """Store ``response`` for its fresh lifetime plus its stale bound (capped at
        ``max_lifetime``). Raises :class:`~gateway_redis.RedisUnavailable`."""
        key, data = self._entry(fingerprint), response.encode()
        px = min(self._max_lifetime_ms, max(1, int((response.ttl + response.stale) * 1000)))
        await self._client.execute("responsecache.save", lambda r: r.set(key, data, px=px))

    async def invalidate(self, tags: Iterable[str]) -> None:
        """Give each tag a new version: every stored response recorded with an older one
        is a miss from now on. Raises :class:`~gateway_redis.RedisUnavailable`."""
        keys = [self._tag(t) for t in dict.fromkeys(tags)]
        if not keys:
            return
        # At least a day: instances of a rolling deploy may give entries longer lifetimes
        # than this one's, and a version must outlive every entry that recorded the one
        # before it (tag keys are few: written by invalidations only).
        px = max(self._max_lifetime_ms, _TAG_TTL_MS)

        async def write(r: Redis) -> None:
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, secrets.token_hex(8), px=px)
            await pipe.execute()

        await self._client.execute("responsecache.invalidate", write)

    async def acquire(self, fingerprint: str, ttl: float) -> str | None:
        """Take the fill lock of ``fingerprint`` for ``ttl`` seconds: its token, or None
        when another instance holds it. Raises :class:`~gateway_redis.RedisUnavailable`."""
        key, token, px = self._lock(fingerprint), secrets.token_hex(8), max(1, int(ttl * 1000))
        taken: Any = await self._client.execute(
            "responsecache.lock", lambda r: r.set(key, token, px=px, nx=True), retry=False
        )
        return token if taken else None

    async def release(self, fingerprint: str, token: str) -> None:
        """Release the fill lock if ``token`` still holds it. Raises
        :class:`~gateway_redis.RedisUnavailable`."""
        key = self._lock(fingerprint)
        await self._client.execute(
            "responsecache.unlock", lambda r: r.eval(_RELEASE, 1, key, token)
        )


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)

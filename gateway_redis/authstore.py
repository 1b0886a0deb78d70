"""The Redis side of the auth caches: verified claims, revocations, cached permissions.

Every Redis command of the JWT and RBAC layers lives here, typed, on a
:class:`~gateway_redis.client.RedisClient` (its deadline, availability and error rules;
its key prefix). The middleware keeps its in-process parts (L1, the revocation mirror)
and calls these stores. Keys, values and TTLs (``<prefix>`` being the client's):

* ``<prefix>jwt:<digest>``: a token's verified claims (JSON), for the TTL the caller gives
  (:class:`ClaimsStore`);
* ``<prefix>jwt-deny:<sha256(iss NUL jti)>``: ``1`` until the revocation ends (the caller
  gives the end: the last moment the token is accepted, its ``exp`` plus the verifier's
  leeway), and ``<prefix>jwt-revocations``: a sorted set of ``[iss, jti]`` JSON members
  scored by that end (epoch seconds), kept until its latest member ends
  (:class:`RevocationStore`);
* ``<prefix>jwt-subject-cutoffs``: a sorted set of ``[sub, cutoff]`` JSON members (tokens
  of ``sub`` issued at or before ``cutoff``, epoch seconds, are refused) scored by the end
  of the cut-off, kept until its latest member ends (:class:`SubjectCutoffStore`);
* ``<prefix>rbac:<version>:<sha256(subject)>``: a subject's permissions (sorted JSON
  list), and ``<prefix>rbac:policy-version``: an integer (:class:`PermissionStore`).

The token stores take a ``namespace`` (default ``"jwt"``, the names above): the API-key
layer keeps the same entries under ``apikey`` (``<prefix>apikey:<digest>``,
``<prefix>apikey-deny:...``, ``<prefix>apikey-revocations``...), so one denylist never
refuses the other's credentials.

Revoking a token, cutting a subject off and removing permissions are confirmed writes
(:meth:`RedisClient.confirmed`): they reach a replica or raise
``RedisUnavailable(reason="unconfirmed")``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway_redis.support import log_fields

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway_redis.client import RedisClient

__all__ = [
    "ClaimsStore",
    "PermissionStore",
    "Revocation",
    "RevocationStore",
    "SubjectCutoff",
    "SubjectCutoffStore",
]

_log = logging.getLogger(__name__)
_VERSION_TTL_MS = 400 * 86_400_000  # the version key must outlive every cache entry


@dataclass(frozen=True, slots=True)
class Revocation:
    """An active revocation: the token ``(iss, jti)`` is refused until ``until`` (epoch
    seconds: the end of the token's acceptance, ``exp`` plus the leeway)."""

    iss: str
    jti: str
    until: float


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not namespace.isidentifier() or len(namespace) > 32:
        raise ValueError(f"namespace must be a short identifier, got {namespace!r}")
    return namespace


class _ExpiringIndex:
    """A sorted set of JSON members scored by when each ends (epoch seconds), kept until
    its latest member ends: the index of revocations and the set of subject cut-offs."""

    def __init__(self, client: RedisClient, key: str) -> None:
        self._client = client
        self.key = key

    async def add(self, operation: str, member: object, until: float, now: float) -> None:
        """List ``member`` until ``until`` (members ended by ``now`` leave), confirmed by a
        replica when the primary has one."""
        index, encoded, until_ms = self.key, json.dumps(member), int(until * 1000)

        async def write(r: Redis) -> None:
            # One pipeline on the pinned connection; the set's expiry only ever grows.
            pipe = r.pipeline(transaction=False)
            pipe.zadd(index, {encoded: until})
            pipe.zremrangebyscore(index, "-inf", now)
            pipe.pexpireat(index, until_ms, nx=True)
            pipe.pexpireat(index, until_ms, gt=True)
            await pipe.execute()

        await self._client.confirmed(operation, index, write)

    async def pairs(self, operation: str, now: float) -> list[tuple[Any, Any, float]]:
        """The members still in force at ``now`` that decode to a JSON pair, as
        ``(first, second, until)``; anything else is skipped."""
        index = self.key
        entries: Any = await self._client.execute(
            operation, lambda r: r.zrangebyscore(index, now, "+inf", withscores=True)
        )
        found = []
        for member, score in entries:
            try:
                pair = json.loads(member)
            except ValueError:
                continue
            if isinstance(pair, list) and len(pair) == 2:
                found.append((pair[0], pair[1], float(score)))
        return found


class RevocationStore:
    """The denylist of revoked tokens, by (``iss``, ``jti``), on ``client``, under
    ``namespace`` (``<namespace>-deny:...``, ``<namespace>-revocations``).

    Holds no state besides its key names; the client stays owned by its creator.
    """

    def __init__(self, client: RedisClient, namespace: str = "jwt") -> None:
        self._client = client
        self._ns = _check_namespace(namespace)
        self._index = _ExpiringIndex(client, client.key(f"{namespace}-revocations"))

    def deny_key(self, iss: str, jti: object) -> str:
        """The full key of the denylist entry of ``(iss, jti)`` (``jti`` as ``str()``)."""
        digest = hashlib.sha256(f"{iss}\0{jti}".encode("utf-8", "replace")).hexdigest()
        return self._client.key(f"{self._ns}-deny:" + digest)

    async def revoke(self, iss: str, jti: str, until: float, now: float) -> None:
        """Deny ``(iss, jti)`` until ``until`` (epoch seconds; the caller's acceptance
        window of the token, ``exp`` + leeway, so that an instance started later still
        refuses it) and list it in the index (entries ended by ``now`` leave it); both
        writes confirmed by a replica when the primary has one.

        Raises :class:`~gateway_redis.RedisUnavailable` (``reason="unconfirmed"`` when a
        replica did not acknowledge) and :class:`~gateway_redis.CommandError`.
        """
        deny = self.deny_key(iss, jti)

        async def write_deny(r: Redis) -> None:
            await r.set(deny, b"1", pxat=int(until * 1000))

        # Two keys in two slots (Cluster): each confirmed on the node that owns it, the
        # denylist entry (what protects) first.
        await self._client.confirmed(f"{self._ns}.revoke", deny, write_deny)
        await self._index.add(f"{self._ns}.revoke", [iss, jti], until, now)

    async def active(self, now: float) -> list[Revocation]:
        """Every revocation still in force at ``now``; malformed index members are skipped.

        Raises :class:`~gateway_redis.RedisUnavailable`.
        """
        return [
            Revocation(iss, jti, until)
            for iss, jti, until in await self._index.pairs(f"{self._ns}.revocations", now)
            if isinstance(iss, str) and isinstance(jti, str)
        ]


@dataclass(frozen=True, slots=True)
class SubjectCutoff:
    """An active cut-off: tokens of ``sub`` issued at or before ``cutoff`` are refused
    until ``until`` (epoch seconds)."""

    sub: str
    cutoff: float
    until: float


class SubjectCutoffStore:
    """The per-subject cut-offs ("log out everywhere" for tokens) on ``client``, in one
    sorted set (every instance reloads it whole when its invalidation bus resyncs),
    ``<namespace>-subject-cutoffs``.

    Holds no state besides its key name; the client stays owned by its creator.
    """

    def __init__(self, client: RedisClient, namespace: str = "jwt") -> None:
        self._client = client
        self._ns = _check_namespace(namespace)
        self._index = _ExpiringIndex(client, client.key(f"{namespace}-subject-cutoffs"))

    async def cut(self, sub: str, cutoff: float, until: float, now: float) -> None:
        """Refuse ``sub``'s tokens issued at or before ``cutoff`` until ``until`` (epoch
        seconds; cut-offs ended by ``now`` leave the set); confirmed by a replica when
        the primary has one.

        Raises :class:`~gateway_redis.RedisUnavailable` (``reason="unconfirmed"`` when a
        replica did not acknowledge) and :class:`~gateway_redis.CommandError`.
        """
        await self._index.add(f"{self._ns}.revoke_subject", [sub, cutoff], until, now)

    async def active(self, now: float) -> list[SubjectCutoff]:
        """Every cut-off still in force at ``now``; malformed members are skipped.

        Raises :class:`~gateway_redis.RedisUnavailable`.
        """
        return [
            SubjectCutoff(sub, float(cutoff), until)
            for sub, cutoff, until in await self._index.pairs(f"{self._ns}.subject_cutoffs", now)
            if isinstance(sub, str) and isinstance(cutoff, (int, float))
        ]


class ClaimsStore:
    """Verified token claims (L2) at ``<namespace>:<digest>``, checked against
    ``revocations``.

    ``digest`` is the caller's (a hash of the validator's fingerprint and the token: no
    token ever appears in a key name).
    """

    def __init__(
        self, client: RedisClient, revocations: RevocationStore, namespace: str = "jwt"
    ) -> None:
        self._client = client
        self._revocations = revocations
        self._ns = _check_namespace(namespace)

    def key(self, digest: str) -> str:
        """The full key of the claims stored under ``digest``."""
        return self._client.key(f"{self._ns}:" + digest)

    async def get(self, digest: str) -> bytes | None:
        """The stored claims JSON, or None.

        Raises :class:`~gateway_redis.CacheUnavailable` when Redis cannot be asked and
        lets an error reply (WRONGTYPE...) through as
        :class:`~gateway_redis.CommandError`.
        """
        key = self.key(digest)
        raw: Any = await self._client.execute(f"{self._ns}.get", lambda r: r.get(key), miss=True)
        return raw if raw is None or type(raw) is bytes else bytes(raw)

    async def remove(self, digest: str) -> None:
        """Forget the claims stored under ``digest``; a confirmed write (it drops a verdict
        that may grant more than the source now does). Raises
        :class:`~gateway_redis.RedisUnavailable` (``reason="unconfirmed"`` when no replica
        acknowledged)."""
        key = self.key(digest)

        async def call(r: Redis) -> None:
            await r.delete(key)

        await self._client.confirmed(f"{self._ns}.invalidate", key, call)

    async def check(
        self,
        revocation: tuple[str, object] | None,
        store: tuple[str, bytes, int] | None,
    ) -> bool:
        """In one round trip: whether ``revocation`` (``(iss, jti)``) is denied, and store
        ``store`` (``(digest, claims JSON, ttl in ms)``) when given. Returns True when
        revoked (False when ``revocation`` is None).

        Raises :class:`~gateway_redis.RedisUnavailable` and
        :class:`~gateway_redis.CommandError`.
        """
        deny = self._revocations.deny_key(*revocation) if revocation is not None else None
        put = (self.key(store[0]), store[1], store[2]) if store is not None else None

        async def call(r: Redis) -> Any:
            pipe = r.pipeline(transaction=False)
            if deny is not None:
                pipe.exists(deny)
            if put is not None:
                pipe.set(put[0], put[1], px=put[2])
            return await pipe.execute()

        replies: Any = await self._client.execute(f"{self._ns}.check", call)
        return deny is not None and bool(replies and replies[0])


class PermissionStore:
    """Cached permission sets per (policy version, subject) and the policy version."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._version_key = client.key("rbac:policy-version")

    def key(self, version: int, subject: str) -> str:
        """The full key of ``subject``'s permissions under policy ``version``."""
        digest = hashlib.sha256(subject.encode("utf-8", "replace")).hexdigest()
        return self._client.key(f"rbac:{version}:{digest}")

    async def get(self, version: int, subject: str) -> bytes | None:
        """The stored permissions JSON, or None. Raises
        :class:`~gateway_redis.CacheUnavailable` and :class:`~gateway_redis.CommandError`."""
        key = self.key(version, subject)
        raw: Any = await self._client.execute("rbac.get", lambda r: r.get(key), miss=True)
        return raw if raw is None or type(raw) is bytes else bytes(raw)

    async def put(self, version: int, subject: str, data: str, ttl_ms: int) -> None:
        """Store ``data`` (permissions JSON) for ``ttl_ms`` milliseconds. Raises
        :class:`~gateway_redis.RedisUnavailable`."""
        key = self.key(version, subject)
        await self._client.execute("rbac.set", lambda r: r.set(key, data, px=ttl_ms))

    async def remove(self, version: int, subject: str) -> None:
        """Forget ``subject``'s permissions under ``version``; a confirmed write (removing
        permissions protects security). Raises :class:`~gateway_redis.RedisUnavailable`
        (``reason="unconfirmed"`` when no replica acknowledged)."""
        key = self.key(version, subject)

        async def call(r: Redis) -> None:
            await r.delete(key)

        await self._client.confirmed("rbac.invalidate", key, call)

    async def version(self) -> int:
        """The policy version in Redis (0 when unset or corrupt). Raises
        :class:`~gateway_redis.RedisUnavailable`."""
        key = self._version_key
        raw: Any = await self._client.execute("rbac.version", lambda r: r.get(key))
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            _log.warning(
                "corrupt policy version in Redis; using 0",
                extra=log_fields("rbac", "rbac_policy_version_corrupt"),
            )
            return 0

    async def bump_version(self) -> int:
        """Increment the policy version (sent at most once) and return the new one.
        Raises :class:`~gateway_redis.RedisUnavailable`."""
        key = self._version_key

        async def call(r: Redis) -> Any:
            pipe = r.pipeline(transaction=True)
            pipe.incr(key)
            pipe.pexpire(key, _VERSION_TTL_MS)
            return (await pipe.execute())[0]

        return int(await self._client.execute("rbac.bump", call, retry=False))

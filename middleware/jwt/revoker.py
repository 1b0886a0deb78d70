"""Revocation on every instance: of one token (by ``iss``, ``jti``) and of every token of a
subject issued up to a cut-off (:meth:`Revoker.revoke_subject`, "log out everywhere").

:class:`Revoker` is the part of :class:`~middleware.JWTAuthenticator` that writes, mirrors
and announces them. Each is applied on this instance first (its in-memory mirror, and the
L1 entries it concerns are dropped), then written to Redis as a confirmed write
(:meth:`RedisClient.confirmed <gateway_redis.RedisClient.confirmed>`: it fails closed with
``RedisUnavailable(reason="unconfirmed")``), then broadcast on the invalidation bus
(namespace ``jwt``: :class:`~middleware.jwt.revocation.TokenRevoked` and
:class:`~middleware.jwt.cutoff.SubjectRevoked` events) so every instance applies it at
once. When the bus resyncs (events may have been lost; a new instance starts) both mirrors
are reloaded from Redis (:class:`~gateway_redis.authstore.RevocationStore`,
:class:`~gateway_redis.authstore.SubjectCutoffStore`), so they survive restarts.

``namespace`` (default ``jwt``) names the bus namespace and the Redis keys; the API-key
layer (:mod:`middleware.apikeys`) runs its own :class:`Revoker` under ``apikey``.

A cut-off must last as long as a token issued before it can still be accepted: the
longest token lifetime (``max_token_lifetime``, ``exp - iat`` of any token the issuer
mints: the operator states it) plus the leeway. A token living longer than that,
issued before a cut-off, would be accepted again once the cut-off ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway_redis.authstore import RevocationStore, SubjectCutoffStore
from gateway_redis.client import RedisClient
from gateway_redis.localcache import LocalCache
from middleware._local import Invalidation
from middleware.jwt._verdict import Verified
from middleware.jwt.claims import TokenClaims
from middleware.jwt.cutoff import (
    MAX_SUBJECT_BYTES,
    CutoffMirror,
    SubjectRevoked,
    parse_subject_event,
)
from middleware.jwt.revocation import RevocationMirror, TokenRevoked, parse_revoke_event

__all__ = ["Revoker"]


class Revoker:
    """Token revocations and subject cut-offs for one authenticator: ``client`` (None: in
    process only), its ``bus``, the authenticator's ``l1`` (entries are dropped as they
    are revoked), its ``leeway``, ``max_token_lifetime`` and ``clock`` (epoch seconds);
    ``namespace`` names its bus events and Redis keys (default ``jwt``).

    ``revoked`` and ``cutoffs`` are the mirrors' dicts (one each for life): a hot path may
    read them directly.
    """

    def __init__(
        self,
        client: RedisClient | None,
        bus: Invalidation,
        l1: LocalCache[str, Verified],
        *,
        leeway: float,
        max_token_lifetime: float,
        clock: Callable[[], float],
        namespace: str = "jwt",
    ) -> None:
        self._ns = namespace
        self._bus = bus
        self._l1 = l1
        self._leeway = leeway
        self._lifetime = max_token_lifetime
        self._clock = clock
        self._mirror = RevocationMirror(clock)
        self._cutoff_mirror = CutoffMirror(clock)
        self.revoked = self._mirror.entries
        self.cutoffs = self._cutoff_mirror.entries
        self.denylist = RevocationStore(client, namespace) if client is not None else None
        self._cutoff_store = SubjectCutoffStore(client, namespace) if client is not None else None
        bus.on_event(namespace, self._on_event)
        bus.on_resync(self._reload)

    def refuses(self, claims: TokenClaims) -> bool:
        """Whether this instance knows ``claims`` to be revoked or cut off (no Redis)."""
        if claims.jti is not None and (claims.iss, claims.jti) in self.revoked:
            return True
        return bool(self.cutoffs) and self._cutoff_mirror.refuses(claims.sub, claims.iat)

    # -- by token ----------------------------------------------------------------------

    async def revoke(self, iss: str, jti: str, exp: float, now: float) -> None:
        """Revoke ``(iss, jti)`` (a token expiring at ``exp``) until ``exp + leeway``."""
        self.remember(iss, jti, exp)  # applies here even when the write below fails
        if self.denylist is not None:
            await self.denylist.revoke(iss, jti, exp + self._leeway, now)
        event: TokenRevoked = {"op": "revoke", "iss": iss, "jti": jti, "exp": exp}
        await self._bus.publish(self._ns, event)

    def remember(self, iss: str, jti: str, exp: float) -> None:
        """Mirror a revocation of a token expiring at ``exp`` until the end of its
        acceptance (``exp + leeway``) and drop any L1 entry it concerns."""
        self._remember_until(iss, jti, exp + self._leeway)

    def _remember_until(self, iss: str, jti: str, until: float) -> None:
        pair = self._mirror.add(iss, jti, until)
        self._l1.discard_where(lambda _k, entry: entry.revocation == pair)

    def on_revoked(self, callback: Callable[[TokenRevoked], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each token revocation (see the authenticator's)."""

        def on_event(event: Mapping[str, Any]) -> None:
            revoked = parse_revoke_event(event)
            if revoked is not None:
                callback(revoked)

        return self._bus.on_event(self._ns, on_event)

    # -- by subject --------------------------------------------------------------------

    async def revoke_subject(self, sub: str) -> float:
        """Refuse every token of ``sub`` issued up to now; returns the cut-off."""
        if not isinstance(sub, str) or not sub or len(sub.encode("utf-8")) > MAX_SUBJECT_BYTES:
            raise ValueError(f"sub must be a non-empty string of at most {MAX_SUBJECT_BYTES} bytes")
        now = self._clock()
        until = now + self._lifetime + self._leeway
        self._cut(sub, now, until)  # applies here even when the write below fails
        if self._cutoff_store is not None:
            await self._cutoff_store.cut(sub, now, until, now)
        event: SubjectRevoked = {"op": "revoke_subject", "sub": sub, "cutoff": now, "until": until}
        await self._bus.publish(self._ns, event)
        return now

    def _cut(self, sub: str, cutoff: float, until: float) -> None:
        if self._cutoff_mirror.add(sub, cutoff, until):
            cut = self.cutoffs[sub]
            self._l1.discard_where(lambda _k, entry: entry.sub == sub and entry.iat <= cut)

    def on_subject_revoked(self, callback: Callable[[SubjectRevoked], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each cut-off (see the authenticator's)."""

        def on_event(event: Mapping[str, Any]) -> None:
            cut = parse_subject_event(event)
            if cut is not None:
                callback(cut)

        return self._bus.on_event(self._ns, on_event)

    # -- bus ---------------------------------------------------------------------------

    def _on_event(self, event: Mapping[str, Any]) -> None:
        revoked = parse_revoke_event(event)
        if revoked is not None:
            self.remember(revoked["iss"], revoked["jti"], revoked["exp"])
            return
        cut = parse_subject_event(event)
        if cut is not None:
            self._cut(cut["sub"], cut["cutoff"], cut["until"])

    async def _reload(self) -> None:
        """Resync hook: reload every active revocation and cut-off from Redis."""
        now = self._clock()
        if self.denylist is not None:
            # The index holds each revocation's end already (exp + the writer's leeway).
            for revocation in await self.denylist.active(now):
                self._remember_until(revocation.iss, revocation.jti, revocation.until)
        if self._cutoff_store is not None:
            for cut in await self._cutoff_store.active(now):
                self._cut(cut.sub, cut.cutoff, cut.until)

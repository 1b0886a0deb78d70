"""Token revocations in process: the bus event that announces one and the mirror that
remembers them.

A revocation is by (``iss``, ``jti``) until the token's ``exp`` plus the verifier's leeway
(the end of the time the token is accepted). It is broadcast on the
invalidation channel (namespace ``jwt``) as a :class:`TokenRevoked` event, read by
:func:`parse_revoke_event` only. Every :class:`~middleware.JWTAuthenticator` keeps a
:class:`RevocationMirror` of the revocations it has heard of, so that a known-revoked
token stays rejected while Redis is down (or, in process-only mode, with no Redis at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

__all__ = ["RevocationMirror", "TokenRevoked", "parse_revoke_event"]


class TokenRevoked(TypedDict):
    """The bus event of a revocation: tokens with this ``iss`` and ``jti`` are revoked;
    ``exp`` (epoch seconds) is the token's, and each instance keeps the revocation until
    ``exp`` plus its leeway. Wire shape: ``{"op": "revoke", "iss", "jti", "exp"}``."""

    op: Literal["revoke"]
    iss: str
    jti: str
    exp: float


def parse_revoke_event(event: Mapping[str, Any]) -> TokenRevoked | None:
    """``event`` (a ``jwt`` event from the bus) as a :class:`TokenRevoked`, or None when it
    is not one this version understands (ignored): also when ``exp`` is not a finite
    number of seconds (a boolean, NaN, Infinity, or an integer past float range). Never
    raises: any publisher on the Redis channel can send anything."""
    if event.get("op") != "revoke":
        return None
    iss, jti, exp = event.get("iss"), event.get("jti"), event.get("exp")
    if not (isinstance(iss, str) and isinstance(jti, str)):
        return None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    try:
        end = float(exp)
    except OverflowError:
        return None
    if not math.isfinite(end):
        return None
    return {"op": "revoke", "iss": iss, "jti": jti, "exp": end}


class RevocationMirror:
    """The revocations one instance knows of: ``entries`` maps ``(iss, jti)`` to the epoch
    second the revocation ends (the token's ``exp`` plus the leeway: the caller adds it), in
    process memory.

    ``entries`` is one dict for the mirror's lifetime (pruned in place), so a hot path may
    hold it and test ``pair in entries`` without a method call. Expired entries are pruned
    whenever the dict has doubled since the last prune (at least 1024 entries), so it stays
    bounded by about twice the active revocations. ``clock`` gives epoch seconds.
    """

    __slots__ = ("_clock", "_prune_at", "entries")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.entries: dict[tuple[str, str], float] = {}
        self._clock = clock
        self._prune_at = 1024

    def add(self, iss: str, jti: str, until: float) -> tuple[str, str]:
        """Remember that ``(iss, jti)`` is revoked until ``until`` (a later end wins);
        returns the pair."""
        pair = (iss, jti)
        entries = self.entries
        if entries.get(pair, 0.0) < until:
            entries[pair] = until
        if len(entries) >= self._prune_at:
            now = self._clock()
            for key in [k for k, until in entries.items() if until <= now]:
                del entries[key]
            self._prune_at = max(1024, 2 * len(entries))
        return pair

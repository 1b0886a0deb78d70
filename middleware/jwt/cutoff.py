"""Per-subject cut-offs ("log out everywhere" for tokens): the bus event and the mirror.

A cut-off for a subject refuses every token of that ``sub`` issued at or before it
(``iat <= cutoff``). ``iat`` has whole-second resolution, so a token issued in the same
second as the cut-off, even just after it, is refused too. A token without ``iat`` (read
as ``iat`` 0: only possible when the verifier does not require it) is refused while its
subject has a cut-off: nothing shows it was issued after. A cut-off lasts ``until`` (the
cut-off plus the longest token lifetime plus the leeway: by then every token it refuses
has expired anyway). It is broadcast on the invalidation channel (namespace ``jwt``) as a
:class:`SubjectRevoked` event, read by :func:`parse_subject_event` only, and every
:class:`~middleware.JWTAuthenticator` keeps a :class:`CutoffMirror` of the cut-offs it
has heard of (reloaded from Redis when the bus resyncs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

__all__ = ["MAX_SUBJECT_BYTES", "CutoffMirror", "SubjectRevoked", "parse_subject_event"]

MAX_SUBJECT_BYTES = 1024  # a longer subject cannot be given a cut-off (ValueError)


class SubjectRevoked(TypedDict):
    """The bus event of a cut-off: tokens of ``sub`` with ``iat <= cutoff`` are refused
    until ``until`` (epoch seconds). Wire shape: ``{"op": "revoke_subject", "sub",
    "cutoff", "until"}``."""

    op: Literal["revoke_subject"]
    sub: str
    cutoff: float
    until: float


def parse_subject_event(event: Mapping[str, Any]) -> SubjectRevoked | None:
    """``event`` (a ``jwt`` event from the bus) as a :class:`SubjectRevoked`, or None when
    it is not one (ignored)."""
    if event.get("op") != "revoke_subject":
        return None
    sub, cutoff, until = event.get("sub"), event.get("cutoff"), event.get("until")
    if (
        isinstance(sub, str)
        and len(sub) <= MAX_SUBJECT_BYTES
        and isinstance(cutoff, (int, float))
        and not isinstance(cutoff, bool)
        and isinstance(until, (int, float))
        and not isinstance(until, bool)
    ):
        return {"op": "revoke_subject", "sub": sub, "cutoff": float(cutoff), "until": float(until)}
    return None


class CutoffMirror:
    """The cut-offs one instance knows of: ``entries`` maps a subject to its cut-off
    (epoch seconds), in process memory.

    ``entries`` is one dict for the mirror's lifetime (pruned in place), so a hot path may
    hold it and test ``entries.get(sub)`` without a method call. A later cut-off of a
    subject replaces an earlier one (and lasts at least as long). Ended cut-offs are pruned
    whenever the dict has doubled since the last prune (at least 1024 entries), so it stays
    bounded by about twice the active cut-offs. ``clock`` gives epoch seconds.
    """

    __slots__ = ("_clock", "_prune_at", "_until", "entries")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.entries: dict[str, float] = {}
        self._until: dict[str, float] = {}
        self._clock = clock
        self._prune_at = 1024

    def add(self, sub: str, cutoff: float, until: float) -> bool:
        """Refuse ``sub``'s tokens issued at or before ``cutoff`` until ``until``; False
        (nothing changed) when it has ended or a later cut-off is known already."""
        if until <= self._clock():
            return False
        known = self.entries.get(sub)
        if known is not None and known >= cutoff and self._until[sub] >= until:
            return False
        self.entries[sub] = max(cutoff, known if known is not None else cutoff)
        self._until[sub] = max(until, self._until.get(sub, until))
        if len(self.entries) >= self._prune_at:
            now = self._clock()
            for sub_ in [s for s, end in self._until.items() if end <= now]:
                del self.entries[sub_], self._until[sub_]
            self._prune_at = max(1024, 2 * len(self.entries))
        return True

    def refuses(self, sub: str, iat: int) -> bool:
        """Whether a token of ``sub`` issued at ``iat`` is refused now."""
        cutoff = self.entries.get(sub)
        return cutoff is not None and iat <= cutoff and self._until[sub] > self._clock()

"""Which responses are cached, and how: :class:`CacheRule`.

A rule names a path pattern (the RBAC rules' language: ``{name}`` or ``*`` is one segment,
a final ``**`` any remainder), the fresh lifetime, the tags of its entries (templates over
the pattern's ``{name}`` segments: ``"item:{item}"``), the request headers the response
varies on, whether it is public (shared by every caller) and its stale bounds. Only ``GET``
and ``HEAD`` are ever cached (``HEAD`` shares the ``GET`` entry).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from middleware._paths import PathPattern

__all__ = ["CacheRule"]

_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name


def _seconds(name: str, value: object, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero) or value > 30 * 86_400:
        raise ValueError(f"{name} must be in {'[' if zero else '('}0, 30 days], got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, init=False)
class CacheRule:
    """Cache ``GET``/``HEAD`` responses of ``path`` for ``ttl`` seconds.

    ``tags``: templates of the entry's tags, each ``{name}`` replaced by that segment of
    the path (``CacheRule("/orders/{id}", ttl=30, tags=["orders:{id}"])``); invalidate
    with :meth:`ResponseCache.invalidate_tags`. ``vary``: request header names that select
    different responses (the response's own ``Vary`` must list no others, else it is not
    cached). ``public=True``: one entry for every caller (say so only for responses that do
    not depend on who asks); otherwise entries are per subject, token roles and RBAC
    policy version, and requests without an authenticated subject are not cached.
    ``stale_while_revalidate``: seconds after expiry during which the stale response is
    served while one request refreshes it in the background; ``stale_if_error``: seconds
    after expiry during which it is served when recomputing fails (an exception or a
    5xx). Raises ``ValueError``.
    """

    path: str
    ttl: float
    tags: tuple[str, ...]
    vary: tuple[str, ...]
    public: bool
    stale_while_revalidate: float
    stale_if_error: float
    _pattern: PathPattern = field(repr=False, compare=False)
    _names: tuple[tuple[int, str], ...] = field(repr=False, compare=False)

    def __init__(
        self,
        path: str,
        *,
        ttl: float,
        tags: Iterable[str] = (),
        vary: Iterable[str] = (),
        public: bool = False,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
    ) -> None:
        pattern = PathPattern(path)
        segments = path.strip("/").split("/") if path != "/" else []
        names = tuple(
            (i, s[1:-1]) for i, s in enumerate(segments) if s.startswith("{") and s.endswith("}")
        )
        known = {n for _, n in names}
        if isinstance(tags, str) or isinstance(vary, str):
            raise ValueError("tags and vary must be collections of strings, not one string")
        tag_list = tuple(tags)
        for tag in tag_list:
            if not isinstance(tag, str) or not tag:
                raise ValueError(f"tags must be non-empty strings, got {tag!r}")
            unknown = set(_TEMPLATE_FIELD.findall(tag)) - known
            if unknown:
                raise ValueError(f"tag {tag!r} names {sorted(unknown)} not in path {path!r}")
        vary_list = tuple(sorted({v.lower() for v in vary if isinstance(v, str)}))
        if len(vary_list) != len(set(vary)) or not all(_TOKEN.match(v) for v in vary_list):
            raise ValueError(f"vary must be distinct header names, got {vary!r}")
        if not isinstance(public, bool):
            raise ValueError("public must be a bool")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "ttl", _seconds("ttl", ttl, zero=False))
        object.__setattr__(self, "tags", tag_list)
        object.__setattr__(self, "vary", vary_list)
        object.__setattr__(self, "public", public)
        swr = _seconds("stale_while_revalidate", stale_while_revalidate, zero=True)
        object.__setattr__(self, "stale_while_revalidate", swr)
        sie = _seconds("stale_if_error", stale_if_error, zero=True)
        object.__setattr__(self, "stale_if_error", sie)
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_names", names)

    @property
    def stale(self) -> float:
        """How long an entry is kept after it expires (the larger stale bound)."""
        return max(self.stale_while_revalidate, self.stale_if_error)

    def matches(self, path: str) -> bool:
        """Whether the rule applies to ``path`` (a ``GET``/``HEAD`` request's)."""
        return self._pattern.matches(path)

    def tags_for(self, path: str) -> tuple[str, ...]:
        """The entry tags of a matching ``path``: the templates filled in."""
        if not self.tags:
            return ()
        parts = path.strip("/").split("/")
        values = {name: parts[i] for i, name in self._names if i < len(parts)}
        return tuple(
            _TEMPLATE_FIELD.sub(lambda m: values.get(m.group(1), ""), t) for t in self.tags
        )

"""Path matching shared by the middleware (private).

Two pattern languages, both on the path the app routes on (``root_path`` removed):

* :class:`PathSet` (public paths, fail-closed paths): ``"/health"`` matches exactly;
  ``"/static/*"`` matches ``/static`` and everything below it.
* :class:`PathPattern` (RBAC rules): segments separated by ``/``; ``{name}`` or ``*``
  matches exactly one non-empty segment, a final ``**`` matches any remainder (including
  nothing). ``/orders/{id}/items`` matches ``/orders/42/items``.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

__all__ = ["PathPattern", "PathSet", "route_path"]


def route_path(scope: Scope) -> str:
    """``scope["path"]`` without the ``root_path`` prefix (what Starlette routes on)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class PathSet:
    """A set of exact paths and ``prefix/*`` patterns; validated (``ValueError``)."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        if isinstance(patterns, str):
            raise ValueError("give a sequence of path patterns, not one string")
        exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.startswith("/"):
                raise ValueError(f"path patterns must start with '/', got {pattern!r}")
            if pattern.endswith("/*"):
                base = pattern[:-2]
                exact.add(base or "/")
                prefixes.append(base + "/")
            elif "*" in pattern:
                raise ValueError(f"'*' is only allowed as a final '/*' segment: {pattern!r}")
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._exact)

    def matches(self, path: str) -> bool:
        """Whether ``path`` is in the set."""
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))


class PathPattern:
    """A segment pattern such as ``/orders/{id}`` or ``/admin/**``; validated (``ValueError``)."""

    __slots__ = ("_literal", "_rest", "_segments", "pattern")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ValueError(f"path patterns must start with '/', got {pattern!r}")
        segments = pattern.strip("/").split("/") if pattern != "/" else []
        rest = bool(segments) and segments[-1] == "**"
        if rest:
            segments = segments[:-1]
        parsed: list[str | None] = []
        for segment in segments:
            if segment == "*" or (segment.startswith("{") and segment.endswith("}")):
                parsed.append(None)
            elif "*" in segment or "{" in segment or "}" in segment:
                raise ValueError(f"bad segment {segment!r} in path pattern {pattern!r}")
            else:
                parsed.append(segment)
        self.pattern = pattern
        self._segments = tuple(parsed)
        self._rest = rest
        # A pattern without parameters or ``**`` is one string comparison (hot path).
        literal = not rest and None not in parsed
        self._literal = "/".join(s for s in parsed if s is not None) if literal else None

    def matches(self, path: str) -> bool:
        """Whether ``path`` matches the pattern (a trailing slash is ignored)."""
        stripped = path.strip("/")
        if self._literal is not None:
            return stripped == self._literal
        parts = stripped.split("/") if stripped else []
        wanted = self._segments
        if len(parts) < len(wanted) or (not self._rest and len(parts) != len(wanted)):
            return False
        for want, part in zip(wanted, parts[: len(wanted)], strict=True):
            if want is None:
                if not part:
                    return False
            elif want != part:
                return False
        return True

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"

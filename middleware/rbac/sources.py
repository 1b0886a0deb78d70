"""Where permissions come from: the :class:`PermissionSource` seam, two sources, and how
granted permissions are matched.

A :class:`PermissionSource` maps a verified principal (:class:`TokenClaims`) to permission
strings such as ``"orders:read"``. Granted permissions may use wildcards: ``"orders:*"``
grants every permission under ``orders:`` and ``"*"`` grants everything
(:func:`permission_granted`). :class:`~middleware.rbac.permissions.PermissionCache` caches
the answers of a cacheable source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from middleware.jwt.claims import TokenClaims

__all__ = [
    "CallablePermissions",
    "PermissionSource",
    "StaticRolePermissions",
    "check_permission",
    "permission_granted",
]


def permission_granted(granted: Collection[str], required: str) -> bool:
    """Whether ``granted`` (which may hold ``"x:*"`` and ``"*"``) covers ``required``."""
    if required in granted or "*" in granted:
        return True
    parts = required.split(":")
    return any(":".join(parts[:i]) + ":*" in granted for i in range(1, len(parts)))


def check_permission(value: object) -> str:
    """``value`` if it is a valid permission string; raises ``ValueError`` otherwise."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"permissions must be non-empty strings without spaces: {value!r}")
    return value


class PermissionSource(Protocol):
    """Something that knows a principal's permissions.

    ``cacheable`` is True when the answer depends only on ``claims.sub`` (and the policy
    version), so it may be cached per subject; False when it is computed from the token
    itself (then it is recomputed on every request, which must be cheap).
    """

    @property
    def cacheable(self) -> bool:
        """Whether results may be cached by subject."""
        ...

    async def permissions(self, claims: TokenClaims) -> Collection[str]:
        """The permissions of the principal; raise to signal the source is unavailable."""
        ...

    # Optional: ``permissions_now(claims) -> Collection[str]``, the same answer computed
    # synchronously without I/O (an in-process table). A source that is not cacheable but
    # has it is asked through it on the hot path, with no await and no span.


class StaticRolePermissions:
    """Permissions from a fixed role -> permissions map; roles come from a token claim.

    ``claim`` names the claim holding the roles (a list of strings, or one string);
    ``"roles"`` by default. Unknown roles grant nothing. Not cacheable: a dictionary lookup
    is cheaper than any cache, and two tokens of one subject may carry different roles.
    """

    cacheable = False

    def __init__(self, roles: Mapping[str, Iterable[str]], *, claim: str = "roles") -> None:
        if not isinstance(claim, str) or not claim:
            raise ValueError("claim must be a non-empty string")
        table: dict[str, frozenset[str]] = {}
        for role, granted in roles.items():
            if not isinstance(role, str) or not role or isinstance(granted, str):
                raise ValueError("roles must map role names to collections of permissions")
            table[role] = frozenset(check_permission(p) for p in granted)
        self._roles = table
        self._claim = claim
        self._memo: dict[Any, frozenset[str]] = {}

    async def permissions(self, claims: TokenClaims) -> frozenset[str]:
        """The union of the permissions of the principal's roles."""
        return self.permissions_now(claims)

    def permissions_now(self, claims: TokenClaims) -> frozenset[str]:
        """:meth:`permissions`, synchronously (memoized per distinct set of roles)."""
        roles: Any = claims.roles if self._claim == "roles" else claims.raw.get(self._claim, ())
        try:
            found = self._memo.get(roles)
        except TypeError:  # an unhashable claim value: grants nothing, computed anyway
            return self._union(roles)
        if found is None:
            found = self._union(roles)
            if len(self._memo) >= 1024:
                self._memo.clear()
            self._memo[roles] = found
        return found

    def _union(self, roles: Any) -> frozenset[str]:
        if isinstance(roles, str):
            roles = (roles,)
        granted: set[str] = set()
        for role in roles if isinstance(roles, (tuple, list)) else ():
            found = self._roles.get(role) if isinstance(role, str) else None
            if found:
                granted |= found
        return frozenset(granted)


class CallablePermissions:
    """Permissions from an async callable ``lookup(subject) -> iterable of permissions``.

    For a database or a policy service. ``cacheable`` (default True) lets
    :class:`PermissionCache` keep the result per subject.
    """

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Iterable[str]]],
        *,
        cacheable: bool = True,
    ) -> None:
        if not callable(lookup):
            raise ValueError("lookup must be an async callable")
        self._lookup = lookup
        self.cacheable = bool(cacheable)

    async def permissions(self, claims: TokenClaims) -> frozenset[str]:
        """``lookup(claims.sub)`` as a frozenset."""
        return frozenset(check_permission(p) for p in await self._lookup(claims.sub))

"""RBAC: permission sources, their two-tier cache, and the rule-checking middleware.

:mod:`~middleware.rbac.sources`: :class:`PermissionSource` and its implementations,
wildcard matching; :mod:`~middleware.rbac.permissions`: :class:`PermissionCache` (L1 + L2,
policy-versioned; ``client=None`` for in-process only);
:mod:`~middleware.rbac.middleware`: :class:`Rule`, :class:`RBACMiddleware`,
:class:`PermissionContext` and :func:`require_permissions`.
"""

from __future__ import annotations

from middleware.rbac.middleware import PermissionContext, RBACMiddleware, Rule, require_permissions
from middleware.rbac.permissions import PermissionCache
from middleware.rbac.sources import (
    CallablePermissions,
    PermissionSource,
    StaticRolePermissions,
    permission_granted,
)

__all__ = [
    "CallablePermissions",
    "PermissionCache",
    "PermissionContext",
    "PermissionSource",
    "RBACMiddleware",
    "Rule",
    "StaticRolePermissions",
    "permission_granted",
    "require_permissions",
]

"""RBAC: permission sources, their two-tier cache, and the rule-checking middleware."""

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

"""gateway-redis middleware: the ASGI side (JWT, RBAC, sessions, WebSocket bridge)."""

from __future__ import annotations

__all__: list[str] = []

"""The WebSocket bridge: Redis pub/sub channels to browsers, behind a channel policy."""

from __future__ import annotations

from middleware.websocket.bridge import (
    CloseCode,
    SessionPermissions,
    WebSocketBridge,
    WebSocketLimits,
    WebSocketStats,
)
from middleware.websocket.channels import ChannelPolicy, ChannelRule, Principal, StaticPrincipal

__all__ = [
    "ChannelPolicy",
    "ChannelRule",
    "CloseCode",
    "Principal",
    "SessionPermissions",
    "StaticPrincipal",
    "WebSocketBridge",
    "WebSocketLimits",
    "WebSocketStats",
]

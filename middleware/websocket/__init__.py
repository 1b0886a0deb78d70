"""The WebSocket bridge: Redis pub/sub channels to browsers, behind a channel policy.

:mod:`~middleware.websocket.bridge` (:class:`WebSocketBridge`),
:mod:`~middleware.websocket.limits` (its limits and stats) and
:mod:`~middleware.websocket.channels` (:class:`ChannelPolicy`, :class:`ChannelRule`,
principals); private: ``_auth`` (handshake checks), ``_connection`` (one socket's outbox,
writer and reader), ``_fanout`` (one hub subscription per channel), ``_protocol`` (the JSON
frames), ``_presence`` (channel presence: joins, leaves, heartbeats, join/leave frames),
``_reauthorize`` (live subscriptions re-checked when permissions change),
``_refresh`` (live token refresh), ``_registry`` (open sockets and what ends them) and
``_requests`` (what each client frame does); :mod:`~middleware.websocket.server_api`
(:class:`SocketControl`: disconnect, unsubscribe and subscribe a user's sockets on every
instance).
"""

from __future__ import annotations

from middleware.websocket.bridge import (
    CloseCode,
    SessionPermissions,
    WebSocketBridge,
    WebSocketLimits,
    WebSocketStats,
)
from middleware.websocket.channels import ChannelPolicy, ChannelRule, Principal, StaticPrincipal
from middleware.websocket.server_api import SocketControl

__all__ = [
    "ChannelPolicy",
    "ChannelRule",
    "CloseCode",
    "Principal",
    "SessionPermissions",
    "SocketControl",
    "StaticPrincipal",
    "WebSocketBridge",
    "WebSocketLimits",
    "WebSocketStats",
]

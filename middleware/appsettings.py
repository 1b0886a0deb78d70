"""The value objects :class:`~middleware.app.Gateway` is configured with:
:class:`SessionSettings` (server-side sessions) and :class:`WebSocketSettings` (the
WebSocket endpoint). Frozen, keyword-only, validated with ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from gateway_redis.sessions.store import MAX_PER_USER
from gateway_redis.sessions.tags import check_tag_key
from middleware._paths import PathSet
from middleware.sessions.cookie import TOKEN_CHARS, SessionCookie
from middleware.sessions.middleware import DEFAULT_COOKIE
from middleware.websocket.bridge import SessionPermissions, WebSocketLimits
from middleware.websocket.channels import ChannelPolicy

__all__ = ["SessionSettings", "WebSocketSettings"]


def path_patterns(name: str, value: Iterable[str]) -> tuple[str, ...]:
    """``value`` as a tuple of path patterns (exact or ``/prefix/*``); ``ValueError``
    naming ``name`` for a single string or a bad pattern."""
    if isinstance(value, str):
        raise ValueError(f"{name} must be a sequence of paths, not one string")
    paths = tuple(value)
    PathSet(paths)  # validates every pattern
    return paths


def _seconds(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSettings:
    """Server-side sessions for :class:`~middleware.app.Gateway`: the store's lifetimes
    and how the session middleware carries and guards them.

    ``default_ttl`` (seconds, default 24 h) is a new session's absolute lifetime;
    ``idle_timeout`` (seconds, None = no idle limit) ends a session not touched for that
    long. ``max_per_user`` (default 100, at most 100,000) caps one user's sessions: a login
    beyond it ends that user's oldest session (its sockets close with 4403). ``tag_key``
    (str or bytes, at least 32 bytes, shared by every instance; default None: random tags)
    keeps a user's session keys in one hash slot (see :mod:`gateway_redis.sessions.tags`;
    changing it logs everyone out); it never shows in ``repr``. ``cookie``
    (None for header-only) and ``header_name`` say where session IDs travel (at least
    one). ``refresh_interval`` (seconds) bounds how often a session is
    touched. ``on_unavailable`` (``"error"``: 503, or ``"anonymous"``) is what requests with
    a session ID get while Redis is down; ``required_paths`` always get ``"error"``,
    ``optional_paths`` always ``"anonymous"`` (exact or ``/prefix/*``). See
    :class:`~middleware.sessions.SessionMiddleware`. Raises ``ValueError`` for bad values.
    """

    default_ttl: float = 86400.0
    idle_timeout: float | None = None
    max_per_user: int = MAX_PER_USER
    tag_key: str | bytes | None = field(default=None, repr=False)
    cookie: SessionCookie | None = DEFAULT_COOKIE
    header_name: str | None = None
    refresh_interval: float = 60.0
    on_unavailable: Literal["error", "anonymous"] = "error"
    required_paths: tuple[str, ...] = ()
    optional_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _seconds("default_ttl", self.default_ttl)
        _seconds("idle_timeout", self.idle_timeout, optional=True)
        _seconds("refresh_interval", self.refresh_interval)
        cap = self.max_per_user
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 100_000:
            raise ValueError(f"max_per_user must be an int from 1 to 100000, got {cap!r}")
        check_tag_key("tag_key", self.tag_key)
        if self.refresh_interval > 86400:
            raise ValueError("refresh_interval must be at most 86400 seconds")
        if self.cookie is not None and not isinstance(self.cookie, SessionCookie):
            raise ValueError("cookie must be a SessionCookie or None")
        name = self.header_name
        if name is not None and (not isinstance(name, str) or not name or set(name) - TOKEN_CHARS):
            raise ValueError(f"header_name must be a header name, got {name!r}")
        if self.cookie is None and name is None:
            raise ValueError("configure a cookie, a header_name or both")
        if self.on_unavailable not in ("error", "anonymous"):
            raise ValueError("on_unavailable must be 'error' or 'anonymous'")
        for attribute in ("required_paths", "optional_paths"):
            paths = path_patterns(attribute, getattr(self, attribute))
            object.__setattr__(self, attribute, paths)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketSettings:
    """The WebSocket endpoint of :class:`~middleware.app.Gateway` (see
    :class:`~middleware.websocket.WebSocketBridge`).

    ``policy`` says who may subscribe and publish to which channels. ``limits`` bounds
    frames, rates, queues and sockets. ``allowed_origins`` are origins allowed to connect
    besides the server's own (``"https://app.example.com"``); ``origin_check`` is
    ``"always"`` or ``"cookie"`` (only cookie-authenticated handshakes are checked).
    ``session_permissions(session)`` resolves the permissions of cookie-session principals
    (default: none). Raises ``ValueError`` for bad values (the origins when the
    :class:`~middleware.app.Gateway` is built).
    """

    policy: ChannelPolicy
    limits: WebSocketLimits = field(default_factory=WebSocketLimits)
    allowed_origins: tuple[str, ...] = ()
    origin_check: Literal["always", "cookie"] = "always"
    session_permissions: SessionPermissions | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.policy, ChannelPolicy):
            raise ValueError("policy must be a ChannelPolicy")
        if not isinstance(self.limits, WebSocketLimits):
            raise ValueError("limits must be WebSocketLimits")
        if isinstance(self.allowed_origins, str):
            raise ValueError("allowed_origins must be a collection of origins, not one string")
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        if self.origin_check not in ("always", "cookie"):
            raise ValueError("origin_check must be 'always' or 'cookie'")
        if self.session_permissions is not None and not callable(self.session_permissions):
            raise ValueError("session_permissions must be an async callable")

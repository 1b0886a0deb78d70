"""How :class:`~middleware.app.Gateway` turns its components into middleware layers.

:func:`add_layers` adds, innermost first, the response cache, (FastAPI applications)
:class:`~middleware.ratelimit.RateLimitFieldsMiddleware`, the rate limits, CSRF protection, the
authentication and authorization layers (one fused :class:`GatewayMiddleware` or the
separate session, JWT and RBAC layers) and the API-key layer, each present when the
Gateway has its component. :func:`validator_of` and :func:`source_of` read the Gateway's
``jwt`` and ``permissions`` arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from starlette.applications import Starlette
from starlette.middleware import Middleware

from gateway_redis import RedisClient
from middleware.apikeys.authenticator import APIKeyAuthenticator
from middleware.apikeys.middleware import APIKeyMiddleware
from middleware.appsettings import SessionSettings
from middleware.csrf import CSRFMiddleware, CSRFSettings
from middleware.errors import ErrorHandler
from middleware.gateway import GatewayMiddleware
from middleware.jwt.authenticator import JWTAuthenticator
from middleware.jwt.middleware import JWTMiddleware
from middleware.jwt.settings import JWTSettings
from middleware.jwt.validator import JWTValidator, TokenValidator
from middleware.ratelimit.fields import RateLimitFieldsMiddleware
from middleware.ratelimit.rules import RateLimitRule
from middleware.ratelimit.settings import RateLimitSettings, install_rate_limits
from middleware.rbac.middleware import RBACMiddleware, Rule
from middleware.rbac.permissions import PermissionCache
from middleware.rbac.sources import PermissionSource, StaticRolePermissions
from middleware.responsecache import ResponseCache, ResponseCacheMiddleware
from middleware.sessions.manager import SessionManager
from middleware.sessions.middleware import SessionMiddleware

__all__ = ["Components", "add_layers", "source_of", "validator_of"]


@dataclass(frozen=True)
class Components:
    """What a Gateway built (None: that layer is off)."""

    client: RedisClient
    authenticator: JWTAuthenticator
    permissions: PermissionCache | None
    sessions: SessionManager | None
    session_settings: SessionSettings | None
    response_cache: ResponseCache | None
    api_keys: APIKeyAuthenticator | None


def add_layers(
    app: Starlette,
    c: Components,
    *,
    public: tuple[str, ...],
    fail_closed: tuple[str, ...],
    rules: tuple[Rule, ...],
    deny_unmatched: bool,
    token_cookie: str | None,
    on_error: ErrorHandler,
    fused: bool,
    csrf: CSRFSettings | None,
    rate_limits: RateLimitSettings | Sequence[RateLimitRule] = (),
) -> None:
    """Add the layers of ``c`` to ``app`` (see :meth:`Gateway.install
    <middleware.app.Gateway.install>` for the order and the arguments)."""
    jwt = Middleware(
        JWTMiddleware,
        authenticator=c.authenticator,
        public_paths=public,
        cookie_name=token_cookie,
        fail_closed_paths=fail_closed,
        on_error=on_error,
    )
    rbac = None
    if c.permissions is not None:
        rbac = Middleware(
            RBACMiddleware,
            permissions=c.permissions,
            rules=rules,
            deny_unmatched=deny_unmatched,
            on_error=on_error,
        )
    sessions = None
    settings = c.session_settings
    if c.sessions is not None and settings is not None:
        sessions = Middleware(
            SessionMiddleware,
            sessions=c.sessions,
            cookie=settings.cookie,
            header_name=settings.header_name,
            refresh_interval=settings.refresh_interval,
            on_unavailable=settings.on_unavailable,
            required_paths=settings.required_paths,
            optional_paths=settings.optional_paths,
            on_error=on_error,
        )
    if c.response_cache is not None:  # innermost: after JWT, RBAC (and CSRF)
        app.add_middleware(ResponseCacheMiddleware, cache=c.response_cache, routes=app)
    if _is_fastapi(app):  # the RateLimit dependency's fields, whatever an endpoint returns
        app.add_middleware(RateLimitFieldsMiddleware)
    # Rate limits: outside the cache, inside CSRF and authentication (added next).
    install_rate_limits(app, c.client, rate_limits, on_error)
    cookies = [token_cookie] if token_cookie else []
    if c.sessions is not None and settings is not None and settings.cookie is not None:
        cookies.append(cast("str", settings.cookie.name))
    if csrf is not None and cookies:
        # Innermost (added first): it reads the session the session layer loaded.
        app.add_middleware(CSRFMiddleware, settings=csrf, cookie_names=cookies, on_error=on_error)
    if fused:
        app.add_middleware(
            GatewayMiddleware,
            jwt=jwt,
            rbac=rbac,
            sessions=sessions,
        )
    else:
        # add_middleware wraps: the last added runs first (sessions, JWT, RBAC).
        for layer in (rbac, jwt, sessions):
            if layer is not None:
                app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    if c.api_keys is not None:  # outermost of the auth layers: runs first
        app.add_middleware(
            APIKeyMiddleware,
            authenticator=c.api_keys,
            public_paths=public,
            fail_closed_paths=fail_closed,
            on_error=on_error,
        )


def _is_fastapi(app: Starlette) -> bool:
    """Whether ``app`` is a FastAPI application (FastAPI is optional: imported already
    when it is one)."""
    fastapi = sys.modules.get("fastapi")
    return fastapi is not None and isinstance(app, fastapi.FastAPI)


def validator_of(jwt: object) -> TokenValidator:
    if isinstance(jwt, JWTSettings):
        return JWTValidator(jwt)
    if callable(getattr(jwt, "validate", None)) and isinstance(
        getattr(jwt, "fingerprint", None), str
    ):
        return cast("TokenValidator", jwt)
    raise ValueError("jwt must be JWTSettings or a TokenValidator")


def source_of(permissions: object) -> PermissionSource | None:
    if permissions is None:
        return None
    if isinstance(permissions, Mapping):
        return StaticRolePermissions(permissions)
    if callable(getattr(permissions, "permissions", None)) and hasattr(permissions, "cacheable"):
        return cast("PermissionSource", permissions)
    raise ValueError("permissions must be a PermissionSource, a role mapping or None")

"""gateway-redis middleware: the ASGI side (JWT, RBAC, sessions, WebSocket bridge).

Pure ASGI middleware for Starlette and FastAPI, built only on :mod:`gateway_redis`'s public
names, with two-tier caches (in process, then Redis) kept coherent across instances by the
client's invalidation bus (:attr:`gateway_redis.RedisClient.invalidation`).

- :mod:`~middleware.app`: :class:`Gateway`, the composition root: builds the components
  below on one client, gives the application its lifespan and installs the middleware and
  the WebSocket endpoint in one call; :mod:`~middleware.appsettings`:
  :class:`SessionSettings`, :class:`WebSocketSettings`.
- :mod:`~middleware.jwt`, :mod:`~middleware.rbac`, :mod:`~middleware.sessions`,
  :mod:`~middleware.websocket`: one subpackage per concern (component, middleware, values).
- :mod:`~middleware.apikeys`: API keys and opaque tokens (:class:`APIKeySettings`,
  :class:`APIKeyAuthenticator`, :class:`APIKeyMiddleware`) on the JWT layer's caches and
  revocation.
- :mod:`~middleware.gateway`: :class:`GatewayMiddleware`, sessions + JWT + RBAC in one
  layer with the same behaviour. It serves a warm request with less CPU than the three
  separate layers; for the measured ratio see the hot-path benchmark
  (``benchmarks/results/report.md``, "1. Gateway hot path").
- :mod:`~middleware.responsecache`: :class:`ResponseCache` and its middleware (cached
  ``GET``/``HEAD`` responses, tag invalidation on every instance, ``ETag``/``304``).
- :mod:`~middleware.csrf`: :class:`CSRFMiddleware` (origin checks and a session-bound
  token for unsafe requests; installed by the Gateway), :mod:`~middleware.proxies`:
  :class:`TrustedProxies` (the client address behind trusted reverse proxies);
  :mod:`~middleware.ratelimit`: :class:`RateLimitMiddleware`, :class:`RateLimitRule`
  (rate limits exact across instances; installed by the Gateway's ``rate_limits``),
  :func:`rate_limited` (the same per Starlette endpoint).
- :mod:`~middleware.errors` (the error tree and the client answers),
  :mod:`~middleware.authentication` (the JWT and API-key layers' authentication step),
  :mod:`~middleware.scope` (typed scope accessors), :mod:`~middleware.telemetry`;
  :mod:`~middleware.fastapi`: FastAPI dependencies (imported on demand, so FastAPI stays
  optional); :mod:`~middleware.uvicorn_protocol`: uvicorn's WebSocket protocol keeping
  less per open socket (``--ws middleware.uvicorn_protocol:LeanWebSocketProtocol``).
"""

from __future__ import annotations

from middleware.apikeys.authenticator import APIKeyAuthenticator
from middleware.apikeys.middleware import APIKeyMiddleware
from middleware.apikeys.records import KeyDigester, KeyLookup, KeyRecord, Presented, StaticKeys
from middleware.apikeys.settings import APIKeySettings
from middleware.app import Gateway
from middleware.appsettings import SessionSettings, WebSocketSettings
from middleware.authentication import CountedAuthentication, CredentialAuthenticator
from middleware.csrf import CSRFMiddleware, CSRFSettings, csrf_fields, csrf_token
from middleware.errors import (
    ErrorAnswer,
    ErrorHandler,
    InvalidToken,
    MiddlewareError,
    NotAuthenticated,
    PermissionDenied,
    ServiceUnavailable,
    ValidatorUnavailable,
    default_error_response,
    error_answer,
)
from middleware.gateway import GatewayMiddleware
from middleware.jwt.authenticator import Authentication, JWTAuthenticator
from middleware.jwt.claims import TokenClaims
from middleware.jwt.cutoff import SubjectRevoked, parse_subject_event
from middleware.jwt.middleware import GatewayUser, JWTMiddleware
from middleware.jwt.revocation import TokenRevoked, parse_revoke_event
from middleware.jwt.settings import JWTSettings
from middleware.jwt.validator import JWTValidator, TokenValidator
from middleware.proxies import TrustedProxies
from middleware.ratelimit import (
    IdentityFunction,
    RateLimiter,
    RateLimitFieldsMiddleware,
    RateLimitMiddleware,
    RateLimitRule,
    RateLimitSettings,
    install_rate_limits,
    rate_limited,
)
from middleware.rbac.middleware import PermissionContext, RBACMiddleware, Rule, require_permissions
from middleware.rbac.permissions import PermissionCache
from middleware.rbac.sources import (
    CallablePermissions,
    PermissionSource,
    StaticRolePermissions,
    permission_granted,
)
from middleware.responsecache import (
    CacheRule,
    ResponseCache,
    ResponseCacheMiddleware,
    ResponseCacheSettings,
    cache_response,
)
from middleware.scope import (
    get_auth_kind,
    get_claims,
    get_claims_or_none,
    get_permission_context,
    get_session,
    get_session_handle,
)
from middleware.sessions.backend import SessionBackend
from middleware.sessions.cookie import SessionCookie
from middleware.sessions.handle import SessionData, SessionHandle
from middleware.sessions.manager import SessionManager
from middleware.sessions.middleware import SessionMiddleware
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
    "APIKeyAuthenticator",
    "APIKeyMiddleware",
    "APIKeySettings",
    "Authentication",
    "CSRFMiddleware",
    "CSRFSettings",
    "CacheRule",
    "CallablePermissions",
    "ChannelPolicy",
    "ChannelRule",
    "CloseCode",
    "CountedAuthentication",
    "CredentialAuthenticator",
    "ErrorAnswer",
    "ErrorHandler",
    "Gateway",
    "GatewayMiddleware",
    "GatewayUser",
    "IdentityFunction",
    "InvalidToken",
    "JWTAuthenticator",
    "JWTMiddleware",
    "JWTSettings",
    "JWTValidator",
    "KeyDigester",
    "KeyLookup",
    "KeyRecord",
    "MiddlewareError",
    "NotAuthenticated",
    "PermissionCache",
    "PermissionContext",
    "PermissionDenied",
    "PermissionSource",
    "Presented",
    "Principal",
    "RBACMiddleware",
    "RateLimitFieldsMiddleware",
    "RateLimitMiddleware",
    "RateLimitRule",
    "RateLimitSettings",
    "RateLimiter",
    "ResponseCache",
    "ResponseCacheMiddleware",
    "ResponseCacheSettings",
    "Rule",
    "ServiceUnavailable",
    "SessionBackend",
    "SessionCookie",
    "SessionData",
    "SessionHandle",
    "SessionManager",
    "SessionMiddleware",
    "SessionPermissions",
    "SessionSettings",
    "SocketControl",
    "StaticKeys",
    "StaticPrincipal",
    "StaticRolePermissions",
    "SubjectRevoked",
    "TokenClaims",
    "TokenRevoked",
    "TokenValidator",
    "TrustedProxies",
    "ValidatorUnavailable",
    "WebSocketBridge",
    "WebSocketLimits",
    "WebSocketSettings",
    "WebSocketStats",
    "cache_response",
    "csrf_fields",
    "csrf_token",
    "default_error_response",
    "error_answer",
    "get_auth_kind",
    "get_claims",
    "get_claims_or_none",
    "get_permission_context",
    "get_session",
    "get_session_handle",
    "install_rate_limits",
    "parse_revoke_event",
    "parse_subject_event",
    "permission_granted",
    "rate_limited",
    "require_permissions",
]

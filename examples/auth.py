"""The example gateway's token keys, demo users and its ``/auth`` routes.

:class:`GatewayKeys` reads the ``GATEWAY_JWT_*`` variables (see :mod:`examples.gateway`)
and signs the demo tokens. :func:`install_auth` adds ``POST /auth/login`` (a token in the
body and a new session cookie; attempts throttled by :mod:`examples.throttle` before the
password is checked, the client address from trusted proxies only), ``POST /auth/logout``
(revokes the presented token and the session's token, deletes the session) and
``POST /auth/logout-all`` (with a token: ``revoke_subject`` and every session of the
subject). They read the app's state set by :func:`examples.gateway.create_app`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from examples.bodies import BodyTooLarge, form_or_json, too_large
from examples.throttle import LoginThrottle
from gateway_redis import RedisUnavailable
from middleware import (
    JWTAuthenticator,
    JWTSettings,
    ServiceUnavailable,
    csrf_fields,
    csrf_token,
    get_claims_or_none,
)
from middleware.fastapi import Claims, SessionHandleDep

__all__ = [
    "DEMO_USERS",
    "MAX_LOGIN_BYTES",
    "ROLES",
    "GatewayKeys",
    "default_algorithm",
    "error",
    "install_auth",
    "login_credentials",
]

log = logging.getLogger("examples.gateway")

ROLES = {
    "admin": ("admin:read", "channels:publish", "profile:read"),
    "user": ("profile:read",),
}
# Demo only: (password, roles). A real gateway asks its identity provider.
DEMO_USERS = {
    "alice": ("alice-password", ("admin",)),
    "bob": ("bob-password", ("user",)),
}
# A login body is a username and a password: anything longer is refused before parsing.
MAX_LOGIN_BYTES = 16 * 1024


class GatewayKeys:
    """Verification settings plus the signing key (None when only a public key is known)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        secret = env.get("GATEWAY_JWT_SECRET") or None
        public_path = env.get("GATEWAY_JWT_PUBLIC_KEY") or None
        private_path = env.get("GATEWAY_JWT_PRIVATE_KEY") or None
        if secret and (public_path or private_path):
            raise ValueError("set GATEWAY_JWT_SECRET or a key pair, not both")
        signing: Any = None
        if secret:
            verify: str | bytes = secret
            default_algs = ["HS256"]
            signing = secret
        elif public_path or private_path:
            if private_path:
                with open(private_path, "rb") as f:
                    signing = serialization.load_pem_private_key(f.read(), password=None)
            if public_path:
                with open(public_path, "rb") as f:
                    verify = f.read()
            else:
                verify = signing.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            assert isinstance(verify, bytes)
            default_algs = [default_algorithm(serialization.load_pem_public_key(verify))]
        else:
            log.warning("no GATEWAY_JWT_SECRET or key set: using a random secret for this process")
            signing = verify = secrets.token_urlsafe(48)
            default_algs = ["HS256"]
        algs = env.get("GATEWAY_JWT_ALGORITHMS") or ",".join(default_algs)
        self.settings = JWTSettings(
            algorithms=tuple(a.strip() for a in algs.split(",") if a.strip()),
            key=verify,
            issuer=env.get("GATEWAY_JWT_ISSUER") or "https://gateway.example",
            audience=env.get("GATEWAY_JWT_AUDIENCE") or "gateway-api",
            leeway=float(env.get("GATEWAY_JWT_LEEWAY") or 0),
            cache_key=env.get("GATEWAY_CACHE_KEY") or None,
        )
        self.signing_key = signing
        self.algorithm = self.settings.algorithms[0]
        self.ttl = int(env.get("GATEWAY_JWT_TTL") or 900)
        if not 10 <= self.ttl <= 86400:
            raise ValueError("GATEWAY_JWT_TTL must be 10..86400 seconds")

    def issue(self, subject: str, roles: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        """A signed token for ``subject`` and its claims."""
        now = int(time.time())
        audience = self.settings.audience
        claims: dict[str, Any] = {
            "sub": subject,
            "roles": list(roles),
            "iat": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            "iss": self.settings.issuer,
            "aud": audience if isinstance(audience, str) else audience[0],
        }
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm), claims


def default_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name, "ES256")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("unsupported public key type")


def error(status: int, code: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def login_credentials(request: Request) -> tuple[str, str] | None:
    """The username and password of a login body (JSON or form), None when absent or
    malformed. Raises :class:`BodyTooLarge` past :data:`MAX_LOGIN_BYTES`."""
    try:
        data = await form_or_json(request, MAX_LOGIN_BYTES)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, Mapping):
        return None
    username, password = data.get("username"), data.get("password")
    if isinstance(username, str) and isinstance(password, str):
        return username, password
    return None


def install_auth(app: FastAPI) -> None:
    """Add the ``/auth`` routes to ``app`` (its state holds the keys, throttle, proxies,
    authenticator and sessions)."""
    state = app.state

    @app.post("/auth/login")
    async def login(request: Request, handle: SessionHandleDep) -> JSONResponse:
        """Demo login: a token in the body and a new session cookie."""
        keys: GatewayKeys = state.keys
        if keys.signing_key is None:
            return error(501, "not_implemented", "Tokens come from the identity provider.")
        try:
            credentials = await login_credentials(request)
        except BodyTooLarge as exc:
            return too_large(exc.limit)
        if credentials is None:
            return error(400, "bad_request", "Send username and password.")
        username, password = credentials
        throttle: LoginThrottle = state.throttle
        address = state.proxies.client_address(request) or "unknown"
        try:  # counted before the password is checked: concurrent guesses each count
            wait = await throttle.attempt(username, address)
        except RedisUnavailable:
            raise ServiceUnavailable("login_throttle_unavailable") from None
        if wait is not None:
            return error(
                429, "too_many_attempts", "Too many login attempts; try later.",
                **{"Retry-After": str(wait)},
            )  # fmt: skip
        user = DEMO_USERS.get(username)
        expected = user[0] if user is not None else secrets.token_hex(16)
        if not hmac.compare_digest(password.encode(), expected.encode()) or user is None:
            return error(
                401,
                "invalid_credentials",
                "Wrong username or password.",
                **{"WWW-Authenticate": "Bearer"},
            )
        with contextlib.suppress(RedisUnavailable):
            await throttle.succeeded(username, address)
        token, claims = keys.issue(username, user[1])
        metadata = {"username": username, "roles": list(user[1]), "jti": claims["jti"],
                    "token_exp": claims["exp"], "login_at": claims["iat"],
                    **csrf_fields()}  # fmt: skip
        await handle.create(username, metadata)
        body = {"access_token": token, "token_type": "bearer", "expires_in": keys.ttl,
                "csrf_token": csrf_token(request)}  # fmt: skip
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @app.post("/auth/logout")
    async def logout(request: Request, handle: SessionHandleDep) -> dict[str, str]:
        """Revoke the presented token and the session's token; delete the session."""
        authenticator: JWTAuthenticator = state.authenticator
        claims = get_claims_or_none(request)
        session = handle.session
        try:
            if claims is not None and claims.jti is not None:
                await authenticator.revoke(claims)
            if session is not None:
                jti, exp = session.metadata.get("jti"), session.metadata.get("token_exp")
                if isinstance(jti, str) and isinstance(exp, int) and jti != (claims and claims.jti):
                    issuer = state.keys.settings.issuer
                    await authenticator.revoke((issuer, jti), expires_at=exp)
        except RedisUnavailable:
            # Revoked on this instance already; the client should retry to reach the others.
            raise ServiceUnavailable("revocation_unavailable") from None
        await handle.delete()  # raises ServiceUnavailable (-> 503) during an outage
        return {"status": "logged_out"}

    @app.post("/auth/logout-all")
    async def logout_all(claims: Claims) -> dict[str, Any]:
        """Log out everywhere: every session of the token's subject is deleted and every
        token of it issued up to now is refused on every instance (its sockets close)."""
        authenticator: JWTAuthenticator = state.authenticator
        try:
            await authenticator.revoke_subject(claims.sub)
            ended = await state.sessions.delete_user_sessions(claims.sub)
        except RedisUnavailable:
            # Cut off on this instance already; the client should retry to reach the others.
            raise ServiceUnavailable("revocation_unavailable") from None
        return {"status": "logged_out_everywhere", "sessions": ended}

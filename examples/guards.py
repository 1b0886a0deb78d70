"""The example's guards of its login and cookie routes, configured from the environment.

- **Login throttle** (:mod:`examples.throttle`): attempts are counted in Redis, shared by
  every instance, before the password is checked. Past ``GATEWAY_LOGIN_LIMIT`` attempts
  (default 5) per (username, client address) within ``GATEWAY_LOGIN_WINDOW`` seconds
  (default 60; a success clears it), or past ``GATEWAY_LOGIN_ACCOUNT_LIMIT`` attempts
  (default 20) per username from any address within ``GATEWAY_LOGIN_ACCOUNT_WINDOW``
  seconds (default 300; failures only: a success gives its attempt back), login answers
  429 with ``Retry-After``.
- **Client address** (:class:`middleware.TrustedProxies`): the TCP peer, unless it is in
  ``GATEWAY_TRUSTED_PROXIES`` (comma-separated addresses or networks, default none: no
  proxy header is ever read); then the rightmost untrusted entry of ``X-Forwarded-For``
  (``GATEWAY_TRUSTED_PROXY_HEADER=forwarded``: of ``Forwarded``). Run uvicorn with
  ``--no-proxy-headers`` (``scripts/gateway`` does unless ``FORWARDED_ALLOW_IPS`` is set):
  its default trusts ``X-Forwarded-For`` from 127.0.0.1 and rewrites the peer before the
  application can tell.
- **CSRF** (:mod:`middleware.csrf`, on): unsafe requests from other sites get 403
  (``GATEWAY_CSRF_ALLOWED_ORIGINS``, comma-separated origins, allows more); those that
  carry the session cookie and no bearer token need the session's token in
  ``X-CSRF-Token`` (``csrf_token`` in the answers of ``/auth/login`` and ``/api/session``).
  ``/auth/login`` gets the origin check only: there is no session to hold a token yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from examples.throttle import LoginThrottle
from gateway_redis import RedisClient
from middleware import CSRFSettings, TrustedProxies

__all__ = ["LoginGuards", "int_env", "list_env"]


def int_env(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """The integer ``env[name]`` (``default`` when unset), within ``low..high``;
    ``ValueError`` naming the variable otherwise."""
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low}..{high}, got {value}")
    return value


def list_env(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """The comma-separated items of ``env[name]``, stripped (empty when unset)."""
    return tuple(item.strip() for item in (env.get(name) or "").split(",") if item.strip())


def _proxies(env: Mapping[str, str]) -> TrustedProxies:
    raw = (env.get("GATEWAY_TRUSTED_PROXY_HEADER") or "x-forwarded-for").strip().lower()
    if raw not in ("x-forwarded-for", "forwarded"):
        raise ValueError(
            f"GATEWAY_TRUSTED_PROXY_HEADER must be x-forwarded-for or forwarded, got {raw!r}"
        )
    header: Literal["x-forwarded-for", "forwarded"] = (
        "forwarded" if raw == "forwarded" else "x-forwarded-for"
    )
    try:
        return TrustedProxies(list_env(env, "GATEWAY_TRUSTED_PROXIES"), header=header)
    except ValueError as exc:
        raise ValueError(f"GATEWAY_TRUSTED_PROXIES: {exc}") from None


def _csrf(env: Mapping[str, str]) -> CSRFSettings:
    try:
        return CSRFSettings(
            allowed_origins=list_env(env, "GATEWAY_CSRF_ALLOWED_ORIGINS"),
            token_exempt_paths=("/auth/login",),
        )
    except ValueError as exc:
        raise ValueError(f"GATEWAY_CSRF_ALLOWED_ORIGINS: {exc}") from None


@dataclass(frozen=True, slots=True)
class LoginGuards:
    """The login throttle, the trusted proxies and the CSRF settings of the example."""

    throttle: LoginThrottle
    proxies: TrustedProxies
    csrf: CSRFSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str], client: RedisClient) -> LoginGuards:
        """Read the variables of the module docstring; ``ValueError`` naming a bad one."""
        throttle = LoginThrottle(
            client,
            limit=int_env(env, "GATEWAY_LOGIN_LIMIT", 5, 1, 1000),
            window=int_env(env, "GATEWAY_LOGIN_WINDOW", 60, 1, 86400),
            account_limit=int_env(env, "GATEWAY_LOGIN_ACCOUNT_LIMIT", 20, 1, 100000),
            account_window=int_env(env, "GATEWAY_LOGIN_ACCOUNT_WINDOW", 300, 1, 86400),
        )
        return cls(throttle=throttle, proxies=_proxies(env), csrf=_csrf(env))

"""Cross-site request forgery protection for cookie-session routes: :class:`CSRFMiddleware`.

A browser attaches cookies to requests that other sites make it send (a form posted from
``evil.example``). Following OWASP's CSRF cheat sheet, every request with an unsafe method
(anything but GET, HEAD, OPTIONS, TRACE) passes two checks, in this order:

1. **Where it comes from** (also for routes without a session, such as a login form: login
   CSRF signs the victim in as the attacker). ``Sec-Fetch-Site`` (fetch metadata, sent by
   current browsers) decides when present: ``same-origin`` and ``none`` (typed by the user)
   pass; ``same-site`` and ``cross-site`` pass only when ``Origin`` is one of
   ``allowed_origins``. Without it, ``Origin`` decides: the server's own origin or an
   allowed one passes, anything else (``null`` included) is refused, and no ``Origin`` at
   all passes (not a browser: a request without cookies proves nothing, and one with them
   still needs the token below).
2. **A session-bound token** (synchronizer token pattern) when the request carries the
   session cookie and a session was found: the header ``X-CSRF-Token`` must equal the token
   stored in the session (:data:`CSRF_SESSION_KEY` of its metadata), compared in constant
   time. :func:`csrf_token` returns it (made when missing; :func:`csrf_fields` makes one to
   store with a new session at login); send it to the page (a response field) and have the
   page send it back. A new session (login) gets a new token. Routes in
   ``token_exempt_paths`` (a login route) get only the first check.

Requests with ``Authorization: Bearer ...`` skip both: a browser never attaches a bearer
token by itself, and a page of another site can only add that header through a CORS
preflight the server accepts. (``Basic`` credentials, which browsers do replay, are not
exempt.) Likewise requests the API-key layer authenticated (an ``X-API-Key`` header, or
the configured ``Authorization`` scheme): browsers never add those by themselves. A
session ID carried in a custom header is not ambient either: without the session cookie
only the origin check applies.

The server's own origin is the ``Host`` header with the ASGI scheme. Behind a proxy that
terminates TLS or rewrites ``Host``, either have the server take scheme and host from the
proxy's headers (uvicorn ``--proxy-headers --forwarded-allow-ips=<proxy>``) or list the
public origin in ``allowed_origins``; browsers that send ``Sec-Fetch-Site`` pass either way.
Refusals go through ``on_error`` as :class:`~middleware.errors.PermissionDenied` (403;
reason ``csrf_origin`` or ``csrf_token`` in logs only).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from middleware._paths import PathSet, route_path
from middleware.errors import ErrorHandler, PermissionDenied, default_error_response
from middleware.scope import API_KEY_KEY, SESSION_KEY, get_session_handle
from middleware.sessions.cookie import TOKEN_CHARS

# CSRF_SESSION_KEY (by its module path) is the session metadata field holding the token.
__all__ = ["CSRFMiddleware", "CSRFSettings", "csrf_fields", "csrf_token"]

CSRF_SESSION_KEY = "csrf_token"

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MAX_TOKEN = 128  # a longer header value is refused before comparing
_DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


def _parse_origin(value: str) -> Origin | None:
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


@dataclass(frozen=True, slots=True, kw_only=True)
class CSRFSettings:
    """How :class:`CSRFMiddleware` checks unsafe requests (see the module docstring).

    ``allowed_origins`` are other origins whose pages may send unsafe requests
    (``"https://app.example.com"``; exact scheme, host and port). ``header_name`` carries
    the token. ``token_exempt_paths`` (exact or ``/prefix/*``) get the origin check only:
    routes that start a session, such as login. Raises ``ValueError`` for bad values.
    """

    allowed_origins: tuple[str, ...] = ()
    header_name: str = "X-CSRF-Token"
    token_exempt_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.allowed_origins, str):
            raise ValueError("allowed_origins must be a collection of origins, not one string")
        origins = tuple(self.allowed_origins)
        for origin in origins:
            if not isinstance(origin, str) or _parse_origin(origin) is None:
                raise ValueError(
                    f"allowed_origins: not an origin (scheme://host[:port]): {origin!r}"
                )
        object.__setattr__(self, "allowed_origins", origins)
        name = self.header_name
        if not isinstance(name, str) or not name or set(name) - TOKEN_CHARS:
            raise ValueError(f"header_name must be a header name, got {name!r}")
        if isinstance(self.token_exempt_paths, str):
            raise ValueError("token_exempt_paths must be a sequence of paths, not one string")
        paths = tuple(self.token_exempt_paths)
        PathSet(paths)  # validates every pattern
        object.__setattr__(self, "token_exempt_paths", paths)


def csrf_fields() -> dict[str, str]:
    """A new CSRF token as session metadata: merge it into the metadata of
    ``handle.create(...)`` at login, so the token is stored with the new session (no second
    write); :func:`csrf_token` then returns it."""
    return {CSRF_SESSION_KEY: secrets.token_urlsafe(32)}


def csrf_token(conn: HTTPConnection | Scope) -> str:
    """The CSRF token of the request's session, made (and saved with the session, before
    the response starts) when it has none yet. Hand it to the page that sends unsafe
    requests. Raises ``LookupError`` without a session and ``RuntimeError`` without the
    session middleware."""
    handle = get_session_handle(conn)
    if handle.session is None:
        raise LookupError("there is no session: a CSRF token belongs to one")
    token = handle.data.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = csrf_fields()[CSRF_SESSION_KEY]
        handle.data[CSRF_SESSION_KEY] = token
    return token


class CSRFMiddleware:
    """Refuses cross-site unsafe requests and cookie-session requests without the session's
    token; see the module docstring. Runs inside the session middleware (it reads the
    loaded session). ``cookie_names`` are the cookies that carry credentials (the session
    cookie, a token cookie). Raises ``ValueError`` for bad arguments."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: CSRFSettings | None = None,
        cookie_names: Iterable[str] = ("__Host-session",),
        on_error: ErrorHandler = default_error_response,
    ) -> None:
        settings = CSRFSettings() if settings is None else settings
        if not isinstance(settings, CSRFSettings):
            raise ValueError("settings must be CSRFSettings or None")
        if isinstance(cookie_names, str):
            raise ValueError("cookie_names must be a collection of names, not one string")
        names = frozenset(cookie_names)
        if not names or any(not isinstance(n, str) or not n for n in names):
            raise ValueError("cookie_names must be non-empty cookie names")
        self.app = app
        self.settings = settings
        self._cookies = names
        self._allowed = frozenset(o for o in map(_parse_origin, settings.allowed_origins) if o)
        self._header = settings.header_name.lower().encode()
        self._exempt = PathSet(settings.token_exempt_paths)
        self._on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        reason = self.refusal(scope)
        if reason is None:
            await self.app(scope, receive, send)
            return
        await self._on_error(scope, PermissionDenied(reason))(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why an unsafe HTTP request is refused (``"csrf_origin"``, ``"csrf_token"``), or
        None when it may go on."""
        if API_KEY_KEY in scope:
            return None  # authenticated by an API key: not ambient
        origins: list[bytes] = []
        fetch_site = cookie = token = host = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    return None  # not ambient: cannot be forged across sites
            elif name == b"origin":
                origins.append(value)
            elif name == b"sec-fetch-site":
                fetch_site = value
            elif name == b"cookie":
                cookie = value if cookie is None else cookie + b"; " + value
            elif name == self._header:
                token = value
            elif name == b"host":
                host = value
        if not self._from_allowed_site(scope, origins, fetch_site, host):
            return "csrf_origin"
        if cookie is not None and self._needs_token(scope, cookie):
            expected = self._expected(scope)
            if expected is None or token is None or len(token) > _MAX_TOKEN:
                return "csrf_token"
            if not hmac.compare_digest(token, expected):
                return "csrf_token"
        return None

    def _from_allowed_site(
        self, scope: Scope, origins: list[bytes], fetch_site: bytes | None, host: bytes | None
    ) -> bool:
        if len(origins) > 1:
            return False
        origin = _parse_origin(origins[0].decode("latin-1")) if origins else None
        if fetch_site is not None:
            site = fetch_site.strip().lower()
            if site in (b"same-origin", b"none"):
                return True
            return origin is not None and origin in self._allowed
        if not origins:
            return True
        if origin is None:
            return False  # "null" (sandboxed, privacy-redirected) or garbage
        if origin in self._allowed:
            return True
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        own = _parse_origin(f"{scheme}://{host.decode('latin-1')}") if host else None
        return origin == own

    def _needs_token(self, scope: Scope, cookie: bytes) -> bool:
        if self._exempt and self._exempt.matches(route_path(scope)):
            return False
        names = {part.split(b"=", 1)[0].strip().decode("latin-1") for part in cookie.split(b";")}
        if names.isdisjoint(self._cookies):
            return False
        # A token only protects a session: with the cookie but none found, the request is
        # anonymous (and the origin check has run).
        return scope.get(SESSION_KEY) is not None and _session_of(scope) is not None

    @staticmethod
    def _expected(scope: Scope) -> bytes | None:
        session: Any = _session_of(scope)
        token = session.metadata.get(CSRF_SESSION_KEY) if session is not None else None
        return token.encode() if isinstance(token, str) and token else None


def _session_of(scope: Scope) -> Any:
    return get_session_handle(scope).session

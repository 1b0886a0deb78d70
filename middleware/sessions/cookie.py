"""How the session cookie is written: :class:`SessionCookie`, and the RFC 7230 token charset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TOKEN_CHARS", "SessionCookie"]

TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
"""The characters of an RFC 7230 ``token``: what a cookie or header name may contain."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCookie:
    """How the session cookie is written. ``name=None`` picks ``__Host-session`` when the
    browser allows that prefix (``secure``, ``path="/"``, no ``domain``), else ``session``.
    ``samesite`` is ``"lax"``, ``"strict"`` or ``"none"`` (needs ``secure``)."""

    name: str | None = None
    domain: str | None = None
    path: str = "/"
    secure: bool = True
    httponly: bool = True
    samesite: Literal["lax", "strict", "none"] = "lax"

    def __post_init__(self) -> None:
        host_ok = self.secure and self.path == "/" and self.domain is None
        if self.name is None:
            object.__setattr__(self, "name", "__Host-session" if host_ok else "session")
        name = self.name
        if not isinstance(name, str) or not name or not set(name) <= TOKEN_CHARS:
            raise ValueError(f"cookie name must be a non-empty token, got {name!r}")
        if name.startswith("__Host-") and not host_ok:
            raise ValueError("__Host- cookies need secure=True, path='/' and no domain")
        if name.startswith("__Secure-") and not self.secure:
            raise ValueError("__Secure- cookies need secure=True")
        if self.samesite not in ("lax", "strict", "none"):
            raise ValueError("samesite must be 'lax', 'strict' or 'none'")
        if self.samesite == "none" and not self.secure:
            raise ValueError("SameSite=None cookies need secure=True")
        if not isinstance(self.path, str) or not self.path.startswith("/") or ";" in self.path:
            raise ValueError("path must start with '/' and contain no ';'")
        if self.domain is not None and (not self.domain or ";" in self.domain):
            raise ValueError("domain must be a non-empty string without ';'")

    def header(self, value: str, max_age: int) -> str:
        """A ``Set-Cookie`` value (``max_age`` 0 deletes the cookie)."""
        parts = [f"{self.name}={value}", f"Path={self.path}", f"Max-Age={max_age}"]
        if max_age == 0:
            parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if self.secure:
            parts.append("Secure")
        if self.httponly:
            parts.append("HttpOnly")
        parts.append(f"SameSite={self.samesite.capitalize()}")
        return "; ".join(parts)

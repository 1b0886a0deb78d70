"""Verified token claims and the strict JSON they are read from (no Redis, no ASGI).

PyJWT accepts what RFC 8259 leaves open; we do not: duplicate member names raise
:class:`DuplicateName`, ``NaN``/``Infinity`` are rejected, and ``exp``/``nbf``/``iat`` must be
integers in [0, 2**53). :class:`TokenClaims` is the immutable result every other layer uses,
with a compact JSON form for the verdict cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from middleware.errors import InvalidToken

__all__ = [
    "DuplicateName",
    "TokenClaims",
    "build_claims",
    "check_time_claims",
    "strict_json_object",
]

_TIME_CLAIMS = ("exp", "nbf", "iat")
# NumericDate values outside [0, 2**53) are nonsense and break arithmetic in other languages.
_MAX_NUMERIC_DATE = 2**53 - 1


class DuplicateName(ValueError):
    """A JSON object names the same member twice (``args[0]`` is the name)."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise DuplicateName(name)
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_object(data: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object; duplicate names raise `DuplicateName`."""
    value = json.loads(
        data.decode("utf-8"),
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
    )
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def check_time_claims(payload: Mapping[str, Any]) -> None:
    for name in _TIME_CLAIMS:
        if name not in payload:
            continue
        value = payload[name]
        # bool is an int subclass; floats and strings are what PyJWT would silently int().
        if type(value) is not int or not 0 <= value <= _MAX_NUMERIC_DATE:
            raise InvalidToken("bad_claim_type")


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidToken("bad_claim_type")
    return tuple(value)


def build_claims(payload: Mapping[str, Any]) -> TokenClaims:
    """Turn a verified payload into `TokenClaims`; wrong shapes raise `InvalidToken`."""
    check_time_claims(payload)
    if "exp" not in payload:
        raise InvalidToken("missing_claim")
    iss = payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidToken("missing_claim" if iss in (None, "") else "bad_claim_type")
    sub = payload.get("sub")
    if sub is None:
        sub = ""
    elif not isinstance(sub, str):
        raise InvalidToken("bad_claim_type")
    aud_value = payload.get("aud")
    if aud_value is None:
        raise InvalidToken("missing_claim")
    aud = (aud_value,) if isinstance(aud_value, str) else _str_list(aud_value)
    jti = payload.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise InvalidToken("bad_claim_type")
    roles = _str_list(payload["roles"]) if payload.get("roles") is not None else ()
    scope = payload.get("scope")
    if scope is None:
        scope = payload.get("scp")
    if scope is None:
        scopes: tuple[str, ...] = ()
    elif isinstance(scope, str):
        scopes = tuple(scope.split())
    else:
        scopes = _str_list(scope)
    return TokenClaims(
        sub=sub,
        iss=iss,
        aud=aud,
        exp=payload["exp"],
        iat=payload.get("iat", 0),
        nbf=payload.get("nbf"),
        jti=jti,
        roles=roles,
        scopes=scopes,
        raw=_freeze(dict(payload)),
    )


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of a token, immutable and safe to share between requests.

    `exp`, `iat` and `nbf` are integer seconds since the epoch. `iat` is 0 and `sub` is ""
    only when the verifier was configured not to require them. `roles` comes from a `roles`
    list of strings; `scopes` from a space-separated `scope` string or else an `scp` list
    (or string). `raw` is a read-only deep view of every claim (lists become tuples).
    """

    sub: str
    iss: str
    aud: tuple[str, ...]
    exp: int
    iat: int
    nbf: int | None
    jti: str | None
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    raw: Mapping[str, Any] = field(hash=False)

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON of the raw claims, for storing in a cache."""
        return json.dumps(self.raw, separators=(",", ":"), default=_thaw).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> TokenClaims:
        """Rebuild claims serialised by `to_json`; raises `ValueError` on corrupt input.

        The result compares equal to the original. It does not re-check `exp` or `nbf`
        against the clock: callers serving from a cache must do that themselves.
        """
        try:
            payload = strict_json_object(bytes(data))
            return build_claims(payload)
        except InvalidToken as exc:
            raise ValueError(f"corrupt claims: {exc.reason}") from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"corrupt claims: {type(exc).__name__}") from None

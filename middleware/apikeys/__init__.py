"""API keys and opaque tokens: the same two-tier cache, revocation and invalidation as JWTs.

:mod:`~middleware.apikeys.records` (:class:`KeyRecord`, :class:`Presented`,
:class:`KeyDigester`, :class:`StaticKeys`, the :data:`KeyLookup` signature) and
:mod:`~middleware.apikeys.settings` (:class:`APIKeySettings`) use neither Redis nor ASGI;
:mod:`~middleware.apikeys.authenticator` (:class:`APIKeyAuthenticator`: L1, sealed L2,
revocation, invalidation, on the JWT layer's pieces under the namespace ``apikey``) and
:mod:`~middleware.apikeys.middleware` (:class:`APIKeyMiddleware`, run before the JWT
layer) build on them. ``Gateway(..., api_keys=APIKeySettings(...))`` wires them.
"""

from __future__ import annotations

from middleware.apikeys.authenticator import APIKeyAuthenticator
from middleware.apikeys.middleware import APIKeyMiddleware
from middleware.apikeys.records import KeyDigester, KeyLookup, KeyRecord, Presented, StaticKeys
from middleware.apikeys.settings import APIKeySettings

__all__ = [
    "APIKeyAuthenticator",
    "APIKeyMiddleware",
    "APIKeySettings",
    "KeyDigester",
    "KeyLookup",
    "KeyRecord",
    "Presented",
    "StaticKeys",
]

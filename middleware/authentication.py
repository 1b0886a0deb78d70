"""Authenticating a credential past L1, as the JWT and API-key layers both do:
:class:`CountedAuthentication`.

Both layers answer a request in L1 themselves (no await, no span) and hand every other
credential to their authenticator through one of these, which counts the tier in
``gateway.cache.lookups`` (``l1``, ``l2``, ``miss`` and ``invalid`` under the layer's
cache name), traces the lookup when tracing is on (a span named for the layer, with
``gateway.cache.result``, ``gateway.degraded`` and, on a refusal, ``gateway.reason``) and
translates the authenticator's errors into the middleware's: an invalid credential
becomes :class:`~middleware.errors.NotAuthenticated` (401), an unreachable validator or
lookup :class:`~middleware.errors.ServiceUnavailable` (503). The credential itself never
reaches a span or a metric.
"""

from __future__ import annotations

from typing import Protocol

from opentelemetry.trace import StatusCode

from gateway_redis import telemetry
from gateway_redis.telemetry import Tally
from middleware.errors import (
    InvalidToken,
    NotAuthenticated,
    ServiceUnavailable,
    ValidatorUnavailable,
)
from middleware.jwt.authenticator import Authentication

__all__ = ["CountedAuthentication", "CredentialAuthenticator"]

# Authentication.source -> the gateway.cache.result it is counted and traced as.
_TIER = {"l1": "l1", "l2": "l2", "validator": "miss"}


class CredentialAuthenticator(Protocol):
    """What :class:`CountedAuthentication` calls: a JWT or API-key authenticator."""

    async def authenticate(self, credential: str, /) -> Authentication:
        """The claims of ``credential``; raises ``InvalidToken`` or
        ``ValidatorUnavailable``."""


class CountedAuthentication:
    """Authenticate with counts and a span for the layer whose lookups are counted as
    ``cache`` (``"jwt"``, ``"apikey"``); the span is named ``span_name`` and its error
    status reads ``invalid`` or ``unavailable``. See the module docstring."""

    __slots__ = ("_invalid", "_span_name", "_tallies", "_unavailable")

    def __init__(self, cache: str, *, span_name: str, invalid: str, unavailable: str) -> None:
        self._tallies = {
            source: telemetry.lookup_tally(cache, result)
            for source, result in (*_TIER.items(), ("invalid", "invalid"))
        }
        self._span_name = span_name
        self._invalid = invalid
        self._unavailable = unavailable

    @property
    def l1(self) -> Tally:
        """The tally of L1 hits, which the layer counts itself on its warm path."""
        return self._tallies["l1"]

    async def __call__(
        self, authenticator: CredentialAuthenticator, credential: str
    ) -> Authentication:
        """The authentication of ``credential``. Raises :class:`NotAuthenticated` (with the
        authenticator's reason) and :class:`ServiceUnavailable`
        (``validator_unavailable``)."""
        tallies = self._tallies
        if not telemetry.tracing_enabled():
            try:
                result = await authenticator.authenticate(credential)
            except InvalidToken as exc:
                tallies["invalid"].value += 1
                raise NotAuthenticated(exc.reason) from None
            except ValidatorUnavailable:
                raise ServiceUnavailable("validator_unavailable") from None
            tallies[result.source].value += 1
            return result
        with telemetry.tracer.start_as_current_span(
            self._span_name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                result = await authenticator.authenticate(credential)
            except InvalidToken as exc:
                tallies["invalid"].value += 1
                if span.is_recording():
                    span.set_attribute(telemetry.ATTR_REASON, exc.reason)
                    span.set_status(StatusCode.ERROR, self._invalid)
                raise NotAuthenticated(exc.reason) from None
            except ValidatorUnavailable:
                if span.is_recording():
                    span.set_status(StatusCode.ERROR, self._unavailable)
                raise ServiceUnavailable("validator_unavailable") from None
            tallies[result.source].value += 1
            if span.is_recording():
                span.set_attribute(telemetry.ATTR_RESULT, _TIER[result.source])
                span.set_attribute(telemetry.ATTR_DEGRADED, result.degraded)
            return result

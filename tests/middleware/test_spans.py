"""Spans and cache metrics of the JWT middleware, read back through the in-memory SDK."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from middleware import JWTMiddleware
from middleware.tokencache import JWTAuthenticator
from tests.conftest import Telemetry


async def _me(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def _lookups(telemetry: Telemetry) -> dict[str, float]:
    return {
        str(attrs.get("gateway.cache.result")): point.value  # type: ignore[attr-defined]
        for attrs, point in telemetry.points("gateway.cache.lookups")
        if attrs.get("gateway.cache.name") == "jwt"
    }


async def test_jwt_span_reports_tier_and_never_the_token(
    telemetry: Telemetry,
    authenticator: JWTAuthenticator,
    make_token: Callable[..., str],
    http_client: Callable[[ASGIApp], httpx.AsyncClient],
) -> None:
    app = Starlette(
        routes=[Route("/me", _me)],
        middleware=[Middleware(JWTMiddleware, authenticator=authenticator)],
    )
    token = make_token("alice")
    before = _lookups(telemetry)
    async with http_client(app) as http:
        telemetry.spans.clear()
        for _ in range(3):
            response = await http.get("/me", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200
        bad = await http.get("/me", headers={"authorization": "Bearer not.a.token"})
        assert bad.status_code == 401
    spans = [
        s for s in telemetry.spans.get_finished_spans() if s.name == "gateway.jwt authenticate"
    ]
    assert [s.attributes.get("gateway.cache.result") for s in spans[:3]] == ["miss", "l1", "l1"]  # type: ignore[union-attr]
    assert spans[0].attributes.get("gateway.degraded") is False  # type: ignore[union-attr]
    assert spans[3].attributes.get("gateway.reason") == "malformed"  # type: ignore[union-attr]
    for span in telemetry.spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert token not in str(value)
            assert token.split(".")[2] not in str(value)
    after = _lookups(telemetry)
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("l1", 0) - before.get("l1", 0) == 2
    assert after.get("invalid", 0) - before.get("invalid", 0) == 1

"""The example gateway's OpenAPI schema driven by Schemathesis against a real instance:
``uvicorn examples.gateway:app`` on a real Redis, logged in as a demo user (a bearer token
for ``/api/*``, the session cookie for ``/api/session``).

Every operation gets a fixed number of generated requests (:data:`EXAMPLES`, derandomized).
Checks: no 5xx except a documented 503, every status code and content type declared for
the operation, every body matching its declared schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from examples.gateway import create_app
from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import gateway_env
from tests.processes import uvicorn_process

EXAMPLES = 40  # per operation, authenticated; ANONYMOUS_EXAMPLES without credentials
ANONYMOUS_EXAMPLES = 10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_gateway(redis_server: EmbeddedRedis) -> Iterator[dict[str, Any]]:
    """The gateway in its own uvicorn process, and a logged-in demo admin's credentials.
    The login throttle allows many failures: generated logins must not lock the demo user out."""
    env = gateway_env(redis_server.url, GATEWAY_COOKIE_SECURE="0", GATEWAY_LOGIN_LIMIT="1000")
    with uvicorn_process(["examples.gateway:app"], env) as (port, _):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/openapi.json").json() == OPENAPI
        yield {"base": base, "headers": _login(base)}


def _login(base: str) -> dict[str, str]:
    """Headers that carry a demo admin's fresh token and session cookie."""
    response = httpx.post(
        base + "/auth/login", json={"username": "alice", "password": "alice-password"}
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    cookie = response.headers["set-cookie"].split(";", 1)[0]
    return {"Authorization": f"Bearer {token}", "Cookie": cookie}


def _openapi() -> dict[str, Any]:
    """The schema the example gateway serves, built without starting it (nothing connects
    before the lifespan); the fixture checks that the live instance serves the same.
    (Loaded at collection: Schemathesis' fixture-based loader fails on pytest 9.)"""
    document: dict[str, Any] = create_app(gateway_env("redis://127.0.0.1:1/0")).openapi()
    return document


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@schemathesis.check
def no_server_error_but_a_documented_503(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx, except a 503 the operation declares (an outage the client may retry)."""
    status = response.status_code
    if status < 500:
        return
    declared = case.operation.definition.raw.get("responses", {})
    message = f"{case.operation.label} answered {status}: {response.text[:300]}"
    assert status == 503, message
    assert "503" in declared, message


CHECKS = [
    no_server_error_but_a_documented_503,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: Any, live_gateway: dict[str, Any]) -> None:
    headers = live_gateway["headers"]
    if case.path == "/auth/logout":  # revokes what it is sent: log in afresh every time
        headers = _login(live_gateway["base"])
    case.call_and_validate(
        base_url=live_gateway["base"],
        headers=headers,
        checks=CHECKS,
    )


@schema.parametrize()
@settings(
    max_examples=ANONYMOUS_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_anonymous_callers_as_documented(
    case: Any, live_gateway: dict[str, Any]
) -> None:
    case.call_and_validate(base_url=live_gateway["base"], checks=CHECKS)

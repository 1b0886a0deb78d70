"""Black box: with ``GATEWAY_JWT_LEEWAY`` a token is accepted a little past its ``exp``;
logging out within that time must revoke it (issue 13, item 5)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import jwt

from gateway_redis.embedded import EmbeddedRedis
from tests.examples.conftest import AUDIENCE, ISSUER, SECRET


def test_logout_inside_the_leeway_revokes_the_token(
    launch_gateway: Callable[..., str], redis_server: EmbeddedRedis
) -> None:
    base = launch_gateway(redis_server.url, GATEWAY_JWT_LEEWAY="30")
    now = int(time.time())
    token = jwt.encode(
        {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now - 60, "exp": now - 2,
         "jti": uuid.uuid4().hex, "roles": ["admin"]},
        SECRET, algorithm="HS256",
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/api/me", headers=auth).status_code == 200  # expired, in the leeway
        assert http.post("/auth/logout", headers=auth).status_code == 200
        r = http.get("/api/me", headers=auth)
        assert r.status_code == 401, r.text

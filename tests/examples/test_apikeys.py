"""The example gateway's API-key contract (issue 16), black box: two ``uvicorn
examples.gateway:app`` processes sharing one Redis. ``X-API-Key`` authenticates as
``apikey:<name>`` with the entry's role; a key revoked on A is refused by B (and by an
instance started later); hostile header values answer 401, never a 5xx; bad
``GATEWAY_API_KEYS`` entries stop the startup with a clear error."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis

from examples.apikeys import api_key_settings, parse_api_keys
from examples.gateway import ROLES
from gateway_redis.embedded import EmbeddedRedis

OPS = "ops-Kq8vT1mC6pR9wK2sJ5bY7f"
CI = "ci-Hn3kR8wQ1zT6vY9pM2cX5b"
KEYS = f"ops:{OPS}:admin, ci:{CI}:user"


def test_a_key_authenticates_as_its_name_with_its_role_and_a_wrong_one_gets_401(
    launch_gateway: Callable[..., str], redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    base = launch_gateway(redis_server.url, GATEWAY_API_KEYS=KEYS)
    with httpx.Client(base_url=base, timeout=5) as http:
        r = http.get("/api/me", headers={"X-API-Key": CI})
        assert r.status_code == 200
        assert r.json() == {"sub": "apikey:ci", "roles": ["user"]}
        assert http.get("/api/me", headers={"X-API-Key": OPS}).json() == {
            "sub": "apikey:ops",
            "roles": ["admin"],
        }
        assert http.get("/api/admin", headers={"X-API-Key": CI}).status_code == 403
        assert http.get("/api/admin", headers={"X-API-Key": OPS}).status_code == 200
        wrong = http.get("/api/me", headers={"X-API-Key": CI + "x"})
        assert wrong.status_code == 401
        assert CI not in wrong.text
        assert set(wrong.json()) <= {"error", "detail"}


def test_a_key_revoked_on_one_instance_is_refused_by_the_other(
    launch_gateway: Callable[..., str], redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    a = launch_gateway(redis_server.url, GATEWAY_API_KEYS=KEYS)
    b = launch_gateway(redis_server.url, GATEWAY_API_KEYS=KEYS)
    with (
        httpx.Client(base_url=a, timeout=5) as http_a,
        httpx.Client(base_url=b, timeout=5) as http_b,
    ):
        for _ in range(3):  # warm B's L1
            assert http_b.get("/api/me", headers={"X-API-Key": CI}).status_code == 200
        ops = {"X-API-Key": OPS}
        assert http_a.post("/api/admin/apikeys/ci/revoke", headers=ops).json() == {"revoked": True}
        revoked_at = time.perf_counter()
        while http_b.get("/api/me", headers={"X-API-Key": CI}).status_code != 401:
            # The bus delivers in milliseconds; generous for a loaded machine.
            assert time.perf_counter() - revoked_at < 2.0, "revocation not seen by B"
        assert http_a.get("/api/me", headers={"X-API-Key": CI}).status_code == 401
        assert http_b.get("/api/me", headers=ops).status_code == 200  # only that key
    c = launch_gateway(redis_server.url, GATEWAY_API_KEYS=KEYS)  # started later
    with httpx.Client(base_url=c, timeout=5) as http_c:
        assert http_c.get("/api/me", headers={"X-API-Key": CI}).status_code == 401


HOSTILE: dict[str, list[tuple[bytes, bytes]]] = {
    "empty": [(b"X-API-Key", b"")],
    "huge": [(b"X-API-Key", b"k" * 7_000)],
    "non_ascii": [(b"X-API-Key", CI.encode() + b"\xe9\xff")],
    "utf8": [(b"X-API-Key", "ключ-ключ-ключ-ключ".encode())],
    "tab_inside": [(b"X-API-Key", CI[:5].encode() + b"\t" + CI[5:].encode())],
    "duplicates": [(b"X-API-Key", CI.encode()), (b"X-API-Key", CI.encode())],
    "many": [(b"X-API-Key", b"k%04d-padding-padding" % i) for i in range(80)],
    "with_bearer": [(b"X-API-Key", CI.encode()), (b"Authorization", b"Bearer a.b.c")],
}


def test_hostile_api_key_headers_get_401_never_5xx(
    launch_gateway: Callable[..., str], redis_server: EmbeddedRedis, redis_admin: redis.Redis
) -> None:
    base = launch_gateway(redis_server.url, GATEWAY_API_KEYS=KEYS)
    with httpx.Client(base_url=base, timeout=5) as http:
        statuses = {name: http.get("/api/me", headers=h).status_code for name, h in HOSTILE.items()}
        assert statuses == dict.fromkeys(HOSTILE, 401)
        assert http.get("/api/me", headers={"X-API-Key": CI}).status_code == 200


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ops", "name:key:role"),
        (f"o p:{OPS}:admin", "name must be"),
        ("ops:short:admin", "ops.*16-256"),
        (f"ops:{OPS}:root", "unknown role"),
        (f"ops:{OPS}:admin,ops:{CI}:user", "name is given twice"),
        (f"ops:{OPS}:admin,ci:{OPS}:user", "same as another"),
    ],
)
def test_bad_entries_stop_the_startup_with_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_api_keys(value, ROLES)
    assert OPS not in str(caught.value)
    assert CI not in str(caught.value)


def test_no_keys_no_layer_and_a_short_secret_is_refused() -> None:
    assert api_key_settings({}, ROLES) is None
    assert api_key_settings({"GATEWAY_API_KEYS": " , "}, ROLES) is None
    with pytest.raises(ValueError, match="32 bytes"):
        api_key_settings({"GATEWAY_API_KEYS": KEYS, "GATEWAY_API_KEY_SECRET": "short"}, ROLES)

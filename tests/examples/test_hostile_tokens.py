"""A catalogue of malformed and hostile tokens against ``uvicorn examples.gateway:app``.

Every one must get 401 (never 500, never 200), with a generic body and the RFC 6750
challenge; none may end up in the Redis token cache.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway_redis.embedded import EmbeddedRedis

ISSUER = "https://issuer.example"
AUDIENCE = "gateway-api"
SECRET = "Vb7qP2mX9kT4rW1nZ6sY3cJ8hL5fD0gQ-gw-tests"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "mallory", "roles": ["admin"], "iat": now, "exp": now + 300,
        "jti": uuid.uuid4().hex, "iss": ISSUER, "aud": AUDIENCE,
    }  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def raw_hs(header: dict[str, Any], payload: bytes, key: bytes) -> str:
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(payload)}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64u(sig)}"


def unsigned(alg: str) -> str:
    header = b64u(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64u(json.dumps(claims()).encode())}."


def tamper_payload(token: str) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64u(json.dumps(claims(sub='root')).encode())}.{sig}"


def tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    flipped = "A" if sig[5] != "A" else "B"
    return f"{head}.{body}.{sig[:5]}{flipped}{sig[6:]}"


Sign = Callable[..., str]


def catalogue(sign: Sign, public_pem: bytes | None) -> dict[str, str]:
    """name -> hostile token, for a gateway whose real signer is ``sign(payload, **hdr)``."""
    now = int(time.time())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other_rsa.public_key()))
    dup = (
        b'{"sub":"bob","sub":"alice","roles":["admin"],"iat":%d,"exp":%d,"jti":"d1",'
        b'"iss":"%s","aud":"%s"}' % (now, now + 300, ISSUER.encode(), AUDIENCE.encode())
    )
    good = sign(claims())
    tokens = {
        "alg none": unsigned("none"),
        "alg None": unsigned("None"),
        "alg NONE": unsigned("NONE"),
        "tampered payload": tamper_payload(good),
        "tampered signature": tamper_signature(good),
        "signature stripped": good.rsplit(".", 1)[0] + ".",
        "expired": sign(claims(exp=now - 10, iat=now - 400)),
        "not yet valid (nbf)": sign(claims(nbf=now + 3600)),
        "issued in the future": sign(claims(iat=now + 3600)),
        "wrong issuer": sign(claims(iss="https://evil.example")),
        "issuer prefix": sign(claims(iss=ISSUER + ".evil")),
        "wrong audience": sign(claims(aud="another-api")),
        "missing sub": sign(claims(sub=None)),
        "missing iss": sign(claims(iss=None)),
        "missing aud": sign(claims(aud=None)),
        "missing exp": sign(claims(exp=None)),
        "missing iat": sign(claims(iat=None)),
        "string exp": sign(claims(exp=str(now + 300))),
        "float exp": sign(claims(exp=now + 300.5)),
        "oversized": sign(claims(pad="x" * 9000)),
        "other RSA key": jwt.encode(claims(), other_rsa, algorithm="RS256"),
        "ES256 (not allowed)": jwt.encode(claims(), ec_key, algorithm="ES256"),
        "embedded jwk": jwt.encode(
            claims(), other_rsa, algorithm="RS256", headers={"jwk": attacker_jwk}
        ),
        "jku header": jwt.encode(
            claims(), other_rsa, algorithm="RS256", headers={"jku": "http://evil/jwks"}
        ),
        "x5u header": jwt.encode(
            claims(), other_rsa, algorithm="RS256", headers={"x5u": "http://evil/c"}
        ),
        "crit header": sign(claims(), headers={"crit": ["exp"], "exp": 1}),
        "garbage": "garbage",
        "two segments": "a.b",
        "empty segments": "..",
        "JWE (5 segments)": "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
        "bad base64": "!!!.###.$$$",
        "json array payload": b64u(b'{"alg":"HS256"}') + "." + b64u(b"[1,2]") + ".sig",
        "huge garbage": "A" * 20000,
        "non-ascii": "eyJ\u00e9.\u00e9.\u00e9",
    }
    if public_pem is not None:
        # Alg confusion: an HMAC token keyed with the server's own public key.
        tokens["HS256 with the public key"] = raw_hs(
            {"alg": "HS256", "typ": "JWT"}, json.dumps(claims()).encode(), public_pem
        )
    else:
        tokens["duplicate claims"] = raw_hs({"alg": "HS256"}, dup, SECRET.encode())
        tokens["RS256 to an HS256 gateway"] = jwt.encode(claims(), other_rsa, algorithm="RS256")
        tokens["HS256 with another secret"] = jwt.encode(
            claims(), "Another-Secret-Qw8e7r6t5y4u3i2o1p0", algorithm="HS256"
        )
    return tokens


@pytest.fixture(params=["HS256", "RS256"])
def gateway(
    request: pytest.FixtureRequest,
    launch_gateway: Callable[..., str],
    redis_server: EmbeddedRedis,
    redis_admin: redis.Redis,
    rsa_key: tuple[rsa.RSAPrivateKey, Path, Path],
) -> tuple[str, Sign, bytes | None]:
    if request.param == "HS256":
        base = launch_gateway(redis_server.url)

        def sign_hs(payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
            return jwt.encode(payload, SECRET, algorithm="HS256", headers=headers)

        return base, sign_hs, None
    key, private, _ = rsa_key
    base = launch_gateway(redis_server.url, GATEWAY_JWT_PRIVATE_KEY=str(private))

    def sign_rs(payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(payload, key, algorithm="RS256", headers=headers)

    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base, sign_rs, pem


def test_hostile_tokens_are_all_401_and_never_cached(
    gateway: tuple[str, Sign, bytes | None], redis_admin: redis.Redis
) -> None:
    base, sign, public_pem = gateway
    tokens = catalogue(sign, public_pem)
    good = sign(claims(sub="alice"))
    with httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/api/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        cached_before = set(redis_admin.keys("gw:jwt:*"))
        assert len(cached_before) == 1
        failures = []
        for _round in range(2):  # the second round meets whatever the first one cached
            for name, token in tokens.items():
                for path in ("/api/me", "/api/admin"):
                    r = http.get(path, headers={"Authorization": f"Bearer {token}".encode()})
                    if r.status_code != 401:
                        failures.append(f"{name} {path}: {r.status_code} {r.text[:80]}")
                        continue
                    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
                    assert r.json() == {
                        "error": "unauthorized",
                        "detail": "Authentication required.",
                    }
        assert not failures, "\n".join(failures)
        # A public route treats them as anonymous rather than failing.
        for token in tokens.values():
            auth = {"Authorization": f"Bearer {token}".encode()}
            assert http.get("/health", headers=auth).status_code == 200
    assert set(redis_admin.keys("gw:jwt:*")) == cached_before

"""JWT validation core: good tokens, the hostile catalogue, settings checks and JWKS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from middleware.jwt import (
    InvalidToken,
    JWTSettings,
    JWTValidator,
    TokenClaims,
    ValidatorUnavailable,
)

ISSUER = "https://issuer"
AUDIENCE = "api"
SECRET = "k7Qm2xV9pL4sT8wZ1nB6cR3yH5jD0fGa-uE_oI2tK9vX"  # 44 random-looking chars


# ---------------------------------------------------------------- helpers


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**overrides: Any) -> dict[str, Any]:
    """A good claim set; an override of None removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 300,
        "iat": now - 10,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(
    payload: dict[str, Any] | bytes,
    header: dict[str, Any] | None = None,
    secret: str | bytes = SECRET,
) -> str:
    """Hand-built HS256 token, so payloads PyJWT would refuse to produce can be signed."""
    header = {"alg": "HS256", "typ": "JWT"} if header is None else header
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(body)}"
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64u(sig)}"


def rs_token(
    private_key: rsa.RSAPrivateKey, payload: dict[str, Any], header: dict[str, Any]
) -> str:
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(payload).encode())}"
    sig = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64u(sig)}"


def public_pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hs_settings(**overrides: Any) -> JWTSettings:
    options: dict[str, Any] = {
        "algorithms": ("HS256",),
        "key": SECRET,
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    options.update(overrides)
    return JWTSettings(**options)


def flip_char(segment: str, index: int) -> str:
    replacement = "A" if segment[index] != "A" else "B"
    return segment[:index] + replacement + segment[index + 1 :]


async def reason_of(validator: JWTValidator, token: Any) -> str:
    with pytest.raises(InvalidToken) as info:
        await validator.validate(token)
    return info.value.reason


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def hs_validator() -> JWTValidator:
    return JWTValidator(hs_settings())


@pytest.fixture
def rs_validator(rsa_key: rsa.RSAPrivateKey) -> JWTValidator:
    return JWTValidator(hs_settings(algorithms=("RS256",), key=public_pem(rsa_key)))


# ---------------------------------------------------------------- good tokens


async def test_valid_hs256_token_returns_typed_claims(hs_validator: JWTValidator) -> None:
    payload = claims(jti="j-1", roles=["admin", "ops"], scope="read write", nbf=0)
    token = jwt.encode(payload, SECRET, algorithm="HS256")

    result = await hs_validator.validate(token)

    assert result.sub == "user-1"
    assert result.iss == ISSUER
    assert result.aud == (AUDIENCE,)
    assert result.exp == payload["exp"]
    assert result.iat == payload["iat"]
    assert result.nbf == 0
    assert result.jti == "j-1"
    assert result.roles == ("admin", "ops")
    assert result.scopes == ("read", "write")
    assert result.raw["roles"] == ("admin", "ops")


async def test_valid_rs256_token(rsa_key: rsa.RSAPrivateKey, rs_validator: JWTValidator) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await rs_validator.validate(token)).sub == "user-1"


async def test_valid_es256_token(ec_key: ec.EllipticCurvePrivateKey) -> None:
    validator = JWTValidator(hs_settings(algorithms=("ES256",), key=public_pem(ec_key)))
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert (await validator.validate(token)).sub == "user-1"


async def test_valid_eddsa_token(ed_key: ed25519.Ed25519PrivateKey) -> None:
    validator = JWTValidator(hs_settings(algorithms=("EdDSA",), key=public_pem(ed_key)))
    token = jwt.encode(claims(), ed_key, algorithm="EdDSA")
    assert (await validator.validate(token)).sub == "user-1"


async def test_audience_list_claim_matches_any_configured_audience() -> None:
    validator = JWTValidator(hs_settings(audience=("other-api", AUDIENCE)))
    token = jwt.encode(claims(aud=["x", AUDIENCE]), SECRET, algorithm="HS256")
    assert (await validator.validate(token)).aud == ("x", AUDIENCE)


async def test_scp_list_becomes_scopes_and_missing_roles_are_empty(
    hs_validator: JWTValidator,
) -> None:
    token = jwt.encode(claims(scp=["a", "b"]), SECRET, algorithm="HS256")
    result = await hs_validator.validate(token)
    assert result.scopes == ("a", "b")
    assert result.roles == ()


async def test_leeway_accepts_recently_expired_token() -> None:
    validator = JWTValidator(hs_settings(leeway=30))
    token = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert (await validator.validate(token)).sub == "user-1"


async def test_iat_in_future_within_leeway_is_accepted() -> None:
    validator = JWTValidator(hs_settings(leeway=30))
    token = jwt.encode(claims(iat=int(time.time()) + 10), SECRET, algorithm="HS256")
    assert (await validator.validate(token)).sub == "user-1"


# ---------------------------------------------------------------- hostile catalogue


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("with_signature", [False, True])
async def test_alg_none_is_rejected(
    hs_validator: JWTValidator, alg: str, with_signature: bool
) -> None:
    unsigned = f"{b64u(json.dumps({'alg': alg}).encode())}.{b64u(json.dumps(claims()).encode())}"
    signature = b64u(hmac.new(SECRET.encode(), unsigned.encode(), "sha256").digest())
    token = f"{unsigned}.{signature if with_signature else ''}"
    assert await reason_of(hs_validator, token) == "algorithm_not_allowed"


async def test_alg_confusion_hs256_signed_with_rsa_public_pem_is_rejected(
    rsa_key: rsa.RSAPrivateKey, rs_validator: JWTValidator
) -> None:
    token = hs_token(claims(), secret=public_pem(rsa_key))
    assert await reason_of(rs_validator, token) == "algorithm_not_allowed"


async def test_token_with_other_allowed_family_alg_is_rejected(
    ec_key: ec.EllipticCurvePrivateKey, rs_validator: JWTValidator
) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert await reason_of(rs_validator, token) == "algorithm_not_allowed"


async def test_hs512_token_against_hs256_only_verifier_is_rejected(
    hs_validator: JWTValidator,
) -> None:
    token = jwt.encode(claims(), SECRET + SECRET, algorithm="HS512")
    assert await reason_of(hs_validator, token) == "algorithm_not_allowed"


async def test_missing_alg_header_is_rejected(hs_validator: JWTValidator) -> None:
    token = hs_token(claims(), header={"typ": "JWT"})
    assert await reason_of(hs_validator, token) == "algorithm_not_allowed"


async def test_tampered_payload_is_rejected(hs_validator: JWTValidator) -> None:
    header, _, sig = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged = b64u(json.dumps(claims(sub="admin")).encode())
    assert await reason_of(hs_validator, f"{header}.{forged}.{sig}") == "bad_signature"


@pytest.mark.parametrize("family", ["HS256", "RS256"])
async def test_tampered_signature_is_rejected(
    rsa_key: rsa.RSAPrivateKey, rs_validator: JWTValidator, family: str
) -> None:
    if family == "HS256":
        validator, token = JWTValidator(hs_settings()), hs_token(claims())
    else:
        validator, token = rs_validator, jwt.encode(claims(), rsa_key, algorithm="RS256")
    header, payload, sig = token.split(".")
    tampered = f"{header}.{payload}.{flip_char(sig, len(sig) // 2)}"
    assert await reason_of(validator, tampered) == "bad_signature"


async def test_empty_signature_with_allowed_alg_is_rejected(hs_validator: JWTValidator) -> None:
    header, payload, _ = hs_token(claims()).split(".")
    assert await reason_of(hs_validator, f"{header}.{payload}.") == "bad_signature"


async def test_truncated_ecdsa_signature_is_rejected(ec_key: ec.EllipticCurvePrivateKey) -> None:
    validator = JWTValidator(hs_settings(algorithms=("ES256",), key=public_pem(ec_key)))
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    header, payload, sig = token.split(".")
    short_sig = b64u(base64.urlsafe_b64decode(sig + "==")[:-3])
    assert await reason_of(validator, f"{header}.{payload}.{short_sig}") == "bad_signature"


async def test_expired_token_is_rejected(hs_validator: JWTValidator) -> None:
    token = hs_token(claims(exp=int(time.time()) - 1, iat=int(time.time()) - 100))
    assert await reason_of(hs_validator, token) == "expired"


async def test_exp_exactly_now_with_zero_leeway_is_expired(hs_validator: JWTValidator) -> None:
    now = int(time.time())
    assert await reason_of(hs_validator, hs_token(claims(exp=now, iat=now - 5))) == "expired"


async def test_nbf_in_future_is_not_yet_valid(hs_validator: JWTValidator) -> None:
    token = hs_token(claims(nbf=int(time.time()) + 120))
    assert await reason_of(hs_validator, token) == "not_yet_valid"


async def test_iat_in_future_is_not_yet_valid(hs_validator: JWTValidator) -> None:
    token = hs_token(claims(iat=int(time.time()) + 120))
    assert await reason_of(hs_validator, token) == "not_yet_valid"


@pytest.mark.parametrize(
    "iss",
    [
        "https://evil",
        "https://issuer/",
        "https://issuer.evil",
        "https://issue",
        "https://issuerx",
        "HTTPS://ISSUER",
        " https://issuer",
        "https://issuer ",
        "http://issuer",
        "",
        ["https://issuer"],
        {"https://issuer": 1},
        1,
    ],
)
async def test_issuer_must_match_exactly(hs_validator: JWTValidator, iss: Any) -> None:
    reason = await reason_of(hs_validator, hs_token(claims(iss=iss)))
    assert reason in {"bad_issuer", "missing_claim"}


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        ("other", "bad_audience"),
        ("apix", "bad_audience"),
        ("API", "bad_audience"),
        (["other", "x"], "bad_audience"),
        ([AUDIENCE, 1], "bad_audience"),
        ({"api": True}, "bad_audience"),
        ([], "missing_claim"),
        ("", "missing_claim"),
    ],
)
async def test_wrong_audience_is_rejected(
    hs_validator: JWTValidator, aud: Any, reason: str
) -> None:
    assert await reason_of(hs_validator, hs_token(claims(aud=aud))) == reason


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
async def test_each_required_claim_must_be_present(hs_validator: JWTValidator, claim: str) -> None:
    payload = claims()
    del payload[claim]
    assert await reason_of(hs_validator, hs_token(payload)) == "missing_claim"


@pytest.mark.parametrize("claim", ["iss", "aud", "sub"])
async def test_required_claim_set_to_null_counts_as_missing(
    hs_validator: JWTValidator, claim: str
) -> None:
    payload = claims()
    payload[claim] = None
    assert await reason_of(hs_validator, hs_token(payload)) == "missing_claim"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "9999999999"),
        ("exp", 9999999999.0),
        ("exp", 9999999999.5),
        ("exp", True),
        ("exp", None),
        ("exp", -1),
        ("exp", 10**30),
        ("exp", [9999999999]),
        ("iat", "0"),
        ("iat", 1.0),
        ("iat", False),
        ("nbf", "0"),
        ("nbf", 0.5),
        ("nbf", True),
    ],
)
async def test_time_claims_must_be_json_integers(
    hs_validator: JWTValidator, claim: str, value: Any
) -> None:
    payload = claims()
    payload[claim] = value
    assert await reason_of(hs_validator, hs_token(payload)) == "bad_claim_type"


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", 42), ("jti", 7), ("roles", "admin"), ("roles", ["a", 1]), ("scp", [1])],
)
async def test_other_claims_with_wrong_types_are_rejected(
    hs_validator: JWTValidator, claim: str, value: Any
) -> None:
    assert await reason_of(hs_validator, hs_token(claims(**{claim: value}))) == "bad_claim_type"


async def test_duplicate_claim_is_rejected(hs_validator: JWTValidator) -> None:
    now = int(time.time())
    body = (
        f'{{"sub":"user-1","iss":"{ISSUER}","aud":"{AUDIENCE}",'
        f'"exp":{now + 300},"iat":{now},"sub":"admin"}}'
    ).encode()
    assert await reason_of(hs_validator, hs_token(body)) == "duplicate_claim"


async def test_duplicate_name_in_nested_claim_is_rejected(hs_validator: JWTValidator) -> None:
    now = int(time.time())
    body = (
        f'{{"sub":"u","iss":"{ISSUER}","aud":"{AUDIENCE}","exp":{now + 300},"iat":{now},'
        f'"ctx":{{"role":"user","role":"admin"}}}}'
    ).encode()
    assert await reason_of(hs_validator, hs_token(body)) == "duplicate_claim"


async def test_oversized_token_is_rejected(hs_validator: JWTValidator) -> None:
    token = hs_token(claims(pad="x" * 9000))
    assert len(token) > 8192
    assert await reason_of(hs_validator, token) == "too_large"


async def test_oversized_garbage_is_rejected_as_too_large_before_decoding(
    hs_validator: JWTValidator,
) -> None:
    assert await reason_of(hs_validator, "!" * 8193) == "too_large"
    assert await reason_of(hs_validator, "a." * 5_000_000) == "too_large"


def _garbage(token: str) -> list[Any]:
    header, payload, sig = token.split(".")

    def with_header(raw: bytes) -> str:
        return ".".join([b64u(raw), payload, sig])

    def with_payload(raw: bytes) -> str:
        return ".".join([header, b64u(raw), sig])

    return [
        "",
        "a",
        "a.b",
        "a.b.c.d.e",
        ".".join([header, payload, sig, sig, sig]),  # JWE-shaped
        "..",
        "...",
        ".b.c",
        "a..c",
        "!!!.###.$$$",
        "\u00fc.\u00fc.\u00fc",
        token + "\u00e9",
        " ",
        " " + token,
        token + " ",
        token + "\n",
        ".".join([header, " " + payload, sig]),
        ".".join([header + "=", payload, sig]),
        ".".join([header, payload + "=", sig]),
        ".".join([header + "A", payload, sig]),  # base64 length % 4 == 1
        with_header(b"[1,2]"),
        with_header(b"not json"),
        with_header(b'"HS256"'),
        with_header(b'{"alg":"HS256","alg":"HS256"}'),
        with_header(b'{"alg":NaN}'),
        with_header(b"[" * 5000),
        with_header('{"alg":"HS256"}'.encode("utf-16")),
        with_payload(b"[1]"),
        with_payload(b"not json"),
        with_payload(b"\xff\xfe"),
        with_payload(b'{"exp":Infinity}'),
        with_payload(b"{" * 3000),
        None,
        b"bytes.are.not",
        123,
        ["a", "b", "c"],
    ]


async def test_garbage_is_rejected_as_malformed(hs_validator: JWTValidator) -> None:
    for candidate in _garbage(hs_token(claims())):
        assert await reason_of(hs_validator, candidate) == "malformed", repr(candidate)[:80]


@pytest.mark.parametrize("crit", [["exp"], [], "b64", ["b64"], None])
async def test_crit_header_is_rejected(hs_validator: JWTValidator, crit: Any) -> None:
    token = hs_token(claims(), header={"alg": "HS256", "crit": crit, "exp": 1, "b64": True})
    assert await reason_of(hs_validator, token) == "unsupported_crit"


async def test_embedded_jwk_header_is_ignored(
    attacker_rsa_key: rsa.RSAPrivateKey, rs_validator: JWTValidator
) -> None:
    attacker_jwk = RSAAlgorithm.to_jwk(attacker_rsa_key.public_key(), as_dict=True)
    header = {"alg": "RS256", "typ": "JWT", "jwk": attacker_jwk, "kid": "attacker"}
    token = rs_token(attacker_rsa_key, claims(sub="admin"), header)
    assert await reason_of(rs_validator, token) == "bad_signature"


@pytest.mark.parametrize("name", ["jku", "x5u"])
async def test_key_url_headers_are_never_fetched(
    attacker_rsa_key: rsa.RSAPrivateKey, rs_validator: JWTValidator, name: str
) -> None:
    server = _JWKSServer({"keys": [_jwk(attacker_rsa_key, "attacker")]})
    try:
        header = {"alg": "RS256", name: server.url, "kid": "attacker"}
        token = rs_token(attacker_rsa_key, claims(), header)
        assert await reason_of(rs_validator, token) == "bad_signature"
        assert server.requests == 0
    finally:
        server.close()


async def test_non_string_kid_is_rejected(hs_validator: JWTValidator) -> None:
    token = hs_token(claims(), header={"alg": "HS256", "kid": 5})
    assert await reason_of(hs_validator, token) == "malformed"


async def test_random_mutations_only_ever_raise_invalid_token(
    rsa_key: rsa.RSAPrivateKey, rs_validator: JWTValidator
) -> None:
    token = jwt.encode(claims(roles=["a"]), rsa_key, algorithm="RS256")
    rng = random.Random(1234)
    alphabet = 'ABCxyz019-_.=+/ {}"\\\u00e9\x00'
    for _ in range(600):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            op, pos = rng.randrange(3), rng.randrange(len(chars))
            if op == 0:
                chars[pos] = rng.choice(alphabet)
            elif op == 1:
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(alphabet))
        mutated = "".join(chars)
        try:
            await rs_validator.validate(mutated)
        except InvalidToken:
            continue
        # A mutation that still verifies must be the original token.
        assert mutated == token


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "secret",
    [
        "short",
        secrets.token_urlsafe(16),
        b"\x01" * 31,
        "a" * 64,
        "ab" * 32,
        "secret" * 7,
        "your-256-bit-secret-your-256-bit-secret",
        "a-string-secret-at-least-256-bits-long",
        "0123456789" * 4,
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "changeme-" + secrets.token_urlsafe(32),
        "django-insecure-" + secrets.token_urlsafe(32),
    ],
)
def test_weak_or_short_hmac_secrets_are_refused(secret: str | bytes) -> None:
    with pytest.raises(ValueError, match="secret"):
        hs_settings(key=secret)


def test_strong_random_secret_is_accepted() -> None:
    hs_settings(key=secrets.token_bytes(32))
    hs_settings(key=secrets.token_urlsafe(32))


def test_hs512_needs_a_64_byte_secret() -> None:
    with pytest.raises(ValueError, match="HMAC key"):
        hs_settings(algorithms=("HS512",), key=secrets.token_urlsafe(36))
    hs_settings(algorithms=("HS512",), key=secrets.token_urlsafe(64))


@pytest.mark.parametrize(
    "algorithms",
    [(), ("none",), ("HS256", "none"), ("NONE",), ("HS256", "RS256"), ("XS256",), "HS256"],
)
def test_bad_algorithm_lists_are_refused(algorithms: Any) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        hs_settings(algorithms=algorithms)


def test_public_key_pem_as_hmac_secret_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="alg confusion"):
        hs_settings(key=public_pem(rsa_key))
    with pytest.raises(ValueError, match="alg confusion"):
        hs_settings(key=public_pem(rsa_key).decode())
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="alg confusion"):
        hs_settings(key=der)


def test_jwk_json_as_hmac_secret_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="alg confusion"):
        hs_settings(key=RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk_set = '{"keys": [' + RSAAlgorithm.to_jwk(rsa_key.public_key()) + "]}"
    with pytest.raises(ValueError, match="alg confusion"):
        hs_settings(key="  " + jwk_set)


def test_a_random_secret_that_starts_with_a_brace_is_accepted() -> None:
    # One random binary secret in 256 starts with "{": it is not a pasted JWK.
    hs_settings(key=b"{" + secrets.token_bytes(31))
    hs_settings(key=b" {" + secrets.token_bytes(31))


@pytest.mark.parametrize(
    "key",
    [
        "not a pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        SECRET,
    ],
)
def test_unparseable_public_key_is_refused(key: str | bytes) -> None:
    with pytest.raises(ValueError, match="PEM public key"):
        hs_settings(algorithms=("RS256",), key=key)


def test_private_key_pem_is_refused_for_verification(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="public key"):
        hs_settings(algorithms=("RS256",), key=pem)


def test_key_of_wrong_family_or_curve_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        hs_settings(algorithms=("RS256",), key=public_pem(ec_key))
    with pytest.raises(ValueError, match="does not fit"):
        hs_settings(algorithms=("ES384",), key=public_pem(ec_key))
    with pytest.raises(ValueError, match="does not fit"):
        hs_settings(algorithms=("ES256", "RS256"), key=public_pem(ec_key))


def test_short_rsa_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="1024 bits"):
        hs_settings(algorithms=("RS256",), key=public_pem(small))


@pytest.mark.parametrize("leeway", [61, -1, float("nan"), float("inf"), True])
def test_leeway_outside_0_to_60_is_refused(leeway: Any) -> None:
    with pytest.raises(ValueError, match="leeway"):
        hs_settings(leeway=leeway)


def test_key_and_jwks_url_are_mutually_exclusive() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        hs_settings(jwks_url="https://issuer/jwks")
    with pytest.raises(ValueError, match="exactly one"):
        hs_settings(algorithms=("RS256",), key=None)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"algorithms": ("RS256",), "key": None, "jwks_url": "file:///etc/passwd"}, "http"),
        ({"key": None, "jwks_url": "https://issuer/jwks"}, "HMAC"),
        ({"required_claims": ("iat", "sub")}, "exp"),
        ({"issuer": ""}, "issuer"),
        ({"audience": ()}, "audience"),
        ({"audience": ("",)}, "audience"),
        ({"max_token_bytes": 0}, "max_token_bytes"),
        ({"jwks_min_refresh_interval": 400.0}, "jwks_min_refresh_interval"),
    ],
)
def test_inconsistent_settings_are_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hs_settings(**overrides)


def test_repr_of_settings_hides_the_secret() -> None:
    settings = hs_settings()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "key=" not in repr(settings)


def test_invalid_token_message_does_not_contain_the_token() -> None:
    assert str(InvalidToken("expired")) == "invalid token: expired"


# ---------------------------------------------------------------- fingerprint and claims


def test_fingerprint_is_stable_for_equal_settings() -> None:
    first, second = JWTValidator(hs_settings()), JWTValidator(hs_settings())
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 64
    int(first.fingerprint, 16)
    assert SECRET not in first.fingerprint


@pytest.mark.parametrize(
    "overrides",
    [
        {"issuer": "https://issuer/"},
        {"audience": "other"},
        {"leeway": 5},
        {"required_claims": ("exp", "iat", "iss", "aud", "sub", "jti")},
        {"key": secrets.token_urlsafe(40)},
        {"algorithms": ("HS256", "HS384"), "key": secrets.token_urlsafe(64)},
        {"max_token_bytes": 4096},
    ],
)
def test_fingerprint_changes_with_configuration(overrides: dict[str, Any]) -> None:
    assert (
        JWTValidator(hs_settings()).fingerprint
        != JWTValidator(hs_settings(**overrides)).fingerprint
    )


async def test_claims_json_round_trip_rebuilds_an_equal_object(
    hs_validator: JWTValidator,
) -> None:
    payload = claims(
        jti="j",
        nbf=0,
        roles=["r1"],
        scope="a b",
        aud=[AUDIENCE, "x"],
        ctx={"tenant": "t", "tags": ["x", {"y": 1}]},
        score=1.5,
        name="\u00e9\U0001f600",
        lone="\ud800",
    )
    original = await hs_validator.validate(jwt.encode(payload, SECRET, algorithm="HS256"))

    data = original.to_json()
    restored = TokenClaims.from_json(data)

    assert restored == original
    assert hash(restored) == hash(original)
    assert b" " not in data.replace(b"a b", b"")
    assert json.loads(data) == payload


async def test_claims_raw_is_read_only(hs_validator: JWTValidator) -> None:
    token = jwt.encode(claims(ctx={"a": [1]}), SECRET, algorithm="HS256")
    result = await hs_validator.validate(token)
    with pytest.raises(TypeError):
        result.raw["sub"] = "admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        result.raw["ctx"]["a"] = 2
    assert result.raw["ctx"]["a"] == (1,)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b"\xff\xfe",
        b'{"exp": "1", "iss": "i", "aud": "a"}',
        b'{"exp": 1, "iss": "i", "aud": "a", "exp": 2}',
        b'{"iss": "i", "aud": "a"}',
        b'{"exp": 1, "aud": "a"}',
        b'{"exp": 1, "iss": "i", "aud": "a", "roles": "x"}',
        b'{"exp": 1, "iss": "i", "aud": "a"',
        b"[" * 10000,
    ],
)
def test_from_json_raises_value_error_on_corrupt_input(data: bytes) -> None:
    with pytest.raises(ValueError, match="corrupt claims"):
        TokenClaims.from_json(data)


# ---------------------------------------------------------------- JWKS


def _jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = private_key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
    jwk.update({"kid": kid, "use": "sig"}, **extra)
    return jwk


class _JWKSServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS document and counting requests."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.status = 200
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = (
                    owner.document
                    if isinstance(owner.document, bytes)
                    else json.dumps(owner.document).encode()
                )
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey) -> Iterator[_JWKSServer]:
    server = _JWKSServer({"keys": [_jwk(rsa_key, "k1")]})
    yield server
    server.close()


def jwks_validator(url: str, **overrides: Any) -> JWTValidator:
    options: dict[str, Any] = {
        "algorithms": ("RS256", "ES256"),
        "jwks_url": url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    options.update(overrides)
    return JWTValidator(JWTSettings(**options))


def kid_token(private_key: Any, kid: str | None, alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(), private_key, algorithm=alg, headers=headers)


async def test_jwks_token_with_known_kid_validates_and_keys_are_cached(
    rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer
) -> None:
    validator = jwks_validator(jwks_server.url)
    for _ in range(5):
        assert (await validator.validate(kid_token(rsa_key, "k1"))).sub == "user-1"
    assert jwks_server.requests == 1


async def test_jwks_unknown_kid_refetches_at_most_once_per_min_interval(
    rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer
) -> None:
    validator = jwks_validator(jwks_server.url, jwks_min_refresh_interval=0.3)
    await validator.validate(kid_token(rsa_key, "k1"))
    assert jwks_server.requests == 1

    for _ in range(5):
        assert await reason_of(validator, kid_token(rsa_key, "nope")) == "unknown_kid"
    assert jwks_server.requests == 1

    await asyncio.sleep(0.35)
    results = await asyncio.gather(
        *(validator.validate(kid_token(rsa_key, f"nope-{i}")) for i in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, InvalidToken) and r.reason == "unknown_kid" for r in results)
    assert jwks_server.requests == 2


async def test_jwks_rotated_key_is_picked_up_after_min_interval(
    rsa_key: rsa.RSAPrivateKey,
    attacker_rsa_key: rsa.RSAPrivateKey,
    jwks_server: _JWKSServer,
) -> None:
    validator = jwks_validator(jwks_server.url, jwks_min_refresh_interval=0.2)
    await validator.validate(kid_token(rsa_key, "k1"))
    new_key = attacker_rsa_key  # any second key pair stands in for the rotated key
    jwks_server.document = {"keys": [_jwk(rsa_key, "k1"), _jwk(new_key, "k2")]}

    assert await reason_of(validator, kid_token(new_key, "k2")) == "unknown_kid"
    await asyncio.sleep(0.25)
    assert (await validator.validate(kid_token(new_key, "k2"))).sub == "user-1"
    assert jwks_server.requests == 2


async def test_jwks_unreachable_endpoint_raises_validator_unavailable(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    validator = jwks_validator(f"http://127.0.0.1:{port}/jwks.json")
    with pytest.raises(ValidatorUnavailable):
        await validator.validate(kid_token(rsa_key, "k1"))


async def test_jwks_stopped_server_raises_validator_unavailable_for_fresh_validator(
    rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer
) -> None:
    url = jwks_server.url
    jwks_server.close()
    jwks_server.close = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ValidatorUnavailable):
        await jwks_validator(url).validate(kid_token(rsa_key, "k1"))


@pytest.mark.parametrize(
    ("status", "document"),
    [
        (500, {"keys": []}),
        (200, b"<html>not json</html>"),
        (200, {"keys": []}),
        (200, {"keys": "nope"}),
        (200, [1, 2]),
        (200, {"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}),
    ],
)
async def test_jwks_bad_reply_raises_validator_unavailable(
    rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer, status: int, document: Any
) -> None:
    jwks_server.status, jwks_server.document = status, document
    with pytest.raises(ValidatorUnavailable):
        await jwks_validator(jwks_server.url).validate(kid_token(rsa_key, "k1"))


async def test_jwks_outage_keeps_serving_known_keys_but_not_unknown_kids(
    rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer
) -> None:
    validator = jwks_validator(
        jwks_server.url, jwks_refresh_interval=0.2, jwks_min_refresh_interval=0.1
    )
    await validator.validate(kid_token(rsa_key, "k1"))
    jwks_server.status = 503
    await asyncio.sleep(0.25)

    assert (await validator.validate(kid_token(rsa_key, "k1"))).sub == "user-1"
    assert jwks_server.requests == 2
    with pytest.raises(ValidatorUnavailable):
        await validator.validate(kid_token(rsa_key, "k-new"))


async def test_jwks_token_without_kid_is_rejected(
    rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer
) -> None:
    assert await reason_of(jwks_validator(jwks_server.url), kid_token(rsa_key, None)) == (
        "unknown_kid"
    )


async def test_jwks_key_family_must_match_token_alg(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, jwks_server: _JWKSServer
) -> None:
    jwks_server.document = {
        "keys": [
            _jwk(rsa_key, "rsa"),
            _jwk(ec_key, "ec"),
            _jwk(rsa_key, "rsa-pinned", alg="RS256"),
        ]
    }
    validator = jwks_validator(jwks_server.url, algorithms=("RS256", "ES256", "PS256"))
    # An ES256 token naming the RSA key and the reverse.
    assert await reason_of(validator, kid_token(ec_key, "rsa", "ES256")) == "key_mismatch"
    assert await reason_of(validator, kid_token(rsa_key, "ec")) == "key_mismatch"
    # A key published for RS256 only cannot verify PS256, even with the same RSA key.
    assert await reason_of(validator, kid_token(rsa_key, "rsa-pinned", "PS256")) == ("key_mismatch")
    assert (await validator.validate(kid_token(ec_key, "ec", "ES256"))).sub == "user-1"
    assert (await validator.validate(kid_token(rsa_key, "rsa", "PS256"))).sub == "user-1"


async def test_jwks_token_signed_by_other_key_fails_signature(
    rsa_key: rsa.RSAPrivateKey, attacker_rsa_key: rsa.RSAPrivateKey, jwks_server: _JWKSServer
) -> None:
    token = kid_token(attacker_rsa_key, "k1")
    assert await reason_of(jwks_validator(jwks_server.url), token) == "bad_signature"

"""The bridge's socket registry without Redis: its indexes by user, token and session find
every socket under a key, however many share it, as sockets come and go (a key with one
socket keeps it without a set, for density)."""

from __future__ import annotations

from gateway_redis.sessions import id_digest
from middleware.jwt.claims import TokenClaims
from middleware.websocket._auth import Identity
from middleware.websocket._connection import Connection
from middleware.websocket._registry import Registry
from middleware.websocket.limits import WebSocketLimits
from tests.twins import idle_connection

LIMITS = WebSocketLimits()
ANN = id_digest("ann")


def claims(sub: str, jti: str, iat: int = 100) -> TokenClaims:
    return TokenClaims(
        sub=sub, iss="https://issuer", aud=("api",), exp=2_000_000_000, iat=iat, nbf=None,
        jti=jti, roles=(), scopes=(), raw={},
    )  # fmt: skip


def socket(user: str, token: TokenClaims | None = None, session: str | None = None) -> Connection:
    identity = Identity(
        subject=user, user=id_digest(user), method="token" if token else "session",
        cookie=False, claims=token, session_key=session,
    )  # fmt: skip
    return idle_connection(identity, limits=LIMITS)


def registry() -> Registry:
    return Registry(limits=LIMITS, store=object(), authenticator=None)  # type: ignore[arg-type]


async def test_a_users_sockets_are_counted_and_found_as_they_come_and_go() -> None:
    reg = registry()
    a, b, c = (socket("ann", claims("ann", f"t{n}")) for n in range(3))
    other = socket("bob", claims("bob", "tb"))
    for conn in (a, b, c, other):
        reg.add(conn)
    assert reg.count(ANN) == 3
    assert set(reg.of_user(ANN)) == {a, b, c}
    assert reg.remove(b)
    assert not reg.remove(b)  # once only
    assert set(reg.of_user(ANN)) == {a, c}
    assert reg.remove(a)
    assert reg.of_user(ANN) == [c]
    reg.add(a)  # back to two under the key
    assert set(reg.of_user(ANN)) == {a, c}
    for conn in (a, c):
        reg.remove(conn)
    assert (reg.count(ANN), reg.of_user(ANN)) == (0, [])
    assert reg.of_user(id_digest("bob")) == [other]


async def test_a_revoked_token_closes_every_socket_using_it_and_only_those() -> None:
    reg = registry()
    shared = claims("ann", "same")
    first, second = socket("ann", shared), socket("ann", shared)
    own = socket("ann", claims("ann", "own"))
    for conn in (first, second, own):
        reg.add(conn)
    reg.remove(second)
    reg.add(second)
    reg.on_revoked({"iss": "https://issuer", "jti": "same"})  # type: ignore[typeddict-item]
    assert (first.closing, second.closing, own.closing) == (4401, 4401, None)


async def test_a_refreshed_token_moves_its_socket_in_the_token_index() -> None:
    reg = registry()
    conn, neighbour = socket("ann", claims("ann", "old")), socket("ann", claims("ann", "old"))
    reg.add(conn)
    reg.add(neighbour)
    reg.retoken(conn, claims("ann", "new"))
    reg.on_revoked({"iss": "https://issuer", "jti": "old"})  # type: ignore[typeddict-item]
    assert (conn.closing, neighbour.closing) == (None, 4401)
    reg.on_revoked({"iss": "https://issuer", "jti": "new"})  # type: ignore[typeddict-item]
    assert conn.closing == 4401


async def test_a_cut_off_closes_the_subjects_sockets_on_tokens_issued_before_it() -> None:
    reg = registry()
    old, new = socket("ann", claims("ann", "a", iat=100)), socket("ann", claims("ann", "b", 300))
    reg.add(old)
    reg.add(new)
    reg.on_subject_revoked({"sub": "ann", "cutoff": 200})  # type: ignore[typeddict-item]
    assert (old.closing, new.closing) == (4401, None)

"""Re-authorizing live subscriptions, without Redis: PermissionCache.on_change and the
bridge's Reauthorizer on real Connection objects (issue 13 item 8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from typing import Any

import pytest

from gateway_redis.sessions import id_digest
from middleware import PermissionCache
from middleware.errors import ServiceUnavailable
from middleware.jwt import TokenClaims
from middleware.websocket._auth import Identity
from middleware.websocket._connection import Connection
from middleware.websocket._fanout import ChannelEntry
from middleware.websocket._reauthorize import Reauthorizer
from middleware.websocket.channels import ChannelPolicy, ChannelRule
from tests.twins import idle_connection

POLICY = ChannelPolicy(
    [
        ChannelRule("rooms:{room}", subscribe="rooms:{room}:join"),
        ChannelRule("notifications:{sub}", subscribe=True),
    ]
)


def claims(sub: str, roles: tuple[str, ...] = ("user",)) -> TokenClaims:
    payload = {"sub": sub, "roles": list(roles), "iss": "i", "aud": "a", "exp": 2**40, "iat": 1}
    return TokenClaims.from_json(json.dumps(payload).encode())


async def test_on_change_reports_invalidations_and_version_bumps_after_applying_them(
    permissions: PermissionCache,
) -> None:
    alice = claims("alice", ("admin",))
    await permissions.permissions(alice)
    seen: list[Any] = []

    def hook(subject: str | None) -> None:
        seen.append((subject, permissions.cached(alice)))  # applied before the hook runs

    remove = permissions.on_change(hook)
    await permissions.invalidate("alice")
    await permissions.permissions(alice)
    await permissions.bump_policy_version()
    assert seen == [("alice", None), (None, None)]
    remove()
    remove()  # idempotent
    await permissions.invalidate("alice")
    assert len(seen) == 2
    with pytest.raises(ValueError, match="callback"):
        permissions.on_change("not callable")  # type: ignore[arg-type]


class Principal:
    """A principal whose permissions the test changes; counts and can fail lookups."""

    def __init__(self, subject: str, granted: set[str]) -> None:
        self.subject = subject
        self.granted = granted
        self.calls = 0
        self.inflight = 0
        self.peak = 0
        self.failing = False

    async def permissions(self) -> Collection[str]:
        self.calls += 1
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(0)
            if self.failing:
                raise ServiceUnavailable("permission_source_unavailable")
            return frozenset(self.granted)
        finally:
            self.inflight -= 1


def socket(principal: Any, *channels: str) -> Connection:
    subject = principal.subject
    identity = Identity(subject=subject, user=id_digest(subject), method="token", cookie=False)
    conn = idle_connection(identity, principal=principal)
    for name in channels:
        conn.channels[name] = ChannelEntry(name)
    return conn


async def rounds(reauth: Reauthorizer, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while reauth.rounds < count:
        assert loop.time() < deadline, "the re-check task did not run"
        await asyncio.sleep(0.01)


def sent(conn: Connection) -> list[dict[str, Any]]:
    return [json.loads(text) for text in conn._take()]


class Sockets:
    """The registry's and the fan-out's part, in memory."""

    def __init__(self, *conns: Connection) -> None:
        self.conns = list(conns)
        self.unsubscribed: list[tuple[Connection, list[str]]] = []

    def of_user(self, digest: str) -> list[Connection]:
        return [c for c in self.conns if c.identity.user == digest]

    async def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        self.unsubscribed.append((conn, names))
        for name in names:
            conn.channels.pop(name, None)

    def reauthorizer(self) -> Reauthorizer:
        return Reauthorizer(
            policy=POLICY,
            conns=lambda: self.conns,
            of_user=self.of_user,
            unsubscribe=self.unsubscribe,
        )


async def test_a_subjects_sockets_lose_only_the_channels_no_longer_allowed() -> None:
    carol = Principal("carol", {"rooms:blue:join", "rooms:red:join"})
    dave = Principal("dave", {"rooms:blue:join"})
    a = socket(carol, "rooms:blue", "rooms:red", "notifications:carol")
    b = socket(carol, "rooms:red")
    d = socket(dave, "rooms:blue")
    sockets = Sockets(a, b, d)
    reauth = sockets.reauthorizer()
    carol.granted = {"rooms:red:join"}
    dave.granted = set()  # not announced: dave's socket is not re-checked
    reauth.subject_changed("carol")
    await reauth.check_round()
    assert sockets.unsubscribed == [(a, ["rooms:blue"])]
    assert set(a.channels) == {"rooms:red", "notifications:carol"}
    assert sent(a) == [{"type": "unsubscribed", "channels": ["rooms:blue"], "reason": "forbidden"}]
    assert sent(b) == []
    assert carol.calls == 2  # once per socket, not once per channel
    reauth.subject_changed(None)  # a version bump: everybody
    await reauth.check_round()
    assert sockets.unsubscribed[-1] == (d, ["rooms:blue"])


async def test_repeated_events_are_coalesced_into_one_round() -> None:
    carol = Principal("carol", {"rooms:blue:join"})
    conn = socket(carol, "rooms:blue")
    reauth = Sockets(conn).reauthorizer()
    task = asyncio.get_running_loop().create_task(reauth.run())
    try:
        for _ in range(1000):
            reauth.subject_changed("carol")
        reauth.subject_changed(None)
        await rounds(reauth, 1)
        await asyncio.sleep(0.05)
        assert reauth.rounds == 1
        assert carol.calls == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_many_sockets_are_checked_in_bounded_batches_letting_the_loop_run() -> None:
    carol = Principal("carol", {"rooms:blue:join"})
    conns = [socket(carol, "rooms:blue") for _ in range(200)]
    reauth = Sockets(*conns).reauthorizer()
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(ticker())
    reauth.subject_changed(None)
    await reauth.check_round()
    done = True
    await other
    assert carol.calls == 200
    assert carol.peak <= 32  # never more lookups at once than one batch
    assert ticks >= 200 // 32  # the loop ran other work between batches


async def test_unknown_permissions_keep_the_subscriptions_and_are_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    carol = Principal("carol", {"rooms:blue:join"})
    conn = socket(carol, "rooms:blue")
    sockets = Sockets(conn)
    reauth = sockets.reauthorizer()
    carol.failing = True
    carol.granted = set()
    task = asyncio.get_running_loop().create_task(reauth.run())
    try:
        reauth.subject_changed("carol")
        await rounds(reauth, 1)
        assert "rooms:blue" in conn.channels  # an outage is not a denial
        assert sent(conn) == []
        assert "subscriptions kept" in caplog.text
        carol.failing = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while "rooms:blue" in conn.channels:
            assert loop.time() < deadline, "the re-check was not retried"
            await asyncio.sleep(0.02)
        assert reauth.rounds == 2
        assert sent(conn)[0]["reason"] == "forbidden"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_closing_and_closed_sockets_are_skipped() -> None:
    carol = Principal("carol", set())
    closing = socket(carol, "rooms:blue")
    closing.close(1000)
    gone = socket(carol, "rooms:blue")
    sockets = Sockets(closing, gone)
    reauth = sockets.reauthorizer()
    reauth.subject_changed("carol")
    reauth.forget(gone)
    sockets.conns.remove(gone)
    await reauth.check_round()
    assert carol.calls == 0
    assert sockets.unsubscribed == []

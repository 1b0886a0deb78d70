"""The unit suite's guard: no network at all, so "runs without Redis" is checked, not hoped."""

from __future__ import annotations

import asyncio
import socket

import pytest

from middleware import JWTAuthenticator, PermissionCache, SessionManager
from tests.middleware.unit.conftest import SocketRefused
from tests.twins import MemoryPermissions, MemorySessionStore, MemoryValidator


def test_a_blocking_connection_attempt_is_refused() -> None:
    with socket.socket() as sock, pytest.raises(SocketRefused):
        sock.connect(("127.0.0.1", 6379))


async def test_an_asyncio_connection_attempt_is_refused() -> None:
    with pytest.raises(SocketRefused):
        await asyncio.open_connection("127.0.0.1", 6379)


async def test_components_built_on_twins_work_end_to_end_with_no_client(
    tokens: MemoryValidator, source: MemoryPermissions, store: MemorySessionStore
) -> None:
    authenticator = JWTAuthenticator(tokens, client=None)
    permissions = PermissionCache(source, client=None)
    sessions = SessionManager(store=store)
    token = tokens.issue("alice", roles=["user"])
    claims = (await authenticator.authenticate(token)).claims
    assert authenticator.cached(token) is not None  # L1 is on from the start: no bus to sync
    assert await permissions.permissions(claims) == frozenset({"orders:read"})
    assert permissions.cached(claims) == frozenset({"orders:read"})
    session = await sessions.create("alice", {"n": 1})
    assert sessions.cached(session.id) == session
    await sessions.delete(session.id)
    assert sessions.cached(session.id) is None
    assert authenticator.client is None
    assert permissions.client is None

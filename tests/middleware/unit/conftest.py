"""Unit tests of the middleware on in-memory twins (tests/twins.py): no Redis at all.

Two guards make "no Redis" checkable rather than a promise: a test here that asks for the
``redis_server`` fixture (directly or through ``client``, ``bus``...) fails at setup, and
every test runs with outbound socket connections refused (``socket.connect`` raises), so
a component that tried to reach Redis would fail loudly instead of quietly passing.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from middleware import JWTAuthenticator, PermissionCache, SessionManager
from tests.twins import MemoryPermissions, MemorySessionStore, MemoryValidator


class SocketRefused(AssertionError):
    """A unit test tried to open a network connection."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    fixtures = getattr(item, "fixturenames", ())
    if "redis_server" in fixtures:
        pytest.fail(f"{item.nodeid}: unit tests must not use a Redis server", pytrace=False)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every outbound connection for the duration of the test."""

    def refuse(self: socket.socket, address: Any) -> Any:
        raise SocketRefused(f"unit tests open no connections (tried {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def tokens() -> MemoryValidator:
    return MemoryValidator()


@pytest.fixture
def authenticator(tokens: MemoryValidator) -> JWTAuthenticator:
    return JWTAuthenticator(tokens, client=None)


@pytest.fixture
def source() -> MemoryPermissions:
    return MemoryPermissions(
        {"user": ["orders:read"], "admin": ["*"], "clerk": ["orders:*", "reports:read"]}
    )


@pytest.fixture
def permissions(source: MemoryPermissions) -> PermissionCache:
    return PermissionCache(source, client=None)


@pytest.fixture
def store() -> MemorySessionStore:
    return MemorySessionStore()


@pytest.fixture
def sessions(store: MemorySessionStore) -> SessionManager:
    return SessionManager(store=store)

"""The bridge's bounds and its counters: :class:`WebSocketLimits`, :class:`WebSocketStats`.

Values crossing the public boundary (frozen, slotted); :class:`WebSocketLimits` validates
itself. Re-exported by :mod:`middleware.websocket.bridge` and :mod:`middleware.websocket`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["WebSocketLimits", "WebSocketStats"]


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    """Bounds of one bridge. Sizes in bytes, times in seconds, rates per second.

    ``max_message_bytes`` caps a client frame (close 1009); also give the server the same
    limit (``uvicorn --ws-max-size``). ``queue_size`` bounds each socket's outbox
    (messages); ``overflow`` is ``"drop_oldest"`` (then ``resync``) or ``"close"`` (1013).
    ``rate``/``burst`` are a token bucket for client frames; after ``abuse_threshold``
    strikes (decaying by one per second) the socket is closed with 1008.
    ``max_connections_per_user`` is per process. ``max_channels`` per socket.
    ``batch_max_bytes`` bounds one ``batch`` frame. After ``ping_interval`` seconds without
    a frame from the client the server sends ``{"type":"ping"}``; after ``idle_timeout`` it
    closes with 4408 (None disables either). ``close_timeout`` is how long a close may wait
    for a peer that stopped reading. ``presence_ttl`` (at least 1) is how long a socket's
    presence outlives its instance's last heartbeat (sent every third of it). Raises
    ``ValueError`` for bad values.
    """

    max_message_bytes: int = 64 * 1024
    queue_size: int = 100
    overflow: Literal["drop_oldest", "close"] = "drop_oldest"
    rate: float = 30.0
    burst: int = 60
    abuse_threshold: int = 30
    max_connections_per_user: int = 32
    max_channels: int = 100
    batch_max_bytes: int = 256 * 1024
    ping_interval: float | None = 30.0
    idle_timeout: float | None = 90.0
    close_timeout: float = 1.0
    presence_ttl: float = 30.0

    def __post_init__(self) -> None:
        ints = {
            "max_message_bytes": (256, 2**30),
            "queue_size": (1, 1_000_000),
            "burst": (1, 1_000_000),
            "abuse_threshold": (1, 1_000_000),
            "max_connections_per_user": (1, 10_000_000),
            "max_channels": (1, 100_000),
            "batch_max_bytes": (1024, 2**30),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
        if self.overflow not in ("drop_oldest", "close"):
            raise ValueError("overflow must be 'drop_oldest' or 'close'")
        _seconds("rate", self.rate)
        _seconds("close_timeout", self.close_timeout)
        _seconds("presence_ttl", self.presence_ttl)
        if self.presence_ttl < 1:
            raise ValueError(f"presence_ttl must be at least 1 second, got {self.presence_ttl!r}")
        for name in ("ping_interval", "idle_timeout"):
            if getattr(self, name) is not None:
                _seconds(name, getattr(self, name))
        ping, idle = self.ping_interval, self.idle_timeout
        if ping is not None and idle is not None and idle <= ping:
            raise ValueError("idle_timeout must be longer than ping_interval")


def _seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class WebSocketStats:
    """A snapshot: open sockets, channels, frames queued, messages dropped (ever)."""

    connections: int
    channels: int
    queued: int
    dropped: int

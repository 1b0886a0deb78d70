"""Failed-login throttling for the example gateway, counted in Redis so every instance shares it.

A fixed window per (username, client address): after ``limit`` failures within ``window``
seconds, further attempts for that pair answer 429 with ``Retry-After`` until the window
ends, whatever the password. A success clears the pair's count. Keys carry a SHA-256 digest
of the pair, never the username or address themselves.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from gateway_redis import RedisClient

# INCR and the window's expiry in one step: a crash between the two cannot leave a counter
# that never expires. Returns [failures, milliseconds left in the window].
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""
_CHECK = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
return {n, redis.call('PTTL', KEYS[1])}
"""


class LoginThrottle:
    """Counts failed logins per (username, address); see the module docstring."""

    def __init__(self, client: RedisClient, *, limit: int = 5, window: float = 60.0) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        self._client = client
        self.limit = limit
        self._window_ms = max(1, int(window * 1000))

    def _key(self, username: str, address: str) -> str:
        digest = hashlib.sha256(f"{username}\0{address}".encode()).hexdigest()[:32]
        return self._client.key(f"login-failures:{digest}")

    async def retry_after(self, username: str, address: str) -> int | None:
        """Seconds until the pair may try again, or None when it may try now.

        Raises ``RedisUnavailable`` when Redis cannot be asked (the caller answers 503).
        """
        key = self._key(username, address)
        reply: Any = await self._client.execute(
            "login.check", lambda r: r.eval(_CHECK, 1, key), miss=True
        )
        failures, left_ms = int(reply[0]), int(reply[1])
        if failures < self.limit:
            return None
        return max(1, math.ceil(left_ms / 1000)) if left_ms > 0 else 1

    async def failed(self, username: str, address: str) -> int:
        """Count one failure; returns the failures in the current window."""
        key = self._key(username, address)
        reply: Any = await self._client.execute(
            "login.fail", lambda r: r.eval(_FAIL, 1, key, self._window_ms), retry=False
        )
        return int(reply[0])

    async def succeeded(self, username: str, address: str) -> None:
        """Forget the pair's failures."""
        key = self._key(username, address)
        await self._client.execute("login.clear", lambda r: r.delete(key))

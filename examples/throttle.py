"""Login throttling for the example gateway, counted in Redis so every instance shares it.

Two fixed-window budgets, both counted with :meth:`gateway_redis.RedisClient.hit` (one
atomic round trip each) BEFORE the password is checked, so concurrent guesses cannot all
slip under the limit between a check and a count:

- per (username, client address): ``limit`` attempts within ``window`` seconds; a
  successful login clears the pair's count (a user who gets in is not held back);
- per username, from any address: ``account_limit`` attempts within ``account_window``
  seconds, so guesses spread over many addresses are bounded too; a successful login
  gives its own attempt back (it was not a guess), the failures stay counted.

Past either budget an attempt answers 429 with ``Retry-After`` (the longer wait of the
budgets exceeded), whatever the password, without verifying it. The per-account budget
means that an attacker can hold an account's logins back for ``account_window``; that is
the price of bounding distributed guessing (a real identity provider adds a second
factor or a CAPTCHA instead). The client address comes from the caller (the example uses
:class:`middleware.TrustedProxies`). Keys carry a SHA-256 digest of the username and
address, never the values themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import math

from gateway_redis import RedisClient, WindowHits


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _wait(hits: WindowHits) -> int:
    return max(1, math.ceil(hits.reset_after))


class LoginThrottle:
    """Counts login attempts per (username, address) and per username; see the module
    docstring. Raises ``ValueError`` for bad limits or windows."""

    def __init__(
        self,
        client: RedisClient,
        *,
        limit: int = 5,
        window: float = 60.0,
        account_limit: int = 20,
        account_window: float = 300.0,
    ) -> None:
        self._client = client
        self.limit = _positive_int("limit", limit)
        self.window = _seconds("window", window)
        self.account_limit = _positive_int("account_limit", account_limit)
        self.account_window = _seconds("account_window", account_window)

    @staticmethod
    def _digest(*parts: str) -> str:
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def _pair_key(self, username: str, address: str) -> str:
        return f"login-attempts:pair:{self._digest(username, address)}"

    def _account_key(self, username: str) -> str:
        return f"login-attempts:account:{self._digest(username)}"

    async def attempt(self, username: str, address: str) -> int | None:
        """Count one login attempt; returns None when it may be verified, else the seconds
        to wait (the caller answers 429 with ``Retry-After``).

        Raises ``RedisUnavailable`` when Redis cannot count it (the caller answers 503: an
        attempt that cannot be counted is not verified).
        """
        pair, account = await asyncio.gather(
            self._client.hit(self._pair_key(username, address), self.window),
            self._client.hit(self._account_key(username), self.account_window),
        )
        waits = [_wait(pair)] if pair.count > self.limit else []
        waits += [_wait(account)] if account.count > self.account_limit else []
        return max(waits) if waits else None

    async def succeeded(self, username: str, address: str) -> None:
        """A verified login: forget the pair's attempts and give the account its one back."""
        await asyncio.gather(
            self._client.delete(self._pair_key(username, address)),
            self._client.hit(self._account_key(username), self.account_window, weight=-1),
        )

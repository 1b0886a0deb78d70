"""Bounded memos of pure parses on the hot path (private).

A warm request carries the same ``Authorization`` and ``Cookie`` header bytes as the last
one of its client. Parsing them again gives the same token and session ID, so the parse is
remembered by the raw header value: one dict lookup instead of decoding, splitting and
stripping, and the remembered ``str`` keeps its hash, which makes the L1 lookups that
follow cheaper too. Only results are kept (never a verdict on the credential), so nothing
here ever needs invalidating. In process memory only.

Keys come from clients, so a memo is bounded three ways: an entry whose key is over
``max_key`` bytes is not remembered, and the memo is emptied before it would exceed
``max_entries`` entries or ``budget`` bytes (keys, values and a fixed per-entry overhead).
A memo full of the largest entries a client can send holds about ``budget`` bytes,
whatever the traffic.
The checks run only when an entry is stored (a miss): a hit is one lookup in
:attr:`Memo.entries`, which the hot path reads directly.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["BUDGET", "ENTRY_OVERHEAD", "MAX_ENTRIES", "MAX_KEY", "Memo"]

MAX_ENTRIES = 1024
MAX_KEY = 4096  # bytes: longer header values are parsed every time
BUDGET = 1 << 20  # bytes per memo
# About what a small entry costs beyond its key and value bytes: the two objects' headers
# and its slot in the dict (CPython, 64-bit).
ENTRY_OVERHEAD = 160

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """A dict bounded in entries and bytes; see the module docstring.

    ``entries`` is the dict itself (read it directly; store only with :meth:`remember`),
    the same object for the memo's life. Not thread-safe (an event loop's memo).
    """

    __slots__ = ("_budget", "_max_entries", "_max_key", "_used", "entries")

    def __init__(
        self,
        *,
        max_key: int | None = None,
        max_entries: int | None = None,
        budget: int | None = None,
    ) -> None:
        """Unset bounds are this module's :data:`MAX_KEY`, :data:`MAX_ENTRIES` and
        :data:`BUDGET` as they are when the memo is built."""
        self.entries: dict[K, V] = {}
        self._max_key = MAX_KEY if max_key is None else max_key
        self._max_entries = MAX_ENTRIES if max_entries is None else max_entries
        self._budget = BUDGET if budget is None else budget
        self._used = 0

    def remember(self, key: K, value: V, key_size: int, value_size: int = 0) -> None:
        """Store ``key -> value`` (``key_size`` and ``value_size``: their lengths in bytes or
        characters) unless the key is over ``max_key``; empties the memo first when it is
        full."""
        if key_size > self._max_key:
            return
        cost = key_size + value_size + ENTRY_OVERHEAD
        if len(self.entries) >= self._max_entries or self._used + cost > self._budget:
            self.entries.clear()
            self._used = 0
        self.entries[key] = value
        self._used += cost

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

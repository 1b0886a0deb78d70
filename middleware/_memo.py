"""Bounded memos of pure parses on the hot path (private).

A warm request carries the same ``Authorization`` and ``Cookie`` header bytes as the last
one of its client. Parsing them again gives the same token and session ID, so the parse is
remembered by the raw header value: one dict lookup instead of decoding, splitting and
stripping, and the remembered ``str`` keeps its hash, which makes the L1 lookups that
follow cheaper too. Only results are kept (never a verdict on the credential), so nothing
here ever needs invalidating. In process memory only, bounded in entries and key size.
"""

from __future__ import annotations

__all__ = ["MAX_ENTRIES", "MAX_KEY", "remember"]

MAX_ENTRIES = 1024
MAX_KEY = 4096  # bytes: longer header values are parsed every time


def remember(memo: dict[bytes, str], key: bytes, value: str) -> None:
    """Store ``key -> value`` in ``memo``, emptying it first when it is full."""
    if len(key) <= MAX_KEY:
        if len(memo) >= MAX_ENTRIES:
            memo.clear()
        memo[key] = value

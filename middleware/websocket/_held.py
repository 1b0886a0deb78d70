"""Live messages held back from sockets while a gap is filled from history (private).

Two users: a socket subscribing with history (:mod:`~middleware.websocket._recovery`: the
socket's own :class:`Held`, then a *floor* once caught up) and a channel whose hub
subscription lost messages (:mod:`~middleware.websocket._fanout`: the whole channel's
sockets held while its history is read, then :func:`mended`). Never awaits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway_redis.pubsub import Message, PayloadPage, Position
from middleware.websocket import _protocol as proto
from middleware.websocket._connection import Frame

if TYPE_CHECKING:
    from middleware.websocket._connection import Connection
    from middleware.websocket._fanout import ChannelEntry

__all__ = ["Held", "mended", "pass_held"]


class Held:
    """Live messages of one channel kept for one socket while it catches up from history
    (see :mod:`middleware.websocket._recovery`): at most ``limit``; ``gap`` is set when
    one was lost (overflow, or the hub's connection dropped). Once caught up, ``floor`` is
    the last position sent: live messages up to it (still on their way from Redis when
    history was read) are skipped, and the first one past it makes the socket a plain
    subscriber."""

    __slots__ = ("floor", "gap", "limit", "messages")

    def __init__(self, limit: int) -> None:
        self.messages: list[Message] = []
        self.limit = limit
        self.gap = False
        self.floor: Position | None = None

    def add(self, message: Message) -> None:
        """Keep ``message``, or mark a gap when full or when one came before it."""
        if message.gap_before:
            self.gap = True
        if len(self.messages) < self.limit:
            self.messages.append(message)
        else:
            self.gap = True


def pass_held(entry: ChannelEntry, message: Message) -> list[Connection]:
    # Held sockets keep the message; caught-up ones get it unless it is at or before their
    # floor, and join the plain subscribers at the first one past it (while the channel is
    # not being mended). Returns the sockets to push to besides ``entry.sockets``.
    extra: list[Connection] = []
    text = None
    for conn, held in list(entry.held.items()):
        floor = held.floor
        if floor is None:
            held.add(message)
            continue
        if message.gap_before:
            text = text or proto.resync_frame([entry.name])
            conn.push_control(text)
        if message.offset is None:
            extra.append(conn)
        elif message.epoch != floor.epoch or message.offset > floor.offset:
            if entry.mending is not None:
                # The channel's own gap is being mended: what mended() sends its sockets
                # may be what this one got from history already. It joins them after.
                extra.append(conn)
            else:
                del entry.held[conn]
                entry.sockets.add(conn)  # pushed to with the other subscribers
    return extra


def mended(
    entry: ChannelEntry,
    page: PayloadPage | None,
    held: Held,
    frame: Callable[[str, Message], Frame],
) -> int:
    """Send ``entry``'s sockets what history gave back (``page``: the stored JSON text,
    never decoded; None when it could not be read) and then what was ``held``, each
    offset once; ``resync`` first when the gap cannot be filled. Returns the number of
    messages sent."""
    missed = None if held.gap else _from_history(entry, page)
    if missed is None:
        text = proto.resync_frame([entry.name])
        for conn in entry.sockets:
            conn.push_control(text)
        missed = []
    for text in missed:
        shared = Frame(entry.name, text)
        for conn in entry.sockets:
            conn.push(shared)
    sent = len(missed)
    for message in held.messages:
        last = entry.last
        if message.offset is not None:
            if last is not None and last.epoch == message.epoch and message.offset <= last.offset:
                continue
            entry.last = Position(message.epoch or "", message.offset)
        shared = frame(entry.name, message)
        for conn in entry.sockets:
            conn.push(shared)
        sent += 1
    return sent


def _from_history(entry: ChannelEntry, page: PayloadPage | None) -> list[str] | None:
    # The message frames of what ``page`` holds past ``entry.last`` (moved to the last of
    # them), built as a client's recover builds them; None when it does not fill the gap.
    if page is None or not page.recovered:
        return None
    payloads, epoch, first = page.payloads, page.position.epoch, page.first
    if payloads and first + len(payloads) - 1 != page.position.offset:
        return None  # more than one read's worth: a resync is cheaper
    last = entry.last
    if last is not None and last.epoch == epoch and first <= last.offset:
        payloads = payloads[last.offset + 1 - first :]  # sent already
        first = last.offset + 1
    if payloads:
        entry.last = Position(epoch, first + len(payloads) - 1)
    return proto.history_frames(entry.name, epoch, first, payloads)

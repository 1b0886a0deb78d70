"""Channels with history on the bridge: publishing with positions, and catching a
subscriber up from history without a gap or a duplicate (private).

A subscribe that names a channel with history (its rule has ``history_size``) goes:

1. every new channel of the request is subscribed *held*: live messages are kept for the
   socket, not sent (:class:`~middleware.websocket._fanout.Held`);
2. for each history channel, its position is read (``recover`` absent) or what followed
   the client's position (``recover``): all of it, or "impossible";
3. if a held channel lost a message meanwhile (its holder overflowed, or the hub's
   connection dropped), the holder is renewed and what followed the last known position
   read again (a few times at most; then ``resync``);
4. then, with no await in between: the ``subscribed`` reply (``positions``,
   ``recovered``), the recovered messages, the held ones newer than what was sent (one
   offset is never sent twice; a message of another epoch always is), and the socket
   joins the channel's live fan-out. Nothing of these channels can come before the reply,
   nor a newer message before an older one;
5. live messages up to the last offset sent can still arrive (history is read on a
   command connection, pub/sub comes on another): they are skipped, until the first one
   past it makes the socket a plain subscriber of the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from gateway_redis import ChannelHistory, Position
from middleware.websocket import _protocol as proto

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient
    from middleware.websocket._connection import Connection
    from middleware.websocket._fanout import Fanout
    from middleware.websocket.channels import ChannelPolicy

__all__ = ["RECOVER_BYTES", "Catchup", "Histories", "catch_up", "deliver", "positions_of"]

_RETRIES: Final = 3  # re-reads after a gap while catching up, before settling for resync
_MAX_RECOVER: Final = 10_000  # messages given back at most (ChannelHistory.read's limit)
RECOVER_BYTES: Final = 4 * 1024 * 1024
"""Payload bytes one ``subscribe`` may recover in all (its channels together): a client
cannot make a socket hold more than this at once. Beyond it: ``recovered: false``."""


class Histories:
    """The :class:`ChannelHistory` of each history setting in the policy, made once."""

    def __init__(self, client: RedisClient, policy: ChannelPolicy) -> None:
        self._client = client
        self._policy = policy
        self._made: dict[tuple[int, float], ChannelHistory] = {}
        # Position reads not sent yet, by history and channel: callers join them.
        self._next_read: dict[tuple[int, str], asyncio.Future[Position]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    def of(self, channel: str) -> ChannelHistory | None:
        """The history of ``channel``, or None when its rules keep none."""
        rule = self._policy.history(channel)
        if rule is None or rule.history_size is None or rule.history_ttl is None:
            return None
        key = (rule.history_size, rule.history_ttl)
        history = self._made.get(key)
        if history is None:
            history = ChannelHistory(self._client, size=key[0], ttl=key[1])
            self._made[key] = history
        return history

    async def position(self, history: ChannelHistory, channel: str) -> Position:
        """``history.position(channel)``, one read for every caller that asks before it is
        sent: a thousand sockets subscribing at once cost a few reads, not a thousand (and
        do not empty the pool). A caller only ever joins a read sent after it asked, so
        the position is never older than its (held) subscription."""
        key = (id(history), channel)
        batch = self._next_read.get(key)
        if batch is None:
            batch = asyncio.get_running_loop().create_future()
            batch.add_done_callback(_retrieve)
            self._next_read[key] = batch
            task = asyncio.ensure_future(self._read(key, history, channel, batch))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)
        return await asyncio.shield(batch)

    async def _read(
        self,
        key: tuple[int, str],
        history: ChannelHistory,
        channel: str,
        batch: asyncio.Future[Position],
    ) -> None:
        await asyncio.sleep(0)  # the callers of this turn of the loop join
        del self._next_read[key]  # from here on, callers wait for the next read
        try:
            position = await history.position(channel)
        except asyncio.CancelledError:
            batch.cancel()
            raise
        except Exception as exc:  # RedisUnavailable...: every caller gets it
            batch.set_exception(exc)
        else:
            batch.set_result(position)

    async def publish(self, channel: str, data: Any) -> tuple[int, Position | None]:
        """Publish ``data`` on ``channel``, with history when its rule keeps some:
        ``(receivers, position or None)``. Raises what the library's publish raises."""
        history = self.of(channel)
        if history is None:
            return await self._client.publish(channel, data), None
        sent = await history.publish(channel, data)
        return sent.receivers, sent.position


@dataclass(slots=True)
class Catchup:
    """One channel's catch-up: where the socket is, what to send before going live."""

    name: str
    history: ChannelHistory | None
    position: Position | None = None  # the last offset to send (the channel's, at first)
    reported: Position | None = None  # the reply's position: the channel's when subscribed
    recovered: bool | None = None  # None: no recover asked
    frames: list[str] = field(default_factory=list)  # the message frames to send, in order
    resync: bool = False


async def catch_up(
    fanout: Fanout,
    conn: Connection,
    histories: Histories,
    names: Iterable[str],
    recover: dict[str, tuple[str, int]],
) -> list[Catchup]:
    """Steps 2 and 3 of the module docstring for the held channels ``names``. Raises
    :class:`~gateway_redis.RedisUnavailable` (the caller unsubscribes them)."""
    jobs = []
    budget = RECOVER_BYTES
    for name in names:
        job = Catchup(name, histories.of(name))
        jobs.append(job)
        history = job.history
        if history is None:
            continue
        since = recover.get(name)
        if since is None:
            job.position = job.reported = await histories.position(history, name)
            continue
        limit = min(history.size, _MAX_RECOVER)
        # As text, never decoded: a thousand messages cost no object each (issue 15).
        page = await history.read_payloads(name, since=since, limit=limit)
        payloads = page.payloads
        complete = page.first + len(payloads) - 1 == page.position.offset or not payloads
        size = sum(map(len, payloads))
        job.recovered = page.recovered and complete and size <= budget
        if job.recovered:
            budget -= size
            job.frames = proto.history_frames(name, page.position.epoch, page.first, payloads)
        job.position = job.reported = page.position
    for job in jobs:
        await _mend(fanout, conn, job)
    return jobs


async def _mend(fanout: Fanout, conn: Connection, job: Catchup) -> None:
    # Step 3: a gap among the held messages is filled from history, or reported.
    for _ in range(_RETRIES):
        held = fanout.held(conn, job.name)
        if held is None or not held.gap:
            return
        if job.history is None or job.position is None:
            break
        fresh = fanout.rehold(conn, job.name)
        assert fresh is not None
        page = await job.history.read(job.name, since=job.position, limit=_MAX_RECOVER)
        if not page.recovered:
            break
        job.frames.extend(fanout.frame(job.name, m).text for m in page.messages)
        if page.messages:
            last = page.messages[-1]
            job.position = Position(page.position.epoch, last.offset or 0)
    job.resync = True


def deliver(fanout: Fanout, conn: Connection, job: Catchup) -> None:
    """Step 4 for one channel, after the reply was queued: no awaits."""
    held = fanout.held(conn, job.name)
    if held is None:  # unsubscribed meanwhile
        return
    frames = job.frames
    position = job.position
    for message in held.messages:
        if position is not None and message.offset is not None:
            if message.epoch == position.epoch and message.offset <= position.offset:
                continue  # sent already (or from before the position the client was given)
            position = Position(message.epoch or "", message.offset)
        frames.append(fanout.frame(job.name, message).text)
    if frames:  # as replies, one run: never dropped (bounded by the history size)
        conn.push_control(frames)
    if job.resync or held.gap:
        conn.push_control(proto.resync_frame([job.name]))
    # Messages up to the position may still be on their way from Redis (history was read
    # on another connection): they are skipped when they come.
    fanout.release(conn, job.name, position)


def _retrieve(batch: asyncio.Future[Position]) -> None:
    # A read whose callers all left: its error has nobody to reach.
    if not batch.cancelled():
        batch.exception()


def positions_of(jobs: Iterable[Catchup]) -> dict[str, dict[str, Any]]:
    """The reply's ``positions``: where each history channel was when subscribed."""
    return {
        job.name: {"epoch": job.reported.epoch, "offset": job.reported.offset}
        for job in jobs
        if job.reported is not None
    }

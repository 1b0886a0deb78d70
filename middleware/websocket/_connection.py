"""One accepted WebSocket: its bounded outbox, its writer task and its reader (private).

Frames reach a socket through :meth:`Connection.push` (messages, shared between sockets,
droppable) and :meth:`~Connection.push_control` (replies, errors, resyncs, pings, and
recovered messages by the run: never dropped). Neither ever waits: they append to the
outbox and wake the writer. The writer
takes *everything* queued each time it wakes and sends it as one frame (one ``batch``
frame when more than one is waiting), so a slow socket costs one send per wake-up, not one
per message. The outbox holds at most ``queue_size`` messages: on overflow the oldest
message is dropped and the channel gets a ``resync`` (policy ``"drop_oldest"``), or the
socket is closed with 1013 (policy ``"close"``). Replies are bounded by back-pressure: the
reader stops reading while ``queue_size`` replies are waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from starlette.types import Receive, Send

from gateway_redis.support import cancel_and_wait, log_fields
from middleware.telemetry import websocket_instruments
from middleware.websocket import _protocol as proto

if TYPE_CHECKING:
    from middleware.websocket._auth import Identity
    from middleware.websocket._fanout import ChannelEntry
    from middleware.websocket.bridge import WebSocketLimits
    from middleware.websocket.channels import Principal

__all__ = ["Connection", "Frame"]

_log = logging.getLogger("middleware.websocket.bridge")
_COMPONENT = "websocket"
_CLOSE_GONE: Final = -1  # the peer went away: nothing to send
_YIELD_EVERY: Final = 32  # client frames handled before the reader lets other tasks run


class Frame:
    """One outgoing frame. Message frames (``channel`` set) are built once per Redis
    message and shared by every socket; control frames (``channel`` None) are per socket,
    alone (``text``) or many in a *run* (``run``, queued as one entry)."""

    __slots__ = ("channel", "run", "text")

    def __init__(self, channel: str | None, text: str, run: list[str] | None = None) -> None:
        self.channel = channel
        self.text = text
        self.run = run


class Connection:
    """State of one accepted socket; see the module docstring. Kept small (a server holds
    tens of thousands): the writer runs in the task serving the socket (:meth:`run`), the
    reader in one more; either waits on a future made only while it waits."""

    __slots__ = (
        "_control",
        "_cut",
        "_drop_oldest",
        "_dropped_counter",
        "_full",
        "_handle",
        "_lost",
        "_messages",
        "_queue",
        "_room",
        "_stamp",
        "_strike_stamp",
        "_strikes",
        "_task",
        "_timer",
        "_tokens",
        "_waiter",
        "channels",
        "close_reason",
        "closing",
        "dropped",
        "finished",
        "granted",
        "identity",
        "last_ping",
        "last_rx",
        "limits",
        "principal",
        "receive",
        "send",
    )

    def __init__(
        self,
        *,
        send: Send,
        receive: Receive,
        identity: Identity,
        principal: Principal,
        limits: WebSocketLimits,
        handle: Callable[[Connection, str], Awaitable[None]],
    ) -> None:
        self.send = send
        self.receive = receive
        self.identity = identity
        self.principal = principal
        self.limits = limits
        self._handle = handle
        self.channels: dict[str, ChannelEntry] = {}
        self.granted: set[str] | None = None  # channels the server subscribed (server_api)
        self._queue: list[Frame] = []
        self._messages = 0
        self._control = 0
        self._lost: set[str] | None = None  # channels that lost messages (resync owed)
        self._waiter: asyncio.Future[None] | None = None  # the idle writer's
        self._full = False  # replies pile up: the reader waits (back-pressure) on _room
        self._room: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None  # the one serving the socket (run)
        self._timer: asyncio.TimerHandle | None = None  # cuts off a close that hangs (_cut)
        self._cut = False
        self._drop_oldest = limits.overflow == "drop_oldest"
        self._dropped_counter = websocket_instruments().ws_dropped
        self.dropped = 0
        self.closing: int | None = None
        self.close_reason = ""
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        self.last_rx = self.last_ping = now
        self._tokens = float(limits.burst)
        self._stamp = self._strike_stamp = now
        self._strikes = 0.0

    @property
    def queued(self) -> int:
        """Frames waiting in the outbox."""
        return self._messages + self._control

    # -- producers (never wait) ---------------------------------------------------------

    def push(self, frame: Frame) -> None:
        """Queue a shared message frame; applies the overflow policy."""
        if self.closing is not None:
            return
        if self._messages >= self.limits.queue_size:
            if not self._drop_oldest:
                self.close(1013, "queue overflow")
                return
            self._drop_one()
        self._queue.append(frame)
        self._messages += 1
        self._wake()

    def push_control(self, text: str | list[str]) -> None:
        """Queue a reply, error, resync or ping (never dropped); a list of them (a run, e.g.
        the messages a socket catches up with: kept as is, do not change it) in one entry."""
        if self.closing is not None:
            return
        if isinstance(text, str):
            self._queue.append(Frame(None, text))
            self._control += 1
        else:
            self._queue.append(Frame(None, "", text))
            self._control += len(text)
        if self._control >= self.limits.queue_size:
            self._full = True
        self._wake()

    def _wake(self) -> None:
        _resolve(self._waiter)
        self._waiter = None

    def _make_room(self) -> None:
        _resolve(self._room)
        self._full, self._room = False, None

    def _drop_one(self) -> None:
        queue = self._queue
        # Rarely replies are at the head: then the oldest message behind them goes.
        index = next(i for i, f in enumerate(queue) if f.channel is not None)
        dropped = queue.pop(index)
        assert dropped.channel is not None
        if self._lost is None:
            self._lost = set()
        self._lost.add(dropped.channel)
        self._messages -= 1
        self.dropped += 1
        self._dropped_counter.add(1)

    def forget_channel(self, channel: str) -> None:
        """Discard queued messages of ``channel`` (after unsubscribing from it)."""
        if self._lost is not None:
            self._lost.discard(channel)
        if self.granted is not None:
            self.granted.discard(channel)
        if any(f.channel == channel for f in self._queue):
            kept = [f for f in self._queue if f.channel != channel]
            self._messages -= len(self._queue) - len(kept)
            self._queue = kept

    def close(self, code: int, reason: str = "") -> None:
        """Ask the socket to close with ``code`` (the first request wins). Never waits."""
        if self.closing is None:
            self.closing = int(code)
            self.close_reason = reason
            self._wake()
            self._make_room()
            self._arm_cut()

    def _arm_cut(self) -> None:
        # The writer gets close_timeout to send what is queued and the close frame (none
        # when the peer is gone); a peer that stopped reading is then cut off.
        task = self._task
        if task is not None and not task.done() and self._timer is None:
            delay = 0.0 if self.closing == _CLOSE_GONE else self.limits.close_timeout
            self._timer = task.get_loop().call_later(delay, self._cut_off)

    def _cut_off(self) -> None:
        task = self._task
        if task is not None and not task.done() and not self._cut:
            self._cut = True
            task.cancel()

    # -- rate limiting --------------------------------------------------------------------

    def allow(self, request_id: proto.RequestId) -> bool:
        """Token bucket for client frames; answers ``rate_limited`` or closes 1008."""
        limits = self.limits
        now = time.monotonic()
        self._tokens = min(float(limits.burst), self._tokens + (now - self._stamp) * limits.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        # Strikes decay at one per second: a short burst is forgiven, a flood is not.
        self._strikes = max(0.0, self._strikes - (now - self._strike_stamp)) + 1.0
        self._strike_stamp = now
        if self._strikes > limits.abuse_threshold:
            self.close(1008, "rate limit exceeded")
        else:
            self.push_control(
                proto.error_frame("rate_limited", "Too many messages; slow down.", request_id)
            )
        return False

    # -- the socket's tasks ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until it closes: the writer runs here, the reader in a task of
        its own; returns once both have ended."""
        task = self._task = asyncio.current_task()
        assert task is not None
        reader = task.get_loop().create_task(self._read(), name="gateway-ws-reader")
        reader.add_done_callback(self._reader_done)
        failure: BaseException | None = None
        try:
            if self.closing is not None:
                self._arm_cut()
            await self._write()
        except asyncio.CancelledError:
            if not self._cut:
                raise
            # Cut off by _cut_off (close_timeout over): not a cancellation of this task.
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None and uncancel() > 0:
                raise
        except Exception as exc:
            failure = exc  # a send failed: the peer is gone
            self.close(_CLOSE_GONE)
        finally:
            self._task = None  # no more cut-offs: this task is ending
            if self._timer is not None:
                self._timer.cancel()
            await cancel_and_wait(reader)
            error = None if reader.cancelled() else reader.exception()
            for result in (failure, error):
                if isinstance(result, Exception) and not _is_disconnect(result):
                    _log.warning(
                        "websocket task failed: %r",
                        result,
                        extra=log_fields(_COMPONENT, "websocket_task_failed"),
                    )
            if not self.finished.done():
                self.finished.set_result(None)

    def _reader_done(self, reader: asyncio.Task[None]) -> None:
        if self.closing is None:
            self.close(1011, "internal error")  # the reader failed

    async def _read(self) -> None:
        receive, limits = self.receive, self.limits
        max_bytes = limits.max_message_bytes
        handled = 0
        while self.closing is None:
            if self._full:
                # Replies pile up: stop reading (back-pressure) until the writer took them.
                self._room = room = asyncio.get_running_loop().create_future()
                await room
                continue
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.close(_CLOSE_GONE)
                return
            if kind != "websocket.receive":
                continue
            self.last_rx = time.monotonic()
            text: str | None = message.get("text")
            if text is None:
                raw: bytes = message.get("bytes") or b""
                if len(raw) > max_bytes:
                    self.close(1009, "message too big")
                elif self.allow(None):
                    self.push_control(
                        proto.error_frame("bad_request", "Binary frames are not supported.")
                    )
                continue
            if len(text) > max_bytes // 4 and len(text.encode("utf-8", "replace")) > max_bytes:
                self.close(1009, "message too big")
                return
            handled += 1
            if handled % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # frames buffered by the server: let others run
            try:
                await self._handle(self, text)
            except Exception:
                _log.exception(
                    "websocket request failed",
                    extra=log_fields(_COMPONENT, "websocket_request_failed"),
                )
                self.push_control(proto.error_frame("internal", "Internal error."))

    async def _write(self) -> None:
        send = self.send
        loop = asyncio.get_running_loop()
        while self.closing is None:
            if not self._queue:
                self._waiter = waiter = loop.create_future()
                await waiter
                continue
            for text in self._take():
                await send({"type": "websocket.send", "text": text})
        if self.closing != _CLOSE_GONE:
            # What is queued (at most the bounded outbox) goes out before the close frame,
            # so a client learns why (rate_limited...); a stalled one is cut off (_arm_cut).
            for text in self._take():
                await send({"type": "websocket.send", "text": text})
            close = {"type": "websocket.close", "code": self.closing, "reason": self.close_reason}
            await send(close)

    def _take(self) -> list[str]:
        """Everything queued, as frames to send: one frame or batches of bounded size."""
        queue, frames = self._queue, []
        if self._lost:
            lost = sorted(c for c in self._lost if c in self.channels)
            self._lost = None
            if lost:
                frames.append(proto.resync_frame(lost))
        for frame in queue:
            if frame.run is None:
                frames.append(frame.text)
            else:
                frames.extend(frame.run)
        queue.clear()
        self._messages = self._control = 0
        self._make_room()
        return proto.batched(frames, self.limits.batch_max_bytes)


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    """Wake whoever waits on ``waiter`` (if anyone)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _is_disconnect(exc: BaseException) -> bool:
    # uvicorn raises ClientDisconnected (an OSError), other servers OSError or RuntimeError
    # ("Unexpected ASGI message ... after sending 'websocket.close'") once the peer is gone.
    return isinstance(exc, (OSError, RuntimeError, asyncio.CancelledError))

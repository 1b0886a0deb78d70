"""uvicorn's sans-I/O WebSocket protocol, keeping less per open socket (optional integration).

::

    uvicorn examples.gateway:app --ws middleware.uvicorn_protocol:LeanWebSocketProtocol
    uvicorn.run(app, ws=LeanWebSocketProtocol)          # or programmatically

A gateway holds tens of thousands of idle WebSockets, and the server's per-socket objects
are most of what each one costs (``docs/production.md``, "WebSocket density"). uvicorn's
``websockets-sansio`` protocol (:class:`WebSocketsSansIOProtocol`) keeps, for the
socket's whole life, objects it needs only until the handshake is answered or only in a
heavier form than a socket needs. This subclass changes three of them and nothing else
(same frames, same ASGI events, same close codes, same flow control):

- the handshake's parsed request and the prepared response (``websockets``' ``Request`` and
  ``Response`` with their ``Headers``, about 4 KB): dropped once the handshake is answered
  (the request's headers emptied, as ``websockets``' parser keeps the request itself);
- the receive queue, an :class:`asyncio.Queue` (three deques and an
  :class:`asyncio.Event` with a fourth, about 3 KB): an :class:`Inbox` with the three
  methods the protocol calls; it never holds more than a message and a disconnect, since
  the protocol stops reading until the application has taken the message;
- the write gate, an :class:`asyncio.Event` (about 0.7 KB): a :class:`Gate`.

Measured by the density benchmark (``python -m benchmarks.run density``, 19,744 sockets):
18.1 KB of server memory per socket against 26.8 KB with ``websockets-sansio`` in the same
run. Requires a uvicorn with the ``websockets-sansio`` protocol (tested with 0.54 and 0.55)
and ``websockets``. It relies on uvicorn internals (the attributes above and
``start_keepalive`` being called right after the handshake's answer is written), so pin
the uvicorn version you deploy and run ``tests/websocket/test_uvicorn_protocol.py`` when
you upgrade: it checks that every one of them is still released.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["Gate", "Inbox", "LeanWebSocketProtocol"]

_T = TypeVar("_T")


class _Waiters:
    """The futures of the tasks waiting on an :class:`Inbox` or a :class:`Gate`, oldest
    first (a list only while one waits)."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    def _enlist(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                self._waiters = None

    def _wake(self, *, every: bool) -> None:
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                if not every:
                    return


class Inbox(_Waiters, Generic[_T]):
    """A FIFO with :class:`asyncio.Queue`'s ``put_nowait``, ``get`` and ``empty`` (unbounded,
    fair to concurrent getters, no item lost to a cancelled ``get``) in two small lists."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        super().__init__()
        self._items: list[_T] = []

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: _T) -> None:
        self._items.append(item)
        self._wake(every=False)

    async def get(self) -> _T:
        while not self._items:
            waiter = self._enlist()
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake(every=False)  # woken, then cancelled: the next getter's turn
                raise
            finally:
                self._forget(waiter)
        return self._items.pop(0)


class Gate(_Waiters):
    """A flag with :class:`asyncio.Event`'s ``set``, ``clear``, ``is_set`` and ``wait``."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        self._wake(every=True)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter = self._enlist()
        try:
            await waiter
        finally:
            self._forget(waiter)
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """:class:`WebSocketsSansIOProtocol` without what an open socket no longer needs; see
    the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]  # duck-typed: put_nowait/get/empty
        self.writable = Gate()  # type: ignore[assignment]  # duck-typed: set/clear/wait
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The request was turned into the ASGI scope (or answered, when refused). websockets'
        # parser still holds it (a local of its generator, for the socket's life): its
        # headers, copied into the scope, go.
        event.headers.clear()
        del self.request

    def start_keepalive(self) -> None:
        # Called right after the accepting response was written: nothing reads it again.
        vars(self).pop("response", None)
        super().start_keepalive()

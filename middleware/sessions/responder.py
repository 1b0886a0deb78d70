"""The response side of an HTTP request with a session: :class:`SessionResponder`.

:class:`~middleware.sessions.middleware.SessionMiddleware` (and the fused
:class:`~middleware.gateway.GatewayMiddleware`) run the app with
:meth:`SessionResponder.wrapped_send` as its ``send``: before ``http.response.start`` goes
out, the session is saved and its ID set or cleared on the response; a save that fails for
an outage turns the response into the layer's 503 (nothing was sent yet), and the app's own
later messages are dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from middleware.errors import ServiceUnavailable
from middleware.sessions.handle import SessionHandle

if TYPE_CHECKING:
    from middleware.sessions.middleware import SessionMiddleware

__all__ = ["SessionResponder"]


class SessionResponder:
    """Per-request state of one HTTP response: saves before the headers go out.

    The app runs with :meth:`wrapped_send`; a :class:`ServiceUnavailable` it raises before
    the response started becomes the 503 of :meth:`fail`.
    """

    __slots__ = ("handle", "middleware", "receive", "replaced", "scope", "send", "started")

    def __init__(
        self,
        middleware: SessionMiddleware,
        scope: Scope,
        receive: Receive,
        send: Send,
        handle: SessionHandle,
    ) -> None:
        self.middleware, self.scope, self.receive, self.send = middleware, scope, receive, send
        self.handle = handle
        self.started = self.replaced = False

    async def fail(self, error: ServiceUnavailable) -> None:
        """Answer with ``on_error``'s response to ``error`` (the app's own is dropped)."""
        self.started = self.replaced = True
        await self.middleware.error_response(self.scope, error)(self.scope, self.receive, self.send)

    def wrapped_send(self, message: Message) -> Awaitable[None]:
        """The ``send`` the app gets: saves the session (and sets or clears its cookie and
        header) before ``http.response.start`` goes out; a failed save becomes a 503.

        Like any ASGI ``send`` it returns an awaitable; a message with nothing to do first
        (every one after the start, and a start with no save and no cookie change, the warm
        request's) is handed to the server's ``send`` without a frame of its own."""
        if self.started:
            # after a replaced response, the app's own messages are dropped
            return _nothing() if self.replaced else self.send(message)
        if message["type"] == "http.response.start":
            if self.handle.before_response():
                return self._start(message)
            self.started = True
        return self.send(message)

    async def _start(self, message: Message) -> None:
        handle = self.handle
        if handle.needs_save():
            try:
                await handle.save()
            except ServiceUnavailable as error:
                await self.fail(error)
                return
        self.started = True
        if handle.issued or handle.ended:
            headers = MutableHeaders(raw=list(message.get("headers", [])))
            self.middleware.response_headers(handle, headers)
            message = {**message, "headers": headers.raw}
        await self.send(message)


async def _nothing() -> None:
    """What :meth:`SessionResponder.wrapped_send` awaits for a dropped message."""

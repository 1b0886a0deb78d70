"""The baseline for the fan-out benchmark: encode/broadcaster (Redis backend) behind a
minimal Starlette WebSocket endpoint, as its README's chat example does it.

``uvicorn benchmarks.broadcaster_app:create --factory`` with ``REDIS_URL`` and
``BENCH_CHANNEL``. Every socket subscribes to the channel at connect and gets each
published string as one text frame.

One fix is needed for broadcaster 0.3.1 to deliver anything with redis-py 8: its
``RedisBackend.subscribe`` wakes the listener *before* sending SUBSCRIBE, and redis-py 8
records the channel only after the command is sent, so ``PubSub.listen()`` sees no
subscription, returns at once, and the listener waits forever (0 messages delivered,
measured). :class:`_RedisBackend` sets the flag after subscribing; nothing else changes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import anyio
from broadcaster import Broadcast
from broadcaster._backends.redis import RedisBackend
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


class _RedisBackend(RedisBackend):
    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


def create() -> Starlette:
    broadcast = Broadcast(backend=_RedisBackend(os.environ["REDIS_URL"]))
    channel = os.environ.get("BENCH_CHANNEL", "system:broadcast")

    async def receiver(websocket: WebSocket) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            async for _ in websocket.iter_text():
                pass

    async def sender(websocket: WebSocket) -> None:
        async with broadcast.subscribe(channel=channel) as subscriber:
            async for event in subscriber:  # type: ignore[union-attr]
                if event is not None:
                    await websocket.send_text(event.message)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        async with anyio.create_task_group() as group:

            async def run_receiver() -> None:
                await receiver(websocket)
                group.cancel_scope.cancel()

            group.start_soon(run_receiver)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await sender(websocket)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with broadcast:
            yield

    return Starlette(
        routes=[Route("/health", health), WebSocketRoute("/ws", ws)], lifespan=lifespan
    )

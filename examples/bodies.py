"""Request bodies of a bounded size, for the example's routes that parse one.

A route that parses its body reads it through :func:`read_body` first: a ``Content-Length``
over the cap is refused before anything is read, and the stream is read chunk by chunk and
abandoned as soon as it passes the cap (a chunked upload declares no length). Only then is
the body parsed, so an unauthenticated client cannot make the process hold or parse more
than the cap (a 64 MiB form posted to a login route otherwise costs hundreds of MiB while
it is parsed). :func:`too_large` is the 413 answer.
"""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import Message

__all__ = ["BodyTooLarge", "form_or_json", "read_body", "too_large"]


class BodyTooLarge(Exception):
    """The request body is longer than ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body exceeds {limit} bytes")
        self.limit = limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body of ``request``, at most ``limit`` bytes. Raises :class:`BodyTooLarge`
    (from the declared ``Content-Length`` alone when it says so, else as soon as the stream
    passes ``limit``); the rest of the body is never read by the app."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def form_or_json(request: Request, limit: int) -> object:
    """The body of ``request`` parsed as JSON (``Content-Type: application/json``) or as a
    form (urlencoded or multipart, Starlette's parser), after :func:`read_body` with
    ``limit``. Raises :class:`BodyTooLarge`, and ``ValueError`` (or ``RecursionError`` for
    JSON nested too deeply) when it does not parse."""
    body = await read_body(request, limit)
    if request.headers.get("content-type", "").startswith("application/json"):
        return json.loads(body)
    sent = False

    async def replay() -> Message:  # the body already read, for Starlette's form parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form()
    except Exception as exc:  # Starlette raises several kinds for a malformed form
        raise ValueError("not a form") from exc


def too_large(limit: int) -> JSONResponse:
    """The 413 answer to a body over ``limit`` bytes."""
    return JSONResponse(
        {"error": "too_large", "detail": f"The body exceeds {limit} bytes."}, status_code=413
    )

"""A small Starlette app around :class:`SessionMiddleware` for the session tests, shared by
the Redis-backed tests and the unit tests on the in-memory store: the routes log in, log
out, rotate, show and write the session, and ``app.state.hooks["write"]`` runs inside a
write (to interleave a concurrent logout)."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from middleware import SessionManager, SessionMiddleware, get_session, get_session_handle


async def login(request: Request) -> JSONResponse:
    body = await request.json()
    session = await get_session_handle(request).create(body["user"], {"name": body["user"]})
    return JSONResponse({"user": session.user_id})


async def logout(request: Request) -> JSONResponse:
    await get_session_handle(request).delete()
    return JSONResponse({"ok": True})


async def rotate(request: Request) -> JSONResponse:
    request.session["elevated"] = True
    await get_session_handle(request).regenerate()
    return JSONResponse({"ok": True})


async def show(request: Request) -> JSONResponse:
    session = get_session(request)
    return JSONResponse(
        {
            "data": dict(request.session),
            "user": session.user_id if session else None,
            "last": session.last_accessed_at.timestamp() if session else None,
        }
    )


async def write(request: Request) -> JSONResponse:
    for key, value in (await request.json()).items():
        if value is None:
            request.session.pop(key, None)
        else:
            request.session[key] = value
    hook = request.app.state.hooks.get("write")
    if hook is not None:
        await hook()
    return JSONResponse({"data": dict(request.session)})


async def append(request: Request) -> JSONResponse:
    request.session.setdefault("cart", [])
    request.session["cart"].append(request.query_params["item"])  # nested change
    return JSONResponse({"cart": request.session["cart"]})


def build(manager: SessionManager, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/rotate", rotate, methods=["POST"]),
            Route("/show", show),
            Route("/open/show", show),
            Route("/write", write, methods=["POST"]),
            Route("/append", append, methods=["POST"]),
        ],
        middleware=[Middleware(SessionMiddleware, sessions=manager, **options)],
    )
    app.state.hooks = {}
    return app


def cookie_of(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return jar

"""The response cache's request flow: :class:`ResponseCacheMiddleware` (pure ASGI).

Install it inside the JWT and RBAC layers (it needs the authenticated subject, and a cached
response must only reach a caller the rules already let through); ``Gateway(response_cache=
...)`` does. For a ``GET``/``HEAD`` request matching a :class:`CacheRule`:

1. The key: rule, path, query string, the rule's ``vary`` header values and, unless the
   rule is public, ``(authentication kind, subject, token roles, RBAC policy version)``
   (the kind: a token's ``sub`` never names an API key's or another layer's user). A
   private rule without an authenticated subject, or while the policy version is unknown,
   is not cached. A request with ``Cache-Control: no-store`` is not cached; ``no-cache``
   skips the lookup.
2. L1: a fresh entry is served (``304`` for a matching ``If-None-Match``) with no await.
   A stale one within ``stale_while_revalidate`` is served and refreshed in the background.
3. A miss: one request per key computes (the others on this instance wait for it). It
   reads L2; on a miss it takes the key's fill lock in Redis (``SET NX PX``) or, when
   another instance holds it, polls L2 for that instance's result for up to ``lock_wait``;
   then it reads the tags' versions, runs the app, stores the response in L2 and L1 and
   releases the lock. A failure (exception or 5xx) is answered with a stale entry within
   ``stale_if_error`` when there is one. ``HEAD`` misses go to the app uncached.
4. Redis down: L1 still answers (it is flushed when the invalidation bus regains sync) and
   the app computes the rest, one computation per key at a time, its responses kept in L1;
   the cache never turns a Redis error into a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_redis.errors import GatewayRedisError
from gateway_redis.responsecache import StoredResponse
from middleware._paths import route_path
from middleware.responsecache.cache import ResponseCache
from middleware.responsecache.responses import Capture, RequestHeaders, send_stored
from middleware.responsecache.routes import route_rules
from middleware.responsecache.rules import CacheRule
from middleware.scope import CLAIMS_KEY, get_auth_kind

__all__ = ["ResponseCacheMiddleware"]

_METHODS = frozenset({"GET", "HEAD"})
_CREDENTIALS = frozenset({b"authorization", b"cookie"})


def caller_of(scope: Scope) -> tuple[str, str, tuple[str, ...]] | None:
    """``(kind, subject, roles)`` of the request's caller, or None when it is not
    authenticated. ``kind`` is :func:`~middleware.scope.get_auth_kind`'s (``"jwt"``,
    ``"apikey"``, ``"user:<class>"``): subjects are unique only within one kind (a token
    whose ``sub`` reads ``apikey:ci`` is not the API key ``ci``), so the kind is part of
    the key. The token's roles are too: two tokens of one subject with different roles
    (which a role-based permission source reads per token) never share an entry. Other
    authentication layers' users (``scope["user"]``) have no roles."""
    kind = get_auth_kind(scope)
    if kind is None:
        return None
    claims = scope.get(CLAIMS_KEY)
    if claims is not None:
        sub: str = claims.sub
        roles: tuple[str, ...] = claims.roles
        return kind, sub, roles
    identity = getattr(scope.get("user"), "identity", None)
    if isinstance(identity, str) and identity:
        return kind, identity, ()
    return None


class ResponseCacheMiddleware:
    """Serves ``GET``/``HEAD`` responses from ``cache`` (see the module docstring).

    ``routes``: the application, whose routes marked with
    :func:`~middleware.responsecache.cache_response` become rules on the first request
    (``Gateway.install`` passes it)."""

    def __init__(self, app: ASGIApp, *, cache: ResponseCache, routes: Any = None) -> None:
        if not isinstance(cache, ResponseCache):
            raise ValueError("cache must be a ResponseCache")
        if routes is not None and not hasattr(routes, "routes"):
            raise ValueError("routes must be the application (with a .routes list) or None")
        self.app = app
        self.cache = cache
        self._routes = routes  # scanned for @cache_response endpoints on the first request
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._routes is not None:
            routes, self._routes = self._routes, None
            self.cache.add_rules(route_rules(routes.routes))
        if scope["type"] != "http" or scope["method"] not in _METHODS:
            return await self.app(scope, receive, send)
        cache = self.cache
        path = route_path(scope)
        rule = cache.rule_for(path)
        if rule is None:
            return await self.app(scope, receive, send)
        request = RequestHeaders.read(scope["headers"], rule.vary)
        identity: tuple[str, str, tuple[str, ...], int] | None = None
        if not rule.public:
            caller, version = caller_of(scope), cache.policy_version()
            if caller is None or version is None:
                cache.tally("bypass")
                return await self.app(scope, receive, send)
            identity = (caller[0], caller[1], caller[2], version)
        if request.no_store:
            cache.tally("bypass")
            return await self.app(scope, receive, send)
        key = (rule.path, path, scope.get("query_string", b""), request.vary, identity)
        head = scope["method"] == "HEAD"
        skip = request.no_cache and cache.settings.honour_no_cache
        stale: StoredResponse | None = None
        if not skip:
            hit = cache.lookup(key)
            if hit is not None:
                age = hit.age(time.time())
                left = hit.ttl - age  # hit.remaining(), without computing the age twice
                if left > 0:
                    cache.tally("l1")
                    return await send_stored(
                        send, hit, age=age, public=rule.public, request=request, head=head
                    )
                if -left <= rule.stale_while_revalidate:
                    cache.tally("stale")
                    self._refresh(key, rule, scope)
                    return await send_stored(
                        send, hit, age=age, public=rule.public, request=request, head=head
                    )
                stale = hit
        if head:
            cache.tally("bypass")
            return await self.app(scope, receive, send)
        if skip:  # no lookup; a stale entry still answers a failure (stale-if-error)
            stale = cache.lookup(key)
            stored, capture = await self._compute(scope, receive, send, rule, key, stale, None)
            return await self._answer(send, rule, request, stored, capture)
        future = cache.flights.lead(key)
        if future is None:
            joined, result = await cache.flights.follow(key)
            if joined and result is not None:
                cache.tally("coalesced")
                return await send_stored(
                    send,
                    result,
                    age=result.age(time.time()),
                    public=rule.public,
                    request=request,
                    head=head,
                )
            return await self.app(scope, receive, send)
        result = None
        try:
            result, capture = await self._lead(scope, receive, send, rule, key, stale)
        finally:
            cache.flights.finish(key, future, result)
        await self._answer(send, rule, request, result, capture)

    async def _answer(
        self,
        send: Send,
        rule: CacheRule,
        request: RequestHeaders,
        stored: StoredResponse | None,
        capture: Capture | None,
    ) -> None:
        if stored is not None:
            age = stored.age(time.time())
            await send_stored(
                send, stored, age=age, public=rule.public, request=request, head=False
            )
        elif capture is not None and not capture.overflow:
            await capture.replay(send, head=False)

    async def _lead(
        self,
        scope: Scope,
        receive: Receive,
        send: Send | None,
        rule: CacheRule,
        key: tuple[Any, ...],
        stale: StoredResponse | None,
    ) -> tuple[StoredResponse | None, Capture | None]:
        """The leader of a key's flight: L2, the fill lock, then the app."""
        cache, settings = self.cache, self.cache.settings
        store, fingerprint = cache.store, cache.fingerprint(key)
        generation = cache.l1.generation
        token: str | None = None
        try:
            stored = await store.load(fingerprint)
            if stored is not None:
                left = stored.remaining(time.time())
                if left > 0:
                    cache.tally("l2")
                    cache.remember(key, stored, generation)
                    return stored, None
                stale = stored if stale is None or stored.created > stale.created else stale
                if -left <= rule.stale_while_revalidate and send is not None:
                    cache.tally("stale")
                    cache.remember(key, stored, generation)
                    self._refresh(key, rule, scope, lead=False)
                    return stored, None
            token = await store.acquire(fingerprint, settings.lock_ttl)
            if token is not None:
                # Another instance may have stored it and released the lock between our
                # read and our lock: read again, so that one computation is stored once.
                stored = await store.load(fingerprint)
                if stored is not None and stored.remaining(time.time()) > 0:
                    cache.tally("wait")
                    cache.remember(key, stored, generation)
                    return stored, None
            else:
                if send is None:  # a background refresh: the other instance is on it
                    return None, None
                waited = await self._poll(fingerprint)
                if waited is not None:
                    cache.tally("wait")
                    cache.remember(key, waited, generation)
                    return waited, None
        except GatewayRedisError:
            pass  # Redis down or slow: the app answers (and L1 keeps the response)
        cache.tally("miss")
        try:
            return await self._compute(scope, receive, send, rule, key, stale, generation)
        finally:
            if token is not None:
                with contextlib.suppress(GatewayRedisError):
                    await store.release(fingerprint, token)

    async def _poll(self, fingerprint: str) -> StoredResponse | None:
        settings, store = self.cache.settings, self.cache.store
        deadline = time.monotonic() + settings.lock_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(settings.poll_interval)
            stored = await store.load(fingerprint)
            if stored is not None and stored.remaining(time.time()) > 0:
                return stored
        return None

    async def _compute(
        self,
        scope: Scope,
        receive: Receive,
        send: Send | None,
        rule: CacheRule,
        key: tuple[Any, ...],
        stale: StoredResponse | None,
        generation: int | None,
    ) -> tuple[StoredResponse | None, Capture | None]:
        """Run the app, capture its response, store it in L2 and L1."""
        cache = self.cache
        if generation is None:
            generation = cache.l1.generation
        path = key[1]
        tags = rule.tags_for(path)
        shared = True
        try:
            versions = await cache.store.versions(tags)
        except GatewayRedisError:
            versions, shared = dict.fromkeys(tags, ""), False
        capture = Capture(limit=cache.settings.max_body, passthrough=send)
        try:
            await self.app(scope, receive, capture)
        except Exception:
            if _usable(stale, rule.stale_if_error) and not capture.overflow:
                cache.tally("stale_error")
                return stale, None
            raise
        if capture.status >= 500 and _usable(stale, rule.stale_if_error):
            cache.tally("stale_error")
            return stale, None
        # Private keys hold the caller's identity: Vary on the credentials is covered.
        covered = frozenset(v.encode() for v in rule.vary) | (
            _CREDENTIALS if not rule.public else frozenset()
        )
        stored = capture.stored(
            created=time.time(), ttl=rule.ttl, stale=rule.stale, versions=versions, vary=covered
        )
        if stored is None:
            return None, capture
        if shared:
            with contextlib.suppress(GatewayRedisError):
                await cache.store.save(cache.fingerprint(key), stored)
        cache.remember(key, stored, generation)
        return stored, None

    def _refresh(
        self, key: tuple[Any, ...], rule: CacheRule, scope: Scope, *, lead: bool = True
    ) -> None:
        """Recompute ``key`` in the background (once per key at a time)."""
        cache = self.cache
        future = cache.flights.lead(key) if lead else None
        if lead and future is None:
            return
        copied = dict(scope)

        async def run() -> None:
            result = None
            try:
                result, _ = await self._compute(copied, _no_body(), None, rule, key, None, None)
            except Exception:  # noqa: S110 - the stale entry keeps being served
                pass
            finally:
                if future is not None:
                    cache.flights.finish(key, future, result)

        task = asyncio.get_running_loop().create_task(run(), name="gateway-responsecache-refresh")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _usable(stale: StoredResponse | None, bound: float) -> bool:
    return stale is not None and bound > 0 and -stale.remaining(time.time()) <= bound


def _no_body() -> Receive:
    """A ``receive`` for a background request: an empty body, then nothing."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive

"""The invalidation seam of the JWT and RBAC caches, and its in-process implementation.

:class:`~middleware.JWTAuthenticator` and :class:`~middleware.PermissionCache` build their
L1 caches, follow events and publish them through an :class:`Invalidation`. Given a
client, that is the client's :class:`~gateway_redis.invalidation.InvalidationBus`: events
reach every instance, and L1 is flushed and bypassed while the bus may miss one. Given
``client=None`` it is a :class:`LocalInvalidation`: events reach this process only, its
caches are always on, and no resync hook ever runs (nothing is kept outside the process,
so there is nothing to reload).

Why a seam and not ``if client is None`` in the components: their warm paths read only
their L1 caches and mirrors, which are the same objects either way, so the in-process mode
adds no per-request branch; the few cold-path steps that need Redis (L2, the denylist, the
policy version) check for their store once, where they already await.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway_redis.invalidation import EventHandler, ResyncHook
from gateway_redis.localcache import LocalCache
from gateway_redis.support import log_fields

__all__ = ["Invalidation", "LocalInvalidation"]

_log = logging.getLogger(__name__)


class Invalidation(Protocol):
    """What a cache component needs from an invalidation channel (see
    :class:`~gateway_redis.invalidation.InvalidationBus` for the full contract)."""

    @property
    def healthy(self) -> bool:
        """True while L1 caches may be trusted (every event is being heard)."""
        ...

    def local_cache(self, name: str, *, maxsize: int, ttl: float) -> LocalCache[Any, Any]:
        """A new L1 cache that the channel flushes and bypasses while it may miss events."""
        ...

    def on_event(self, namespace: str, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for each event of ``namespace``; returns its remover."""
        ...

    def on_resync(self, hook: ResyncHook) -> Callable[[], None]:
        """Await ``hook()`` whenever the channel regains sync; returns its remover."""
        ...

    async def publish(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Apply ``event`` here at once, then send it wherever the channel reaches."""
        ...


class LocalInvalidation:
    """An :class:`Invalidation` that reaches this process only (no Redis, no tasks).

    Its caches are enabled from the start and stay so (no event can be missed: every event
    is published here); :meth:`publish` calls the handlers at once and never fails (a
    handler that raises is logged, and every cache is cleared, since one may now be
    stale). Resync hooks are accepted and never run. Nothing to close.
    """

    def __init__(self) -> None:
        self._caches: list[LocalCache[Any, Any]] = []
        self._handlers: dict[str, list[EventHandler]] = {}

    @property
    def healthy(self) -> bool:
        """Always True: every event reaches this process."""
        return True

    def local_cache(self, name: str, *, maxsize: int, ttl: float) -> LocalCache[Any, Any]:
        """A new :class:`LocalCache`, enabled (``ValueError`` for a bad size or TTL)."""
        cache: LocalCache[Any, Any] = LocalCache(maxsize=maxsize, ttl=ttl, name=name)
        self._caches.append(cache)
        return cache

    def on_event(self, namespace: str, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler(event)`` for each event published here on ``namespace``. Returns
        a function that removes it (idempotent)."""
        handlers = self._handlers.setdefault(namespace, [])
        handlers.append(handler)

        def remove() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def on_resync(self, hook: ResyncHook) -> Callable[[], None]:
        """Never runs ``hook`` (the channel cannot lose sync); returns a no-op remover."""
        return _nothing

    async def publish(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Call the handlers of ``namespace`` with ``event``, in registration order."""
        for handler in list(self._handlers.get(namespace, ())):
            try:
                handler(event)
            except Exception:
                _log.exception(
                    "invalidation handler for %r failed",
                    namespace,
                    extra=log_fields("invalidation", "invalidation_handler_failed", kind=namespace),
                )
                for cache in self._caches:
                    cache.clear()


def _nothing() -> None:
    return None

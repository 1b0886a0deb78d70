"""Response caching for ``GET``/``HEAD``: L1 in process, L2 in Redis, tag invalidation on
every instance through the invalidation bus, strong ``ETag``/``304``, one computation per
key, stale-while-revalidate and stale-if-error.

::

    cache = ResponseCache(client, ResponseCacheSettings([
        CacheRule("/api/cached/{item}", ttl=30, tags=["item:{item}"]),
    ]), permissions=permission_cache)
    app.add_middleware(ResponseCacheMiddleware, cache=cache)  # inside JWT and RBAC
    await cache.invalidate_tags("item:42")

``Gateway(response_cache=ResponseCacheSettings(...))`` builds and installs it; per route,
mark an endpoint with :func:`cache_response` instead of writing a rule.
"""

from middleware.responsecache.cache import ResponseCache
from middleware.responsecache.middleware import ResponseCacheMiddleware
from middleware.responsecache.routes import cache_response
from middleware.responsecache.rules import CacheRule
from middleware.responsecache.settings import ResponseCacheSettings

__all__ = [
    "CacheRule",
    "ResponseCache",
    "ResponseCacheMiddleware",
    "ResponseCacheSettings",
    "cache_response",
]

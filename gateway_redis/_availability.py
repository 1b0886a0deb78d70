"""The availability side of :class:`~gateway_redis.RedisClient`: what it tells about Redis
(``available``, ``health``, ``health_reason``, ``eviction_unsafe``, pool figures, state
listeners) and the probe its health monitor runs (:mod:`gateway_redis.health`).

:class:`Availability` is mixed into the client, which owns the state it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway_redis._driver import Backend, Deadline
from gateway_redis._eviction import EvictionWatch
from gateway_redis._translate import is_connection_lost
from gateway_redis.config import RedisConfig
from gateway_redis.health import ClientState, HealthMonitor, HealthState, StateListener

__all__ = ["Availability"]


class Availability:
    """Properties about Redis's availability, and the health probe (``_probe``: the
    backend's probe, then the eviction policy, then warm connections)."""

    if TYPE_CHECKING:  # provided by RedisClient
        _state: ClientState
        _config: RedisConfig
        _backend: Backend
        _health: HealthMonitor
        _eviction: EvictionWatch

    @property
    def available(self) -> bool:
        """True when Redis is believed reachable and calls go through."""
        return self._state is ClientState.CONNECTED and self._health.available

    @property
    def health(self) -> HealthState:
        """``up``, ``down`` or ``misconfigured``."""
        return self._health.state

    @property
    def health_reason(self) -> str:
        """Why the health state is what it is; never contains secrets."""
        return self._health.reason

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(state, reason)`` on each change of availability.

        Returns a function that removes the listener. Listeners run on the event loop and
        must not block; an exception in one is logged and ignored.
        """
        return self._health.add_listener(listener)

    @property
    def eviction_unsafe(self) -> bool | None:
        """True when Redis may evict this library's keys (a ``maxmemory-policy`` of
        ``allkeys-*`` or ``volatile-*``: revoked tokens could come back), False when it may
        not, None until the policy could be read (at connect and on each health probe)."""
        return self._eviction.unsafe

    @property
    def backend(self) -> Backend:
        """The driver-facing side (pool, cluster, lone connections); internal use."""
        return self._backend

    @property
    def monitor(self) -> HealthMonitor:
        """The availability state machine (for components that feed it)."""
        return self._health

    @property
    def pool_in_use(self) -> int:
        """Pooled connections currently lent out."""
        return self._backend.in_use

    @property
    def pool_idle(self) -> int:
        """Open pooled connections waiting for work."""
        return self._backend.idle

    async def _probe(self) -> None:
        # Cluster: a node that stopped answering fails only the calls routed to it; probe
        # often until it answers again.
        self._health.probe_often(await self._backend.probe())
        await self._eviction.check(self._backend.read_info)
        if self._health.available and self._backend.idle + self._backend.in_use < (
            self._config.min_idle_conns
        ):
            try:
                async with Deadline(self._config.operation_timeout):
                    await self._warm()
            except Exception as exc:  # Redis answered the probe: one broken connection
                if not is_connection_lost(exc):
                    raise

    async def _on_recover(self) -> None:
        # Idle connections may point at a server that has since restarted: drop them and
        # open fresh ones (cluster: reload the slot map), so the first calls after
        # recovery do not trip over them.
        async with Deadline(self._config.operation_timeout):
            await self._backend.drop_idle()
            await self._warm()

    async def _warm(self) -> None:
        await self._backend.warm(self._config.min_idle_conns)

    def _connection_lost(self) -> bool:
        # A command connection broke and is being retried: probe at once; retrying goes
        # on while Redis is believed available.
        self._health.check_now(urgent=True)
        return self._health.available

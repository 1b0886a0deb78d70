"""Publishing (private): the producer span and trace context of every publish
(:func:`publishing`, :func:`record`), used by :class:`Publisher` (the hub's plain publish)
and :meth:`~gateway_redis.ChannelHistory.publish` alike.

Only a publish that is part of a trace (the caller has an active span) carries context;
otherwise the message goes out as plain JSON, readable by any other publisher's
subscribers (a Go service, redis-cli), even with an SDK installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.util.types import AttributeValue

from gateway_redis import telemetry
from gateway_redis.pubsub import envelope
from gateway_redis.pubsub._sharded import ShardedNames

if TYPE_CHECKING:
    from gateway_redis.client import RedisClient

__all__ = ["Publisher", "publishing", "record"]


@contextlib.contextmanager
def publishing(name: str) -> Iterator[tuple[trace.Span, dict[str, str]]]:
    """The producer span of one publish to channel ``name`` and the carrier of the trace
    context to send with it (empty unless the caller has an active span)."""
    traced = trace.get_current_span().get_span_context().is_valid
    with telemetry.tracer.start_as_current_span(
        "gateway.pubsub publish", kind=trace.SpanKind.PRODUCER
    ) as span:
        carrier: dict[str, str] = {}
        if traced:
            propagate.inject(carrier)
        yield span, carrier


def record(span: trace.Span, name: str, receivers: int, more: Mapping[str, AttributeValue]) -> None:
    """The attributes of a publish's span, when it records: the messaging ones, the
    receiver count and ``more``."""
    if span.is_recording():
        span.set_attributes(
            {
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.destination.name": name,
                "gateway.pubsub.receivers": receivers,
                **more,
            }
        )


class Publisher:
    """The plain publish of :meth:`~gateway_redis.pubsub.hub.PubSubHub.publish` (documented
    there): ``key`` turns a channel name into its Redis channel, ``sharded`` says which
    channels go out with SPUBLISH."""

    def __init__(
        self, client: RedisClient, key: Callable[[str], bytes], sharded: ShardedNames
    ) -> None:
        self._client = client
        self._key = key
        self._sharded = sharded

    async def publish(self, channel: str, message: Any) -> int:
        """See :meth:`~gateway_redis.pubsub.hub.PubSubHub.publish`."""
        (name,) = envelope.check_names((channel,), "channel")
        body = envelope.dumps(message)
        sharded = self._sharded.match(name)
        target = self._key(name)
        with publishing(name) as (span, carrier):
            payload = envelope.encode(body, carrier)
            receivers: int = await self._client.execute(
                "publish",
                lambda r: (r.spublish if sharded else r.publish)(target, payload),
                retry=False,
            )
            record(span, name, receivers, {"gateway.pubsub.sharded": sharded})
        return receivers

"""Pub/sub over one shared subscriber connection: JSON messages, bounded buffers, reconnects.

::

    async with await client.subscribe("orders", "alerts") as sub:
        async for message in sub:          # Message(channel, payload, data, ...)
            if message.gap_before:         # messages may have been lost: refetch state
                ...

* One subscriber connection per hub (:class:`PubSubHub`, reached as ``client.pubsub``),
  outside the command pool, no read timeout. Subscriptions are reference counted: 1,000
  subscriptions to 50 channels are one connection and 50 Redis subscriptions.
* ``subscribe()`` returns once Redis confirmed every name. Every lost connection is seen
  (redis-py's ``PubSub`` is not used: it resubscribes silently), marks every subscription
  with a gap, and is repaired with jittered exponential backoff (capped at 1 s).
* A quiet connection is checked every ``liveness_interval``: a frozen server that keeps
  TCP open is noticed within about 1.6 s and holds the client's health down.
* Each message is decoded once and appended to every matching subscription's bounded
  buffer, dropping the oldest when full; the reader never waits for a consumer.
* Sharded channels (``RedisConfig.sharded_channels``: exact names and ``prefix*``
  entries) use SPUBLISH/SSUBSCRIBE, subscribed on a connection to the node owning each
  channel's slot, with the same guarantees; they follow failovers and slot moves. The
  setting applies in every mode (standalone and Sentinel too, Redis 7+). Sharded and
  classic pub/sub are separate namespaces: patterns never receive sharded messages.
* With Sentinel, ``+switch-master`` makes the subscriber connections retry at once.

The message format, for other publishers and subscribers, is
:mod:`gateway_redis.pubsub.envelope`. Patterns are for trusted, fixed strings only: never
build a PSUBSCRIBE pattern from user input.

* Channel history (:class:`ChannelHistory`, in :mod:`~gateway_redis.pubsub.history`):
  publishing through it keeps the channel's recent messages in a Redis Stream, gives each
  an epoch and offset (carried by the :class:`Message`), and lets a subscriber that
  missed some get them back (:meth:`ChannelHistory.read`, or as JSON text without
  decoding: :meth:`ChannelHistory.read_payloads`).
* Channel presence (:class:`ChannelPresence`, in :mod:`~gateway_redis.pubsub.presence`):
  who is on a channel (user, connection, info), expiring without heartbeats, with O(1)
  counts.

Modules: :mod:`~gateway_redis.pubsub.hub` (:class:`PubSubHub`),
:mod:`~gateway_redis.pubsub.history` (:class:`ChannelHistory`; private
``_history_scripts``, its Lua),
:mod:`~gateway_redis.pubsub.subscription` (:class:`Subscription`, :class:`Message`,
:class:`PubSubStats`) and :mod:`~gateway_redis.pubsub.envelope` (the wire format); private:
``_registry`` (which subscriptions are wanted and confirmed, classic and sharded alike),
``_supervisor`` (keeping one subscriber connection alive), ``_classic`` and ``_sharded``
(the two kinds of subscriber connection), ``_routing`` (sharded channels to nodes, following
slot moves), ``_sentinel`` (the ``+switch-master`` watch) and ``_connection`` (the builder of
every connection the package opens).
"""

from __future__ import annotations

from gateway_redis.pubsub.envelope import Position
from gateway_redis.pubsub.history import ChannelHistory, HistoryPage, PayloadPage, Published
from gateway_redis.pubsub.hub import PubSubHub, ReconnectListener
from gateway_redis.pubsub.presence import (
    ChannelPresence,
    PresenceChange,
    PresenceMember,
    PresenceStats,
)
from gateway_redis.pubsub.subscription import (
    Message,
    MessageCallback,
    PubSubStats,
    Subscription,
)

__all__ = [
    "ChannelHistory",
    "ChannelPresence",
    "HistoryPage",
    "Message",
    "MessageCallback",
    "PayloadPage",
    "Position",
    "PresenceChange",
    "PresenceMember",
    "PresenceStats",
    "PubSubHub",
    "PubSubStats",
    "Published",
    "ReconnectListener",
    "Subscription",
]

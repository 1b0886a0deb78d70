"""Channel rules with history: validation, which channels a rule's history covers, and the
example's contract (history on ``system:broadcast`` and every ``notifications:<user>``)."""

from __future__ import annotations

import pytest

from examples.realtime import HISTORY_SIZE, HISTORY_TTL, realtime_policy
from middleware.websocket.channels import ChannelPolicy, ChannelRule


def test_history_settings_are_checked() -> None:
    rule = ChannelRule("a:{x}", subscribe=True, history_size=10, history_ttl=5)
    assert (rule.history_size, rule.history_ttl) == (10, 5.0)
    plain = ChannelRule("a:{x}", subscribe=True)
    assert (plain.history_size, plain.history_ttl) == (None, None)
    for size, ttl in ((10, None), (None, 5), (0, 5), (10, 0), (True, 5), (10, "5"), (2_000_000, 5)):
        with pytest.raises(ValueError, match="history_"):
            ChannelRule("a:{x}", history_size=size, history_ttl=ttl)  # type: ignore[arg-type]


def test_the_first_rule_with_history_that_covers_a_channel_decides() -> None:
    policy = ChannelPolicy(
        [
            ChannelRule("rooms:{room}", subscribe="rooms:{room}:join"),
            ChannelRule("rooms:*", history_size=5, history_ttl=1),
            ChannelRule("rooms:lobby", history_size=50, history_ttl=1),
            ChannelRule("inbox:{sub}", subscribe=True, history_size=7, history_ttl=1),
        ]
    )
    assert policy.history("rooms:lobby") is policy.rules[1]
    assert policy.history("rooms:a:b") is policy.rules[1]
    assert policy.history("inbox:anyone") is policy.rules[3]  # {sub}: whoever asks
    assert policy.history("inbox:a:b") is None
    assert policy.history("other") is None


def test_the_example_keeps_history_on_its_two_channels() -> None:
    policy = realtime_policy()
    for channel in ("system:broadcast", "notifications:bob", "notifications:alice"):
        rule = policy.history(channel)
        assert rule is not None
        assert (rule.history_size, rule.history_ttl) == (HISTORY_SIZE, HISTORY_TTL) == (1000, 300)
    assert policy.history("system:other") is None

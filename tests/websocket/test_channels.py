"""The channel policy: templated rules, permissions, default deny, name validation."""

from __future__ import annotations

import pytest

from middleware.errors import ServiceUnavailable
from middleware.websocket.channels import ChannelPolicy, ChannelRule, StaticPrincipal

POLICY = ChannelPolicy(
    [
        ChannelRule("system:broadcast", subscribe=True, publish="channels:publish"),
        ChannelRule("notifications:{sub}", subscribe=True),
        ChannelRule("notifications:{user}", publish="channels:publish"),
        ChannelRule("rooms:{room}", subscribe="rooms:{room}:join", publish="rooms:{room}:talk"),
        ChannelRule("public:*", subscribe=True),
    ]
)
ALICE = StaticPrincipal("alice", frozenset({"channels:publish", "rooms:blue:*"}))
BOB = StaticPrincipal("bob")


@pytest.mark.parametrize(
    ("principal", "action", "channel", "allowed"),
    [
        (BOB, "subscribe", "system:broadcast", True),
        (BOB, "publish", "system:broadcast", False),
        (ALICE, "publish", "system:broadcast", True),
        (BOB, "subscribe", "notifications:bob", True),
        (BOB, "subscribe", "notifications:alice", False),
        (BOB, "subscribe", "notifications:bob:more", False),
        (BOB, "subscribe", "notifications:", False),
        (BOB, "publish", "notifications:bob", False),
        (ALICE, "publish", "notifications:bob", True),
        (ALICE, "subscribe", "notifications:bob", False),
        (ALICE, "subscribe", "rooms:blue", True),
        (ALICE, "publish", "rooms:blue", True),
        (ALICE, "subscribe", "rooms:red", False),
        (BOB, "subscribe", "rooms:blue", False),
        (BOB, "subscribe", "public:news", True),
        (BOB, "subscribe", "public:news:sport", True),
        (BOB, "subscribe", "public", False),
        (BOB, "subscribe", "unlisted", False),
        (BOB, "subscribe", "", False),
        (BOB, "subscribe", "public:" + "x" * 200, False),
        (BOB, "subscribe", "public:white space", False),
        (BOB, "subscribe", "public:*", False),
        (BOB, "subscribe", "public:n\u00e9ws", False),
    ],
)
async def test_rules(principal: StaticPrincipal, action: str, channel: str, allowed: bool) -> None:
    assert await POLICY.allows(principal, action, channel) is allowed  # type: ignore[arg-type]


async def test_sub_placeholder_is_the_principal_not_a_wildcard() -> None:
    odd = StaticPrincipal("we:ird")  # a subject with the separator cannot fake a segment
    assert not await POLICY.allows(odd, "subscribe", "notifications:we:ird")
    assert not await POLICY.allows(odd, "subscribe", "notifications:we")


async def test_permissions_are_fetched_only_when_a_rule_needs_them() -> None:
    class Counting:
        subject = "carol"
        calls = 0

        async def permissions(self) -> frozenset[str]:
            Counting.calls += 1
            raise ServiceUnavailable("permission_source_unavailable")

    principal = Counting()
    assert await POLICY.allows(principal, "subscribe", "system:broadcast")
    assert not await POLICY.allows(principal, "subscribe", "unlisted")
    assert Counting.calls == 0
    with pytest.raises(ServiceUnavailable):  # an outage is not a denial
        await POLICY.allows(principal, "publish", "system:broadcast")


def test_reserved_prefixes_and_validation() -> None:
    policy = ChannelPolicy([ChannelRule("*", subscribe=True)], reserved_prefixes=["gw:"])
    assert policy.valid_name("a:b")
    assert not policy.valid_name("gw:invalidate")
    assert not policy.with_reserved("a:").valid_name("a:b")
    assert ChannelPolicy([], max_length=3).valid_name("abc")
    assert not ChannelPolicy([], max_length=3).valid_name("abcd")


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("",), {}, "non-empty"),
        (("a::b",), {}, "bad segment"),
        (("a:b*",), {}, "bad segment"),
        (("a:{x}:{x}",), {}, "twice"),
        (("a:{x",), {}, "bad segment"),
        (("a",), {"subscribe": "rooms:{room}"}, "not captured"),
        (("a",), {"publish": "has space"}, "spaces"),
        (("a",), {"publish": "x:*"}, "wildcards"),
        (("a",), {"publish": 5}, "grant"),
    ],
)
def test_bad_rules_are_refused(args: tuple[str], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChannelRule(*args, **kwargs)  # type: ignore[arg-type]


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="ChannelRule"):
        ChannelPolicy(["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_length"):
        ChannelPolicy([], max_length=0)
    with pytest.raises(ValueError, match="charset"):
        ChannelPolicy([], charset="\\")

"""Channel authorization for the WebSocket bridge: templated rules, permissions, default deny.

::

    policy = ChannelPolicy([
        ChannelRule("system:broadcast", subscribe=True, publish="channels:publish"),
        ChannelRule("notifications:{sub}", subscribe=True),
        ChannelRule("notifications:{user}", publish="channels:publish"),
        ChannelRule("rooms:{room}", subscribe="rooms:{room}:join"),
    ])
    await policy.allows(principal, "subscribe", "notifications:alice")

A rule's pattern is a channel name whose ``:``-separated segments may be placeholders:

* ``{sub}`` matches only the principal's own subject, exactly (``notifications:{sub}`` is
  "my notifications"; nobody can name someone else's channel through it);
* any other ``{name}`` matches one non-empty segment and captures it;
* a final ``*`` segment matches one or more remaining segments.

Each rule grants ``subscribe`` and/or ``publish``: ``True`` for any authenticated
principal, or a permission (resolved through RBAC, wildcards as in
:func:`~middleware.rbac.permissions.permission_granted`) that may use the rule's captures
(``"rooms:{room}:join"``). ``None`` (the default) grants nothing. A request is allowed when
any rule grants it; everything else is denied. Rules never deny, so their order does not
matter.

A rule may also keep history (``history_size`` messages for ``history_ttl`` seconds, both
or neither) for the channels it matches, whoever asks: messages published through the
bridge (or :meth:`WebSocketBridge.publish <middleware.websocket.WebSocketBridge.publish>`)
get an epoch and offset, and a subscriber can recover what it missed. The first rule in
order that matches a channel and has history decides (:meth:`ChannelPolicy.history`).

A rule may turn on ``presence`` (who is subscribed: the ``presence`` and ``presence_stats``
requests) and, with it, ``join_leave`` (``join``/``leave`` frames to the channel's
subscribers while it has at most ``join_leave_limit`` connections, default 100: above
that they are not sent, which bounds their cost) for the channels it covers; the first
rule in order that covers a channel and has presence decides (:meth:`ChannelPolicy.presence`).

Channel names are validated before any rule is looked at (length, character set, reserved
prefixes), and the bridge never passes them to PSUBSCRIBE: a name is one channel.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from middleware.rbac.sources import check_permission, permission_granted

__all__ = [
    "Access",
    "Action",
    "ChannelPolicy",
    "ChannelRule",
    "Principal",
    "StaticPrincipal",
]

Action = Literal["subscribe", "publish"]
"""What a principal wants to do with a channel."""
Access = bool | str | None
"""A rule's grant: ``True`` (any principal), a permission string, or ``None``/``False``."""

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DEFAULT_CHARSET = r"A-Za-z0-9_.:@\-"


class Principal(Protocol):
    """Who asks: a subject and (lazily) their permissions."""

    @property
    def subject(self) -> str:
        """The principal's identity (a token's ``sub``, a session's user id)."""
        ...

    async def permissions(self) -> Collection[str]:
        """The granted permissions; raise :class:`~middleware.errors.ServiceUnavailable`
        when they cannot be known right now."""
        ...


@dataclass(frozen=True, slots=True)
class StaticPrincipal:
    """A principal with a fixed permission set (tests, internal publishers)."""

    subject: str
    granted: frozenset[str] = frozenset()

    async def permissions(self) -> frozenset[str]:
        """The fixed permissions."""
        return self.granted


@dataclass(frozen=True, slots=True, init=False)
class ChannelRule:
    """Grants ``subscribe`` and/or ``publish`` on channels matching ``pattern``.

    See the module docstring for the pattern language. Raises ``ValueError`` for a bad
    pattern, a grant that is neither ``True``, ``None``/``False`` nor a permission, or a
    permission that uses a placeholder the pattern does not capture, a history setting
    that is not a size of 1 to 1,000,000 messages with a TTL over 0 seconds (given together),
    ``presence``/``join_leave`` that are not bools (``join_leave`` needs ``presence``), or
    a ``join_leave_limit`` that is not an int from 1 to 1,000.
    """

    pattern: str
    subscribe: str | bool
    publish: str | bool
    history_size: int | None
    history_ttl: float | None
    presence: bool
    join_leave: bool
    join_leave_limit: int
    _segments: tuple[tuple[str, str], ...] = field(repr=False, compare=False)
    _rest: bool = field(repr=False, compare=False)

    def __init__(
        self,
        pattern: str,
        *,
        subscribe: Access = None,
        publish: Access = None,
        history_size: int | None = None,
        history_ttl: float | None = None,
        presence: bool = False,
        join_leave: bool = False,
        join_leave_limit: int = 100,
    ) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("a channel rule needs a non-empty pattern")
        parts = pattern.split(":")
        rest = parts[-1] == "*"
        if rest:
            parts = parts[:-1]
        segments: list[tuple[str, str]] = []
        captures: set[str] = set()
        for part in parts:
            placeholder = _PLACEHOLDER.fullmatch(part)
            if placeholder is not None:
                name = placeholder.group(1)
                if name in captures:
                    raise ValueError(f"placeholder {{{name}}} used twice in {pattern!r}")
                captures.add(name)
                segments.append(("sub" if name == "sub" else "capture", name))
            elif not part or "{" in part or "}" in part or "*" in part:
                raise ValueError(f"bad segment {part!r} in channel pattern {pattern!r}")
            else:
                segments.append(("literal", part))
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "subscribe", _check_access(subscribe, captures, pattern))
        object.__setattr__(self, "publish", _check_access(publish, captures, pattern))
        object.__setattr__(self, "_segments", tuple(segments))
        object.__setattr__(self, "_rest", rest)
        _check_history(history_size, history_ttl, pattern)
        object.__setattr__(self, "history_size", history_size)
        object.__setattr__(self, "history_ttl", None if history_ttl is None else float(history_ttl))
        if not isinstance(presence, bool) or not isinstance(join_leave, bool):
            raise ValueError(f"presence and join_leave of {pattern!r} must be bools")
        if join_leave and not presence:
            raise ValueError(f"join_leave of {pattern!r} needs presence=True")
        object.__setattr__(self, "presence", presence)
        object.__setattr__(self, "join_leave", join_leave)
        limit = join_leave_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"join_leave_limit of {pattern!r} must be an int from 1 to 1000")
        object.__setattr__(self, "join_leave_limit", limit)

    def match(self, channel: str, subject: str) -> dict[str, str] | None:
        """The captures if ``channel`` matches for ``subject``, else None."""
        parts = channel.split(":")
        wanted = self._segments
        if len(parts) < len(wanted) + self._rest or (not self._rest and len(parts) != len(wanted)):
            return None
        captured: dict[str, str] = {"sub": subject}
        for (kind, value), part in zip(wanted, parts, strict=False):
            if kind == "literal":
                if part != value:
                    return None
            elif not part:
                return None
            elif kind == "sub":
                if part != subject:
                    return None
            else:
                captured[value] = part
        return captured

    def covers(self, channel: str) -> bool:
        """Whether ``channel`` has this rule's shape, for any subject (``{sub}`` matching
        any one segment): what history settings apply to."""
        parts = channel.split(":")
        wanted = self._segments
        if len(parts) < len(wanted) + self._rest or (not self._rest and len(parts) != len(wanted)):
            return False
        return all(
            part and (kind != "literal" or part == value)
            for (kind, value), part in zip(wanted, parts, strict=False)
        )

    def grant(self, action: Action) -> str | bool:
        """What this rule grants for ``action``: True, a permission template, or False."""
        return self.subscribe if action == "subscribe" else self.publish


def _check_history(size: object, ttl: object, pattern: str) -> None:
    if size is None and ttl is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1_000_000:
        raise ValueError(f"history_size of {pattern!r} must be an int from 1 to 1000000")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 10**9:
        raise ValueError(f"history_ttl of {pattern!r} must be seconds > 0, with history_size")


def _check_access(access: Access, captures: set[str], pattern: str) -> str | bool:
    if access is None or access is False:
        return False
    if access is True:
        return True
    if not isinstance(access, str):
        raise ValueError(f"a grant must be True, None or a permission, got {access!r}")
    check_permission(access)
    for name in _PLACEHOLDER.findall(access):
        if name not in captures and name != "sub":
            raise ValueError(f"permission {access!r} uses {{{name}}}, not captured by {pattern!r}")
    if "*" in _PLACEHOLDER.sub("", access):
        raise ValueError(f"required permissions cannot contain wildcards: {access!r}")
    try:
        access.format_map({name: "x" for name in [*captures, "sub"]})
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"bad permission template {access!r}") from None
    return access


class ChannelPolicy:
    """Decides who may subscribe and publish to which channel; default deny.

    ``rules`` are :class:`ChannelRule` objects. ``max_length`` (characters, default 128)
    and ``charset`` (a regular-expression character class body, default letters, digits
    and ``_ . : @ -``) bound channel names; names starting with one of
    ``reserved_prefixes`` are always refused. Holds no per-request state.
    """

    def __init__(
        self,
        rules: Iterable[ChannelRule],
        *,
        max_length: int = 128,
        charset: str = _DEFAULT_CHARSET,
        reserved_prefixes: Iterable[str] = (),
    ) -> None:
        rules = tuple(rules)
        if not all(isinstance(r, ChannelRule) for r in rules):
            raise ValueError("rules must be ChannelRule instances")
        if type(max_length) is not int or not 1 <= max_length <= 1024:
            raise ValueError("max_length must be an int in [1, 1024]")
        if isinstance(reserved_prefixes, str):
            raise ValueError("reserved_prefixes must be a collection of strings")
        reserved = tuple(reserved_prefixes)
        if not all(isinstance(p, str) and p for p in reserved):
            raise ValueError("reserved_prefixes must be non-empty strings")
        try:
            self._name = re.compile(f"[{charset}]{{1,{max_length}}}")
        except re.error as exc:
            raise ValueError(f"bad charset {charset!r}: {exc}") from None
        self._rules = rules
        self._reserved = reserved
        self.max_length = max_length

    @property
    def rules(self) -> tuple[ChannelRule, ...]:
        """The rules, in the order given."""
        return self._rules

    def with_reserved(self, *prefixes: str) -> ChannelPolicy:
        """A copy of this policy that also refuses names starting with ``prefixes``."""
        copy = ChannelPolicy(self._rules, max_length=self.max_length)
        copy._name = self._name
        copy._reserved = self._reserved + tuple(p for p in prefixes if p)
        return copy

    def history(self, channel: str) -> ChannelRule | None:
        """The rule whose history settings apply to ``channel`` (the first, in order, that
        covers it and keeps history), or None: the channel has no history."""
        for rule in self._rules:
            if rule.history_size is not None and rule.covers(channel):
                return rule
        return None

    def presence(self, channel: str) -> ChannelRule | None:
        """The rule whose presence settings apply to ``channel`` (the first, in order, that
        covers it and has presence), or None: the channel has no presence."""
        for rule in self._rules:
            if rule.presence and rule.covers(channel):
                return rule
        return None

    def valid_name(self, channel: object) -> bool:
        """Whether ``channel`` is a well-formed, unreserved channel name."""
        return (
            isinstance(channel, str)
            and self._name.fullmatch(channel) is not None
            and not channel.startswith(self._reserved)
        )

    async def allows(self, principal: Principal, action: Action, channel: str) -> bool:
        """Whether ``principal`` may ``action`` (subscribe or publish) ``channel``.

        False for invalid names. Permissions are fetched at most once per call, and only
        when a matching rule needs one; :class:`~middleware.errors.ServiceUnavailable` from
        the principal propagates (an outage is not a denial).
        """
        if not self.valid_name(channel):
            return False
        granted: Collection[str] | None = None
        subject = principal.subject
        for rule in self._rules:
            grant = rule.grant(action)
            if grant is False:
                continue
            captures = rule.match(channel, subject)
            if captures is None:
                continue
            if grant is True:
                return True
            if granted is None:
                granted = await principal.permissions()
            if permission_granted(granted, grant.format_map(captures)):
                return True
        return False

"""What a sender scheme declares: the `Scheme` protocol, and `SchemeSpec`, a ready implementation.

A scheme is everything the gateway knows about one kind of sender: how it authenticates a
request (`verify`, pure), which secrets it accepts, which request headers carry credentials
(never stored), the `[[sources]]` keys only it takes, and how to make realistic samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.model import ParsedEvent, Verified

if TYPE_CHECKING:  # the config imports the registry; the registry must not import the config
    from gateway.config import SourceConfig
    from gateway.normalized import Normalized

Headers = Mapping[str, str]
"""Request headers with lower-case names; values decoded as Latin-1, as HTTP carries them."""

Problems = Iterable[tuple[str, str]]
"""(key inside the source's table, what is wrong) pairs, e.g. ("auth", "...")."""


@dataclass(frozen=True, slots=True)
class SecretRule:
    """The lengths a scheme accepts for one secret, inclusive; `why` ends the error message."""

    min_length: int
    max_length: int | None = None
    why: str = ""

    def problem(self, secret: str) -> str | None:
        size = len(secret)
        if size < self.min_length or (self.max_length is not None and size > self.max_length):
            return f"is {size} characters; {self.why}"
        return None


@dataclass(frozen=True, slots=True)
class Option:
    """A `[[sources]]` key only this scheme takes: its TOML type, default and allowed values."""

    kind: type
    default: Any
    choices: tuple[Any, ...] = ()


class Scheme(Protocol):
    """The contract of a sender scheme, checked by mypy and when the registry loads one."""

    @property
    def name(self) -> str:
        """The `scheme = "..."` of a source, and the `scheme` of its stored events."""

    @property
    def event_types(self) -> tuple[str, ...]:
        """The documented event types; the first is the default sample of `gateway send`."""

    @property
    def options(self) -> Mapping[str, Option]:
        """`[[sources]]` keys only this scheme takes; parsed values land in `SourceConfig.options`."""

    @property
    def credential_headers(self) -> frozenset[str]:
        """Lower-case names of request headers that carry a credential: never stored."""

    @property
    def secret_form(self) -> Callable[[bytes], str] | None:
        """What a sender sends instead of the secret itself (TradrAPI: its SHA-1 hex), if anything:
        computed once per secret at load (`Secret.derive`) and looked for in requests like the secret."""

    @property
    def dedup_fields(self) -> tuple[str, ...]:
        """Where the entity id is read from when the source sets no `dedup_fields`."""

    def secret_rule(self, options: Mapping[str, Any]) -> SecretRule | None:
        """The rule for a source's secrets; None when, with these options, it takes none."""

    def check(self, source: SourceConfig) -> Problems:
        """Problems across keys of a parsed source that no single key shows."""

    def verify(self, body: bytes, headers: Headers, now: float, source: SourceConfig) -> Verified:
        """Authenticate and parse one request. Pure: raises `Rejected` only."""

    def identify(self, data: bytes, source: SourceConfig, member: bool) -> ParsedEvent:
        """Read one stored event again from the bytes kept of it: the request body, or (`member`)
        a batch member's own JSON. Pure; used to recompute identities when their rules change."""

    def sign(self, body: bytes, source: SourceConfig, now: float) -> dict[str, str]:
        """The headers that sender would send with `body`."""

    def sample(self, event_type: str) -> bytes:
        """A realistic body with fresh ids. The built-in schemes also take `position` (an id) and
        `volume` (lots) as keywords, for `gateway send --position`."""

    def new_secret(self) -> str:
        """A fresh secret this scheme accepts, for the embedded default config."""

    def normalize(self, event_type: str, event: Any) -> Normalized | None:
        """The trading meaning of one stored event (its parsed JSON), or None when it has none
        (gateway/normalized.py). Pure, never raises. Optional for schemes registered from
        outside: without it, their events have no normalized form."""


def _no_problems(source: SourceConfig) -> Problems:
    return ()


def _no_meaning(event_type: str, event: Any) -> Normalized | None:
    return None


@dataclass(frozen=True, slots=True)
class SchemeSpec:
    """A `Scheme` assembled from plain functions: what the built-in scheme modules use."""

    name: str
    event_types: tuple[str, ...]
    verify: Callable[[bytes, Headers, float, SourceConfig], Verified]
    identify: Callable[[bytes, SourceConfig, bool], ParsedEvent]
    sign: Callable[[bytes, SourceConfig, float], dict[str, str]]
    sample: Callable[..., bytes]  # (event_type, position=None, volume=None) for the built-ins
    new_secret: Callable[[], str]
    # One rule, or a function of the source's options (MetaCopier's depends on `auth`).
    secrets: SecretRule | Callable[[Mapping[str, Any]], SecretRule | None]
    dedup_fields: tuple[str, ...]
    credential_headers: frozenset[str] = frozenset()
    secret_form: Callable[[bytes], str] | None = None
    options: Mapping[str, Option] = field(default_factory=dict)
    check: Callable[[SourceConfig], Problems] = _no_problems
    normalize: Callable[[str, Any], Normalized | None] = _no_meaning

    def secret_rule(self, options: Mapping[str, Any]) -> SecretRule | None:
        return self.secrets if isinstance(self.secrets, SecretRule) else self.secrets(options)

"""Sender schemes. One module per scheme; adding one means a new module and a line here.

Each scheme module provides:

- `verify(body, headers, now, source) -> Verified`: pure; raises `Rejected` only.
- `sign(body, source, now) -> dict[str, str]`: the headers that sender would send.
- `sample(event_type) -> bytes`: a realistic body with fresh ids (for `gateway send`).
- `EVENT_TYPES`: the documented event types, the first being the default sample.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Protocol

from gateway.config import SourceConfig
from gateway.model import Verified

_REGISTRY: dict[str, str] = {
    "metacopier": "gateway.schemes.metacopier",
    "pipsync": "gateway.schemes.pipsync",
    "tradrapi": "gateway.schemes.tradrapi",
}


class Scheme(Protocol):
    EVENT_TYPES: tuple[str, ...]

    def verify(
        self, body: bytes, headers: Mapping[str, str], now: float, source: SourceConfig
    ) -> Verified: ...

    def sign(self, body: bytes, source: SourceConfig, now: float) -> dict[str, str]: ...

    def sample(self, event_type: str) -> bytes: ...


def get_scheme(name: str) -> Scheme:
    module: ModuleType = importlib.import_module(_REGISTRY[name])
    return module

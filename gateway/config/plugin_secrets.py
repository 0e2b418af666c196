"""Which plugin options are secrets written in the file: a guess, since options are the
plugin's own business. By name (secret, token, password, Authorization, api_key, ...) plus
credentials inside URLs; a value read from the environment (env:NAME) is never one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SECRET_NAME = re.compile(r"secret|token|passw|key|auth|credential|cookie|signature", re.IGNORECASE)
_URL_SECRET = re.compile(r"://[^/@\s]*:[^/@\s]*@|[?&][^=&#]*(?:secret|token|passw|key|auth|sig)[^=&#]*=[^&#]",
                         re.IGNORECASE)


def literal_option_secrets(value: Any, key: str, name: str = "") -> list[str]:
    """Key paths of plugin options that look like secrets written in the file (not env:NAME)."""
    if isinstance(value, Mapping):
        return [k for sub, item in value.items() for k in literal_option_secrets(item, f"{key}.{sub}", str(sub))]
    if isinstance(value, list):
        return [k for i, item in enumerate(value) for k in literal_option_secrets(item, f"{key}[{i}]", name)]
    if not isinstance(value, str) or not value or value.startswith("env:"):
        return []
    return [key] if _SECRET_NAME.search(name) or _URL_SECRET.search(value) else []

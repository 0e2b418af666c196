"""config.example.toml loads, and documents every key the loader accepts."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import config as config_module
from gateway.config import load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
ENV = {"METACOPIER_SECRET": "m" * 40, "METACOPIER_SECRET_OLD": "o" * 40, "PIPSYNC_SECRET": "whsec_x1234567",
       "TRADRAPI_KEY": "k" * 30, "DASHBOARD_SECRET": "d" * 32}


def test_example_loads() -> None:
    config = load_config(EXAMPLE, environ=ENV)
    assert sorted(config.sources) == ["metacopier", "pipsync", "tradrapi"]
    assert len(config.sources["metacopier"].secrets) == 2
    assert config.store.path == EXAMPLE.parent / "var" / "gateway.db"
    assert [p.name for p in config.plugins] == ["journal"]


def test_example_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    source = "".join(path.read_text() for path in Path(config_module.__file__).parent.glob("*.py"))
    # every key name the loader accepts appears in a quoted set/get in gateway/config/
    accepted = set(re.findall(r'c\.get\([^,]+, [^,]+, "(\w+)"', source))
    accepted |= {"secret", "secrets", "name", "scheme", "auth", "require_timestamp", "id", "scopes"}
    accepted |= set(re.findall(r'c\.number\(raw, key, "(\w+)"', source))
    accepted |= set(re.findall(r'_globs\(c, raw, key, "(\w+)"', source))
    assert len(accepted) > 12
    documented = set(re.findall(r"^#? ?(\w+) =", text, flags=re.M))
    documented |= set(re.findall(r"^\[+\w+\.(\w+)\]", text, flags=re.M))  # [plugins.options]
    assert accepted <= documented, accepted - documented

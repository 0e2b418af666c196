"""Logging: JSON lines for log shippers when not on a terminal, readable lines on one.

Every line written while a request is handled carries its request id (a context variable,
set once per request). Nothing here ever formats a secret: details and extras come from the
gateway's own messages, which never include credentials or signatures.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# A credential a client put in a URL (`?access_token=`, refused by the API) must not reach the
# log through uvicorn's own lines, which quote the path with its query.
_URL_CREDENTIAL = re.compile(r"((?:access_token|token|client_secret|secret|key|signature)=)[^&\s\"']+",
                             re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the values of credential-like query parameters replaced."""
    return _URL_CREDENTIAL.sub(r"\1[redacted]", text) if "=" in text else text


# uvicorn adds `color_message` to its own lines: the message again, with ANSI colour escapes.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        rid = request_id.get()
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        text += f" [{rid}]" if rid else ""
        text += f" {extras}" if extras else ""
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(fmt: str = "auto", level: int = logging.INFO) -> None:
    """`auto`: JSON unless stderr is a terminal."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO with its full URL, credentials and query string included
    # (an http plugin's url may carry both); the plugin runner logs failures itself.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))

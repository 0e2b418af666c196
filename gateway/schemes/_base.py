"""Helpers shared by the scheme verifiers. Everything here is pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, AnyStr

import orjson

from gateway._secret import Secret
from gateway.errors import Rejected
from gateway.model import JSON_MAX_DEPTH, QUARANTINE_TYPE, Identity, ParsedEvent, too_deep
from gateway.schemes.spec import Headers

_HEX = re.compile(r"[0-9a-fA-F]+")
_DIGITS = re.compile(r"[0-9]{1,19}")
# orjson reads integers beyond 64 bits as floats, rounding them: from 2**53 on, two ids
# the sender told apart could read as one, so such a number is no id (the body hash is).
_EXACT_FLOAT = 2.0**53
# 2**64 has 20 digits and -2**63 19: integers with fewer digits fit in 64 bits.
_LONG_DIGITS = re.compile(rb"-[0-9]{19}|[0-9]{20}")
# Every digit as "9": a run of 19 digits (in an integer of 20, or of 19 with a sign) is then found
# by bytes.find, ten times faster than the regular expression on bodies that have none.
_DIGITS_AS_NINE = bytes.maketrans(b"0123456789", b"9" * 10)
_NINETEEN = b"9" * 19


class _WideInt(Exception):
    pass


def hmac_sha256_hex(key: bytes, *parts: bytes) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest()


def parse_hex(value: str, length: int, what: str) -> str:
    """Lower-cased hex digest of exactly `length` characters, or a `malformed_signature`."""
    value = value.strip()
    if len(value) != length or not _HEX.fullmatch(value):
        shown = f"{len(value)} characters" if len(value) != length else "non-hex characters"
        raise Rejected("malformed_signature", f"{what} must be {length} hex characters; got {shown}")
    return value.lower()


def matches_any(expected: Iterable[AnyStr], given: AnyStr) -> bool:
    """Constant-time comparison of `given` against each candidate (str must be ASCII)."""
    found = False
    for candidate in expected:
        # No short-cut: every secret is tried, so timing does not tell which one matched.
        found |= hmac.compare_digest(candidate, given)
    return found


def parse_unix(value: str, what: str) -> int:
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise Rejected("malformed_signature", f"{what} must be a Unix timestamp in digits")
    return int(value)


def check_window(sent_at: float, now: float, tolerance: int, what: str) -> None:
    """Reject timestamps more than `tolerance` seconds away from `now`, either way."""
    skew = now - sent_at
    if abs(skew) <= tolerance:
        return
    # Whole seconds read best, but never "300 s in the past; tolerance is 300 s".
    shown = f"{abs(skew):.0f}" if round(abs(skew)) > tolerance else f"{abs(skew):.1f}"
    if skew > tolerance:
        raise Rejected(
            "stale_timestamp",
            f"{what} is {shown} s in the past; tolerance is {tolerance} s "
            "(check that the sender's clock and this server's clock are synchronised)",
        )
    raise Rejected(
        "future_timestamp",
        f"{what} is {shown} s in the future; tolerance is {tolerance} s "
        "(check that the sender's clock and this server's clock are synchronised)",
    )


def require_header(headers: Headers, names: Sequence[str]) -> str:
    """The first of `names` (spelled as the vendor documents them) present in `headers`."""
    for name in names:
        value = headers.get(name.lower())
        if value is not None:
            return value
    shown = " or ".join(names)
    raise Rejected("missing_signature", f"the {shown} header is missing")


def secret_keys(secrets: Sequence[Secret]) -> Iterable[bytes]:
    return (s.key for s in secrets)


# --- payload side: lenient, never raises -------------------------------------------------

def load_json(body: bytes) -> tuple[Any, str | None]:
    """The parsed body, or `(None, reason)` when it cannot be read as a JSON object."""
    if not body:
        return None, "empty body"
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"[:300]
    if not isinstance(obj, dict):
        return None, f"JSON {type(obj).__name__} where an object was expected"
    if too_deep(body, obj):
        # Readable here, but the API, the stream and plugins could not serialise it again.
        return None, f"JSON nested deeper than {JSON_MAX_DEPTH} levels"
    return obj, None


def has_wide_int(body: bytes) -> bool:
    """Whether `body` (JSON that orjson read) holds an integer outside 64 bits.

    orjson reads such an integer as a float, rounding it, so JSON written back from the
    parsed value would differ from what the sender sent.
    """
    if body.translate(_DIGITS_AS_NINE).find(_NINETEEN) < 0:  # nearly every body: no long digit run
        return False
    if not _LONG_DIGITS.search(body):
        return False

    def check(text: str) -> int:
        digits = text.lstrip("-")
        if len(digits) > 20 or not -(2**63) <= int(text) < 2**64:
            raise _WideInt
        return 0

    # The standard library's parser calls parse_int for integer literals only, never for
    # digits inside strings or for floats; it runs only on the rare body with long digit runs.
    try:
        json.loads(body, parse_int=check)
    except _WideInt:
        return True
    except ValueError:  # orjson accepted what the standard parser refuses: nothing to round
        return False
    return False


def scalar(value: Any) -> str | None:
    """A non-empty string or integer as text; anything else is no id."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value
    return None


_PARTS: dict[str, tuple[str, ...]] = {}  # dotted paths, split once (a few dozen: the schemes' and the config's)


def at_path(obj: Any, path: str) -> Any:
    parts = _PARTS.get(path)
    if parts is None:
        parts = _PARTS[path] = tuple(path.split("."))
    for part in parts:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def first_at(obj: Any, paths: Iterable[str]) -> str | None:
    """The first path that holds a usable id wins."""
    for path in paths:
        value = scalar(at_path(obj, path))
        if value is not None:
            return value
    return None


def first_str(obj: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def quarantined(data: bytes, reason: str, payload: bytes | None = None) -> ParsedEvent:
    """An authentic event we cannot read: named, and compared, by its exact bytes."""
    digest = hashlib.sha256(data).digest()
    return ParsedEvent(
        event_type=QUARANTINE_TYPE,
        entity_id="sha256-" + digest.hex(),
        payload=payload,
        quarantine_reason=reason,
        identity=digest,
        fingerprint=digest,
    )


def fingerprint(obj: Any, ignore: Sequence[str] = (), raw: bytes | None = None,
                canonical: bytes | None = None) -> bytes:
    """SHA-256 of the event's canonical JSON (sorted keys, no whitespace) without the fields
    at the `ignore` paths: two repeats of one identity are one occurrence exactly when equal.

    `raw`, the bytes `obj` was read from, is hashed as sent when it holds an integer beyond
    64 bits: orjson reads those rounded, and two different values must not compare equal.
    `canonical` is `obj` already written canonically, when the caller has it.
    """
    if raw is not None and has_wide_int(raw):
        return hashlib.sha256(raw).digest()
    if canonical is not None and not ignore:  # `obj` already written canonically (batch members)
        return hashlib.sha256(canonical).digest()
    for path in ignore:
        obj = _without(obj, path.split("."))
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).digest()


def _without(obj: Any, path: list[str]) -> Any:
    """`obj` less the field at `path`, copying only along the path (never mutating `obj`)."""
    if not isinstance(obj, dict) or path[0] not in obj:
        return obj
    if len(path) == 1:
        return {k: v for k, v in obj.items() if k != path[0]}
    return {**obj, path[0]: _without(obj[path[0]], path[1:])}


def occurrence(obj: Any, override: Sequence[str] | None, id_paths: Iterable[str],
               time_paths: Iterable[str]) -> tuple[str, ...] | None:
    """The id parts naming one occurrence: `override`'s first id (a source's `dedup_fields`),
    else the first id at `id_paths` plus, when present, the first value at `time_paths` (what
    tells two occurrences of one entity apart). None when no id is found."""
    if override:
        value = first_at(obj, override)
        return None if value is None else (value,)
    entity = first_at(obj, id_paths)
    if entity is None:
        return None
    when = first_part(obj, time_paths)
    return (entity,) if when is None else (entity, when)


def event(event_type: str, obj: Any, raw: bytes | None, *, identity: tuple[str, ...] | None, entity: str | None,
          ignore: Sequence[str], account: str | None, symbol: str | None,
          payload: bytes | None = None) -> ParsedEvent:
    """A readable event: named by `identity`, or by its content digest when that is None;
    ordered per `entity` (the position, account or order), or per its own identity. `raw` is
    the bytes `obj` was read from (see `fingerprint`), None where the caller has ruled out
    integers beyond 64 bits in them already.

    The content digest that names an event covers the ignored fields too: with no id, a field
    such as MetaCopier's root `timestamp` may be all that tells two occurrences apart (two
    `history.updated` of one account), and merging them would drop the second for ever.
    """
    digest = fingerprint(obj, ignore, raw, canonical=payload)
    if identity:
        named: Identity = identity
        entity = entity or identity[0]
    else:
        content = fingerprint(obj, (), raw, canonical=payload) if ignore else digest
        named, entity = content, entity or "sha256-" + content.hex()
    return ParsedEvent(event_type=event_type, entity_id=entity, account=account, symbol=symbol,
                       payload=payload, identity=named, fingerprint=digest, document=obj)


def first_part(obj: Any, paths: Iterable[str]) -> str | None:
    """Like `first_at`, for values that tell occurrences apart (times): fractions allowed."""
    for path in paths:
        value = at_path(obj, path)
        if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
            return repr(value)
        text = scalar(value)
        if text is not None:
            return text
    return None

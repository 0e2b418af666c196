"""Hypothesis strategies for hostile JSON bodies, shared by the verifier and the HTTP properties.

Bodies are built from raw fragments, not from Python values, so they can hold what no
serialiser writes: duplicate keys, integers beyond 64 bits, 1e400, NaN, lone surrogates,
invalid UTF-8, a BOM, nesting around the limits (200 kept as JSON, 254 written, 1024 read).
"""

from __future__ import annotations

import orjson
from hypothesis import strategies as st


def obj(pairs: list[tuple[str, bytes]]) -> bytes:
    """A JSON object from raw member values, keeping duplicate keys as written."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in pairs) + b"}"


def deep(depth: int, kind: str) -> bytes:
    """`depth` levels of arrays (`[`) or objects (`{`), as raw JSON."""
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
).map(orjson.dumps)
# Beyond 2**53 (floats round), 2**64 (orjson reads a float) and 10**308 (orjson refuses): any digit count.
huge_ints = st.integers(16, 330).flatmap(lambda d: st.integers(10 ** (d - 1), 10**d - 1)).flatmap(
    lambda n: st.sampled_from([str(n).encode(), b"-" + str(n).encode()]))
odd_numbers = st.sampled_from([b"1e400", b"-1e400", b"1e-400", b"1E308", b"-0", b"0.0", b"NaN", b"Infinity",
                               b"-Infinity", b"1.5", b"01", b"1.", b".5", b"+1", b"0x10"])
odd_strings = st.sampled_from([b'"\\ud800"', b'"\\udfff"', b'"a\\ud800b"', b'"\\ud83d\\ude00"', b'"\\u0000"',
                               b'"\xff\xfe"', b'"\xc3"', b'"\xed\xa0\x80"', b'"caf\xc3\xa9"', b'" "', b'""'])
long_strings = st.builds(lambda c, n: b'"' + c * n + b'"', st.sampled_from([b"a", b"7", b"\\n", b"\xc3\xa9"]),
                         st.integers(1000, 200_000))
deep_values = st.builds(deep, st.sampled_from([2, 199, 200, 201, 250, 253, 254, 255, 1023, 1024, 1025, 2000]),
                        st.sampled_from(["[", "{"]))
values = plain | huge_ints | odd_numbers | odd_strings | long_strings | deep_values
event_types = st.sampled_from([b'"position.opened"', b'"trade.opened"', b'"open_position"', b'"-"', b'"a:b%"',
                               b'"a\\u0000"'])
# Ids as senders might send them, with dedup-key separators, escapes and NUL among ordinary characters.
ids = st.text(":%\x00-aZ9 ", min_size=1, max_size=6).map(orjson.dumps) | st.integers(-(2**63), 2**64 - 1).map(
    lambda n: str(n).encode())
well_formed = plain | event_types | ids
maybe = st.one_of(well_formed, well_formed, values)  # mostly readable: the odd value stands out


def _members(keys: dict[str, st.SearchStrategy[bytes]]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    """Some of `keys` in any order, each perhaps twice (duplicate keys), plus a stray key."""
    one = st.sampled_from(sorted(keys)).flatmap(lambda k: keys[k].map(lambda v: (k, v)))
    return st.lists(one | st.tuples(st.text(max_size=5), maybe), max_size=6)


mc_bodies = _members({
    "type": maybe, "event": maybe, "eventType": maybe, "ticket": maybe, "accountId": maybe, "symbol": maybe,
    "position": _members({"id": maybe, "symbol": maybe}).map(obj) | values,
}).map(obj)
ps_bodies = _members({
    "type": maybe, "id": maybe, "created": maybe,
    "data": _members({"position_id": maybe, "trade_id": maybe, "signal_id": maybe, "account_id": maybe,
                      "symbol": maybe}).map(obj) | values,
}).map(obj)
tr_member = _members({
    "eventType": maybe, "accountId": maybe, "exchangeAccountId": maybe,
    "payload": _members({"id": maybe, "updatedAt": maybe, "symbol": maybe}).map(obj) | values,
}).map(obj) | values
tr_bodies = _members({
    "payload": st.lists(tr_member, max_size=4).map(lambda ms: b"[" + b",".join(ms) + b"]") | values,
    "attempts": maybe, "count": maybe, "eventType": maybe,
}).map(obj)


def _wrapped(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bodies as they might arrive: whole, with a BOM or whitespace, truncated, or not an object."""
    return st.one_of(
        inner, inner, inner, inner, inner, inner,
        inner.map(lambda b: b"\xef\xbb\xbf" + b),
        inner.map(lambda b: b" \r\n\t" + b + b"\n"),
        st.tuples(inner, st.integers(0, 400)).map(lambda t: t[0][: t[1]]),
        values,
        st.lists(values, max_size=3).map(lambda vs: b"[" + b",".join(vs) + b"]"),
        st.sampled_from([b"", b" ", b"null", b"{}", b"[]", b"{", b"}", b"\x00", b"\xff"]),
        st.binary(max_size=200),
    )


BODIES: dict[str, st.SearchStrategy[bytes]] = {
    "metacopier": _wrapped(mc_bodies), "pipsync": _wrapped(ps_bodies), "tradrapi": _wrapped(tr_bodies),
}
any_body = st.one_of(*BODIES.values())

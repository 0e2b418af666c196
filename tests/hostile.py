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
id_texts = st.text(":%\x00-aZ9 ", min_size=1, max_size=6).map(orjson.dumps)
ids = id_texts | st.integers(-(2**63), 2**64 - 1).map(lambda n: str(n).encode())
well_formed = plain | event_types | ids
maybe = st.one_of(well_formed, well_formed, values)  # mostly readable: the odd value stands out


def _members(keys: dict[str, st.SearchStrategy[bytes]]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    """Some of `keys` in any order, each perhaps twice (duplicate keys), plus a stray key."""
    one = st.sampled_from(sorted(keys)).flatmap(lambda k: keys[k].map(lambda v: (k, v)))
    return st.lists(one | st.tuples(st.text(max_size=5), maybe), max_size=6)


def _shaped(reads: st.SearchStrategy[list[tuple[str, bytes]]],
            extra: st.SearchStrategy[list[tuple[str, bytes]]]) -> st.SearchStrategy[bytes]:
    """Mostly an object with what the scheme reads first, then anything (a duplicate key may override
    it); else the same keys in any order and number."""
    shaped = st.tuples(reads, extra).map(lambda t: obj(t[0] + t[1]))
    return st.integers(0, 3).flatmap(lambda i: extra.map(obj) if i == 0 else shaped)


def _pair(key: str, value: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    return value.map(lambda v: [(key, v)])


type_values = event_types | id_texts | st.text(max_size=8).map(orjson.dumps)
id_values = st.one_of(ids, ids, plain, huge_ints, long_strings)
mc_fields = {
    "type": maybe, "event": maybe, "eventType": maybe, "ticket": maybe, "accountId": maybe, "symbol": maybe,
    "position": _members({"id": maybe, "symbol": maybe}).map(obj) | values,
}
mc_reads = st.tuples(_pair("type", type_values), _pair("ticket", id_values) | _pair(
    "position", st.tuples(_pair("id", id_values), _members({"symbol": maybe})).map(lambda t: obj(t[0] + t[1]))))
mc_bodies = _shaped(mc_reads.map(lambda t: t[0] + t[1]), _members(mc_fields))

ps_fields = {
    "type": maybe, "id": maybe, "created": maybe,
    "data": _members({"position_id": maybe, "trade_id": maybe, "signal_id": maybe, "account_id": maybe,
                      "symbol": maybe}).map(obj) | values,
}
ps_data = st.tuples(st.sampled_from(["position_id", "trade_id", "signal_id"]), id_values).map(lambda kv: obj([kv]))
ps_reads = st.tuples(_pair("type", type_values), _pair("id", id_values) | _pair("data", ps_data))
ps_bodies = _shaped(ps_reads.map(lambda t: t[0] + t[1]), _members(ps_fields))

tr_fields = {
    "eventType": maybe, "accountId": maybe, "exchangeAccountId": maybe,
    "payload": _members({"id": maybe, "updatedAt": maybe, "symbol": maybe}).map(obj) | values,
}
tr_payload = st.tuples(_pair("id", id_values), _members({"updatedAt": id_values, "symbol": maybe}))
tr_reads = st.tuples(_pair("eventType", type_values), _pair("payload", tr_payload.map(lambda t: obj(t[0] + t[1]))))
tr_member = _shaped(tr_reads.map(lambda t: t[0] + t[1]), _members(tr_fields)) | values
tr_batch = st.lists(tr_member, max_size=4).map(lambda ms: b"[" + b",".join(ms) + b"]")
tr_root_fields = {"payload": tr_batch | values, "attempts": maybe, "count": maybe, "eventType": maybe}
tr_bodies = _shaped(_pair("payload", tr_batch), _members(tr_root_fields))


def _wrapped(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bodies as they might arrive: mostly whole; else with a BOM or whitespace, truncated, or not an object."""
    odd = st.one_of(
        inner.map(lambda b: b"\xef\xbb\xbf" + b),
        inner.map(lambda b: b" \r\n\t" + b + b"\n"),
        st.tuples(inner, st.integers(0, 400)).map(lambda t: t[0][: t[1]]),
        values,
        st.lists(values, max_size=3).map(lambda vs: b"[" + b",".join(vs) + b"]"),
        st.sampled_from([b"", b" ", b"null", b"{}", b"[]", b"{", b"}", b"\x00", b"\xff"]),
        st.binary(max_size=200),
    )
    return st.integers(0, 2).flatmap(lambda i: odd if i == 0 else inner)


BODIES: dict[str, st.SearchStrategy[bytes]] = {
    "metacopier": _wrapped(mc_bodies), "pipsync": _wrapped(ps_bodies), "tradrapi": _wrapped(tr_bodies),
}
any_body = st.one_of(*BODIES.values())

"""Abuse limits of the ingest path: per-source token buckets and the client address behind proxies.

Synchronous, with the clock passed in. Within one process nothing takes a lock (one event
loop: a plain attribute update is atomic with respect to requests); across the workers of
`gateway run --workers N` the limits are divided (`divided`) or, for sources' rate limits,
shared through a mapped file (`SharedTokenBucket`). docs/architecture.md says which and why.

Where each limit applies, and why there:

- what the request head alone shows is answered before the request takes a place in flight:
  an unknown source, a wrong method, an address outside `allow_ips`, a declared body over the
  limit, and a credential header that is missing or malformed for the source's scheme (the
  verifier, run on an empty body, says `missing_signature` or `malformed_signature`). A flood
  without well-formed credentials never waits for its bodies;
- the global cap on requests in flight (`IngestApp`) is checked before a body is read: it costs
  nothing and needs no trust, and it bounds buffered bodies to `max_in_flight * max_body_bytes`
  whoever sends them. One client address (after `trusted_proxies`) may hold at most half of it,
  so a slow-body flood from one address with forged but well-formed credentials leaves the
  other half to everyone else;
- a source's token bucket is charged only *after* the request authenticated: anyone can POST
  to `/hooks/metacopier`, and if forged requests drew from that bucket, a flood without the
  secret would make the real sender get 429s. Unauthenticated floods are bounded by the
  in-flight cap and its per-client share instead, and leave nothing on disk but the bounded
  rejection log.
"""

from __future__ import annotations

import dataclasses
import fcntl
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from gateway.config import Config
from gateway.ipnet import IPAddress, IPNetwork, in_networks, ip_allowed, parse_ip


def _take(tokens: float, stamp: float, now: float, rate: float, burst: float) -> tuple[float, float, float]:
    """A bucket's (tokens, stamp) after one take at `now`, and the wait: 0.0 when a token was
    taken, else the seconds until there is one (nothing taken)."""
    # A clock that steps back (wall time adjusted) refills nothing rather than draining.
    elapsed = now - stamp
    if elapsed > 0:
        tokens = min(burst, tokens + elapsed * rate)
        stamp = now
    if tokens >= 1.0 - 1e-9:  # float sums of elapsed * rate fall a hair short of whole tokens
        return max(0.0, tokens - 1.0), stamp, 0.0
    return tokens, stamp, (1.0 - tokens) / rate


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one request takes one token.

    Starts full, so a sender that was quiet may send `burst` requests at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is one (nothing taken)."""
        self.tokens, self.stamp, wait = _take(self.tokens, self.stamp, now, self.rate, self.burst)
        return wait


class SharedTokenBucket:
    """A TokenBucket whose state (two doubles) lives in a file that every worker of one
    supervisor maps, so a source's rate limit means the same with N workers as with one.
    `flock` serialises take() across the processes (two system calls, about 2 µs; only sources
    with a rate limit pay it), and the kernel releases it if its holder dies. A new file is all
    zeros: a full bucket."""

    __slots__ = ("_fd", "_map", "burst", "rate")
    _LAYOUT = struct.Struct("=dd")  # tokens, stamp (0.0: never taken from)

    def __init__(self, path: Path, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < self._LAYOUT.size:
            os.ftruncate(self._fd, self._LAYOUT.size)
        self._map = mmap.mmap(self._fd, self._LAYOUT.size)

    def take(self, now: float) -> float:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            tokens, stamp = self._LAYOUT.unpack_from(self._map)
            if stamp == 0.0:
                tokens, stamp = self.burst, now
            tokens, stamp, wait = _take(tokens, stamp, now, self.rate, self.burst)
            self._LAYOUT.pack_into(self._map, 0, tokens, stamp)
            return wait
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def divided(config: Config, workers: int) -> Config:
    """`config` for one of `workers` processes behind one listening socket: the limits that
    protect the host (requests in flight, connections, streams) and the token endpoint's
    throttle are divided between them, so their sum is what the file says. Never below 1 (0
    for the reserve). Sources' rate limits are shared instead (SharedTokenBucket)."""
    if workers <= 1:
        return config

    def part(value: int, low: int = 1) -> int:
        return max(low, value // workers)

    server, api = config.server, config.api
    return dataclasses.replace(
        config,
        server=dataclasses.replace(server, max_in_flight=part(server.max_in_flight),
                                   max_connections=part(server.max_connections),
                                   reserved_hook_connections=min(part(server.reserved_hook_connections, 0),
                                                                 part(server.max_connections) - 1)),
        api=dataclasses.replace(api, max_streams=part(api.max_streams),
                                max_streams_per_client=part(api.max_streams_per_client),
                                token_failures_per_minute=part(api.token_failures_per_minute)),
    )


def _parse_hop(text: str) -> IPAddress | None:
    """One X-Forwarded-For element: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, with an optional
    `:port` after an IPv4 address or a bracketed IPv6 one (some proxies add it). None if garbage."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return parse_ip(text)


def client_address(peer: str | None, forwarded_for: Iterable[bytes], trusted: tuple[IPNetwork, ...]) -> str | None:
    """The address a request is from, for `allow_ips`, logs and the stored receipt.

    `X-Forwarded-For` counts only when the socket peer is a trusted proxy; then the chain is
    read from the right (each proxy appends the address it saw) and the first address that is
    not itself a trusted proxy is the client: anything to its left was written by that client
    and may be forged. A chain of trusted proxies only gives its left-most address. A garbage
    element where the client should be gives None, which no `allow_ips` list admits, rather
    than the proxy's own address (which would turn a broken proxy into a trusted sender).
    Several X-Forwarded-For headers are one list, in order (RFC 9110 section 5.3); empty
    elements are skipped."""
    if not trusted or not ip_allowed(trusted, peer):
        return peer
    hops = [hop for value in forwarded_for for hop in value.decode("latin-1").split(",") if hop.strip()]
    if not hops:
        return peer
    address = peer
    for hop in reversed(hops):
        ip = _parse_hop(hop)
        if ip is None:
            return None
        address = str(ip)
        if not in_networks(ip, trusted):
            return address
    return address

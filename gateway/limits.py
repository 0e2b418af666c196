"""Abuse limits of the ingest path: per-source token buckets and the client address behind proxies.

Pure and synchronous: the clock is passed in, nothing here does I/O or takes a lock (the
gateway runs one event loop, so a plain attribute update is atomic with respect to requests).

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

from collections.abc import Iterable

from gateway.ipnet import IPAddress, IPNetwork, in_networks, ip_allowed, parse_ip


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
        # A clock that steps back (wall time adjusted) refills nothing rather than draining.
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0 - 1e-9:  # float sums of elapsed * rate fall a hair short of whole tokens
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


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

"""The abuse limits: the token bucket (also shared between processes), the limits divided
between workers, and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import multiprocessing
import time
from pathlib import Path

import pytest

from gateway.config import ApiConfig, Config, ServerConfig
from gateway.limits import SharedTokenBucket, TokenBucket, client_address, divided

# --- token bucket -----------------------------------------------------------------------------


def _take_all(path: Path, attempts: int) -> int:
    """In another process: the tokens `attempts` takes got from the shared bucket."""
    bucket = SharedTokenBucket(path, rate=0.001, burst=50)
    return sum(bucket.take(time.time()) == 0.0 for _ in range(attempts))


def test_a_shared_bucket_is_one_bucket_across_processes(tmp_path: Path) -> None:
    """Three processes drawing at once from one source's bucket get its burst between them,
    not three times it: a rate limit means the same with N workers as with one."""
    path = tmp_path / "rate-mc"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        got = pool.starmap(_take_all, [(path, 200)] * 3)
    assert sum(got) == 50, got
    bucket = SharedTokenBucket(path, rate=0.001, burst=50)
    assert bucket.take(time.time()) > 900  # empty: the next token is 1/rate seconds away
    bucket.close()


def test_a_shared_bucket_computes_as_a_private_one(tmp_path: Path) -> None:
    shared = SharedTokenBucket(tmp_path / "b", rate=2.0, burst=3)
    private = TokenBucket(rate=2.0, burst=3, now=100.0)
    for now in (100.0, 100.0, 100.0, 100.0, 100.25, 101.0, 101.0, 99.0, 200.0):
        assert shared.take(now) == pytest.approx(private.take(now))
    shared.close()


def test_divided_limits_sum_to_the_configured_ones() -> None:
    config = Config(sources={}, server=ServerConfig(max_in_flight=256, max_connections=2048,
                                                    reserved_hook_connections=256),
                    api=ApiConfig(max_streams=256, max_streams_per_client=16, token_failures_per_minute=10))
    assert divided(config, 1) is config
    three = divided(config, 3)
    assert (three.server.max_in_flight, three.server.max_connections, three.server.reserved_hook_connections) == \
        (85, 682, 85)
    assert (three.api.max_streams, three.api.max_streams_per_client, three.api.token_failures_per_minute) == \
        (85, 5, 3)
    tiny = divided(Config(sources={}, server=ServerConfig(max_in_flight=1, max_connections=2,
                                                          reserved_hook_connections=1)), 8)
    assert (tiny.server.max_in_flight, tiny.server.max_connections, tiny.server.reserved_hook_connections) == \
        (1, 1, 0)  # never below one; the reserve stays below the connections


def test_bucket_starts_full_then_refuses_with_the_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token takes 1/rate seconds
    assert bucket.take(100.25) == pytest.approx(0.25)  # a refusal takes nothing, the wait shrinks


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.take(0.1) == 0.0  # 0.1 s at 10/s: one token
    assert bucket.take(0.1) > 0
    # a long quiet spell saves up no more than the burst
    assert [bucket.take(3600.0) for _ in range(6)] == [0.0] * 5 + [pytest.approx(0.1)]


def test_bucket_sustains_exactly_the_rate() -> None:
    bucket = TokenBucket(rate=50.0, burst=1, now=0.0)
    accepted = sum(bucket.take(i / 1000) == 0.0 for i in range(10_000))  # 1,000 tries a second for 10 s
    assert accepted == 500  # one every 20 ms, none lost to rounding
    bucket = TokenBucket(rate=50.0, burst=20, now=0.0)
    accepted = sum(bucket.take(i / 1000) == 0.0 for i in range(10_000))
    assert accepted == 20 + 500 - 1  # the saved-up burst, then the rate (the last token is due at 10.0 s)


def test_bucket_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=1000.0)
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(900.0) == pytest.approx(1.0)  # no refill, no negative tokens
    assert bucket.take(1000.5) == pytest.approx(0.5)
    assert bucket.take(1001.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bucket_refuses_a_useless_configuration(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst, 0.0)


# --- client address ---------------------------------------------------------------------------

PROXIES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"))

ADDRESS_CASES: list[tuple[str, str | None, list[bytes], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                          str | None]] = [
    # (id, socket peer, X-Forwarded-For values, trusted proxies, expected client)
    ("no-proxies-configured-header-ignored", "203.0.113.9", [b"198.51.100.1"], (), "203.0.113.9"),
    ("untrusted-peer-spoofing", "203.0.113.9", [b"198.51.100.1"], PROXIES, "203.0.113.9"),
    ("untrusted-peer-spoofing-a-proxy", "203.0.113.9", [b"10.0.0.1"], PROXIES, "203.0.113.9"),
    ("trusted-peer-one-hop", "127.0.0.1", [b"198.51.100.1"], PROXIES, "198.51.100.1"),
    ("trusted-peer-no-header", "127.0.0.1", [], PROXIES, "127.0.0.1"),
    ("client-forged-left-part-ignored", "127.0.0.1", [b"6.6.6.6, 198.51.100.1"], PROXIES, "198.51.100.1"),
    ("client-forged-trusted-address", "127.0.0.1", [b"10.9.9.9, 198.51.100.1"], PROXIES, "198.51.100.1"),
    ("two-trusted-hops", "127.0.0.1", [b"6.6.6.6, 198.51.100.1, 10.1.2.3"], PROXIES, "198.51.100.1"),
    ("all-trusted-left-most-wins", "127.0.0.1", [b"10.0.0.7, 10.0.0.8"], PROXIES, "10.0.0.7"),
    ("several-headers-are-one-list", "10.0.0.2", [b"6.6.6.6", b"198.51.100.1"], PROXIES, "198.51.100.1"),
    ("spaces-and-empty-elements", "10.0.0.2", [b" 6.6.6.6 ,, 198.51.100.1 , "], PROXIES, "198.51.100.1"),
    ("empty-header-is-absent", "10.0.0.2", [b""], PROXIES, "10.0.0.2"),
    ("ipv6-client", "10.0.0.2", [b"2001:db8::7"], PROXIES, "2001:db8::7"),
    ("bracketed-ipv6-with-port", "10.0.0.2", [b"[2001:db8::7]:4711"], PROXIES, "2001:db8::7"),
    ("ipv4-with-port", "10.0.0.2", [b"198.51.100.1:4711"], PROXIES, "198.51.100.1"),
    ("ipv4-mapped-client", "10.0.0.2", [b"::ffff:198.51.100.1"], PROXIES, "198.51.100.1"),
    ("ipv4-mapped-peer-is-trusted", "::ffff:127.0.0.1", [b"198.51.100.1"], PROXIES, "198.51.100.1"),
    ("ipv6-proxy-hop", "10.0.0.2", [b"198.51.100.1, 2001:db8:ffff::1"], PROXIES, "198.51.100.1"),
    ("garbage-where-the-client-is", "127.0.0.1", [b"not-an-ip"], PROXIES, None),
    ("garbage-behind-a-trusted-hop", "127.0.0.1", [b"198.51.100.1, x"], PROXIES, None),
    ("garbage-left-of-the-client-is-ignored", "127.0.0.1", [b"<script>, 198.51.100.1"], PROXIES, "198.51.100.1"),
    ("hostname-is-garbage", "127.0.0.1", [b"localhost"], PROXIES, None),
    ("no-peer", None, [b"198.51.100.1"], PROXIES, None),
]


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "expected"), [c[1:] for c in ADDRESS_CASES],
                         ids=[c[0] for c in ADDRESS_CASES])
def test_client_address(peer: str | None, forwarded: list[bytes],
                        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                        expected: str | None) -> None:
    assert client_address(peer, forwarded, trusted) == expected

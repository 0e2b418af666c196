"""IP addresses and allowlists: parsing them, and matching an address against a list.

One place for the rule that `::ffff:10.0.0.1` is `10.0.0.1`: a dual-stack socket reports IPv4
clients as IPv4-mapped IPv6 addresses, and an allowlist written in IPv4 must still match them.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """The address `text` names (an IPv4-mapped IPv6 address as its IPv4 address), or None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_network(text: str) -> IPNetwork | None:
    """An address or CIDR as a network (`10.0.0.1` is `10.0.0.1/32`; host bits are dropped), or None."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def in_networks(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip in net for net in networks)


def ip_allowed(networks: tuple[IPNetwork, ...], address: str | None) -> bool:
    """True when `address` is in one of `networks`; an empty list allows any address."""
    if not networks:
        return True
    ip = parse_ip(address) if address is not None else None
    return ip is not None and in_networks(ip, networks)

"""Whether a host name or address is this computer: the one rule for the Hub token (sent over plain http only to
loopback) and for QuantDesk's own server (no key needed on loopback, and the Host header must name loopback)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """``localhost``, or any loopback address (127.0.0.0/8, ::1; IPv6 may come in brackets)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

"""The one loopback rule, shared by the Hub token (plain http only to this computer) and QuantDesk's server."""

from __future__ import annotations

from desktop.chat.server import is_loopback as server_rule
from desktop.hub.tokens import can_carry_token
from desktop.netloc import is_loopback


def test_loopback_names_and_addresses() -> None:
    for host in ("localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("", "example.org", "localhost.example.org", "10.0.0.1", "0.0.0.0", "[::]", "192.168.1.2"):
        assert not is_loopback(host), host


def test_the_token_and_the_server_follow_the_same_rule() -> None:
    assert server_rule is is_loopback
    assert can_carry_token("http://127.0.0.2:8080") and can_carry_token("http://[::1]:9")
    assert not can_carry_token("http://example.org") and can_carry_token("https://example.org")

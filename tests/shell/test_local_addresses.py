"""The host's own addresses as cache_bypass needs them (director.shell.netlink), read
from netlink: every namespace has its loopback addresses."""

from __future__ import annotations

import socket

from director.shell.netlink import Routes


def test_the_loopback_address_is_local() -> None:
    routes = Routes()
    try:
        local = routes.local_addresses()
    finally:
        routes.close()
    assert local is not None and socket.inet_aton("127.0.0.1") in local
    assert socket.inet_aton("198.51.100.80") not in local

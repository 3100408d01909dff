"""ignore_tunneled in IPv6 (the nat6 lab): an IPv6 client's datagram to the IPv6 VIP,
tunnelled in IPv6-in-IPv6 to the director, comes out of the userspace decapsulator's
dirtun0; at 0 director schedules it, at 1 the ip6tables hooks leave it to a local
listener (director-tunneled6), as test_netns_ignore_tunneled.py in IPv4."""

from __future__ import annotations

import pytest
from test_netns_ignore_tunneled import check

from director.lab.daemon import Daemon

LAB_KIND = "nat6"


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_an_ipv6_packet_decapsulated_here_is_scheduled_only_with_the_sysctl_0(
    daemon: Daemon, on: bool
) -> None:
    check(daemon, on)

"""The userspace GUE and GRE decapsulation (director.realserver.gue) of what the
director's VS/TUN transmitter sends, and what it refuses; the kernel's GUE packet of
remote checksum offload (tests/core/test_golden_tun_types.py, from kernel 6.1's
ipvs_gue_encap) completed as __gue_remcsum has the stack complete it."""

from __future__ import annotations

import socket
import struct

import pytest

from director.core.checksum import internet_checksum
from director.core.xmit.tun import encapsulate
from director.realserver import plan
from director.realserver.gue import decapsulate_gre, decapsulate_gre6, decapsulate_gue
from director.realserver.ipip import Inner, Refusal, vip_set
from tests.core.packets import CLIENT, SYN, VIP, tcp
from tests.core.test_golden_tun_types import GUE_REMCSUM_PARTIAL

VIPS = vip_set([VIP])
SRC, DST = socket.inet_aton("198.18.0.1"), socket.inet_aton("198.19.0.2")


def _inner() -> bytearray:
    return bytearray(tcp(CLIENT, VIP, 40000, 80, SYN, b"hello"))


@pytest.mark.parametrize("flags", ["nocsum", "csum", "remcsum"])
def test_gue_from_the_director_comes_out_whole(flags: str) -> None:
    inner = _inner()
    packet = encapsulate(inner, SRC, DST, True, "gue", 6080, flags)
    got = decapsulate_gue(memoryview(packet)[28:], VIPS)
    assert isinstance(got, Inner) and bytes(got.packet) == bytes(inner)


@pytest.mark.parametrize("flags", ["nocsum", "csum"])
def test_gre_from_the_director_comes_out_whole(flags: str) -> None:
    inner = _inner()
    packet = encapsulate(inner, SRC, DST, True, "gre", 0, flags)
    got = decapsulate_gre(packet, VIPS)
    assert isinstance(got, Inner) and bytes(got.packet) == bytes(inner)
    src6 = socket.inet_pton(socket.AF_INET6, "2001:db8:2::1")
    dst6 = socket.inet_pton(socket.AF_INET6, "2001:db8:3::2")
    six = encapsulate(inner, src6, dst6, True, "gre", 0, flags)
    got = decapsulate_gre6(memoryview(six)[40:], 0, VIPS)
    assert isinstance(got, Inner) and bytes(got.packet) == bytes(inner)


def test_remote_checksum_offload_is_completed() -> None:
    """The kernel's --tun-remcsum packet: the client's TCP checksum, its seed on the
    wire, comes out complete (the TCP segment sums to zero over its pseudo-header)."""
    got = decapsulate_gue(GUE_REMCSUM_PARTIAL[28:], vip_set(["203.0.113.7"]))
    assert isinstance(got, Inner)
    inner = bytes(got.packet)
    pseudo = inner[12:20] + struct.pack("!xBH", 6, len(inner) - 20)
    assert internet_checksum(pseudo + inner[20:]) == 0
    assert inner[:16] == GUE_REMCSUM_PARTIAL[40:56]


def test_what_is_refused() -> None:
    inner = _inner()
    gue = bytearray(encapsulate(inner, SRC, DST, True, "gue", 6080, "nocsum")[28:])
    assert decapsulate_gue(gue[:3], VIPS) is Refusal.SHORT
    for at, value in ((0, 0x40), (0, 0x20), (1, 17), (3, 0x02)):  # version, C, proto, flag
        bad = bytearray(gue)
        bad[at] = value
        assert decapsulate_gue(bad, VIPS) is Refusal.NOT_IPIP, (at, value)
    assert decapsulate_gue(gue, vip_set(["203.0.113.99"])) is Refusal.NOT_A_VIP
    gre = bytearray(encapsulate(inner, SRC, DST, True, "gre", 0, "csum"))
    gre[30] ^= 0xFF  # the GRE checksum no longer sums
    assert decapsulate_gre(gre, VIPS) is Refusal.NOT_IPIP
    keyed = bytearray(encapsulate(inner, SRC, DST, True, "gre", 0, "nocsum"))
    keyed[20] = 0x20  # the K bit: no key is sent by IPVS
    assert decapsulate_gre(keyed, VIPS) is Refusal.NOT_IPIP


def test_realserver_up_checks_the_tunnel_type() -> None:
    host = plan.Host(links={}, addrs=frozenset(), sysctls={}, modules=frozenset({"ipip"}))
    gue = plan.Request("tun", ("203.0.113.5",), tun_type="gue", tun_port=6080)
    state, actions = plan.plan_up(host, gue, None)
    assert state.mode == "tun-userspace"  # no fou here, even with ipip loaded
    assert plan.StartDecap("dirtun0", ("203.0.113.5",), "gue", 6080) in actions
    for bad in (
        plan.Request("tun", ("203.0.113.5",), tun_type="gue"),
        plan.Request("tun", ("203.0.113.5",), tun_type="gre", tun_port=1),
        plan.Request("tun", ("203.0.113.5",), tun_type="vxlan"),
        plan.Request("dr", ("203.0.113.5",), tun_type="gre"),
        plan.Request("tun", ("203.0.113.5",), decap="kernel", tun_type="gre"),
    ):
        with pytest.raises(plan.PlanError):
            plan.plan_up(host, bad, None)

"""The conntrack timeout policy messages of director/shell/cttimeout.py, against netlink
bytes built here by hand from the kernel's layout, and the policies ipvsadm --set's
figures make.

From include/uapi/linux/netfilter/nfnetlink.h: NFNL_SUBSYS_CTNETLINK_TIMEOUT 8; from
include/uapi/linux/netfilter/nfnetlink_cttimeout.h: enum ctnl_timeout_msg_types
IPCTNL_MSG_TIMEOUT_NEW 0, _GET 1, _DELETE 2 (types 0x800, 0x801, 0x802); enum
ctattr_timeout CTA_TIMEOUT_NAME 1, _L3PROTO 2, _L4PROTO 3, _DATA 4, _USE 5; enum
ctattr_timeout_tcp SYN_SENT 1, SYN_RECV 2, ESTABLISHED 3, FIN_WAIT 4, CLOSE_WAIT 5,
LAST_ACK 6, TIME_WAIT 7, CLOSE 8, SYN_SENT2 9, RETRANS 10, UNACK 11; enum
ctattr_timeout_udp UNREPLIED 1, REPLIED 2; CTNL_TIMEOUT_NAME_MAX 32.  The attribute
types as net/netfilter/nfnetlink_cttimeout.c cttimeout_nla_policy reads them: the name
NLA_NUL_STRING, L3PROTO a be16 (ntohs(nla_get_be16(...))), L4PROTO NLA_U8, DATA
NLA_NESTED of be32 seconds (tcp_timeout_nlattr_to_obj: ntohl(nla_get_be32(...)) * HZ).
cttimeout_new_timeout updates a policy of the same name only with NLM_F_REPLACE
(0x100), else EBUSY; NLM_F_REQUEST 0x1, NLM_F_ACK 0x4, NLM_F_CREATE 0x400,
NLM_F_DUMP 0x300 (linux/netlink.h).  struct nfgenmsg: family (AF_UNSPEC), version
(NFNETLINK_V0), res_id.
"""

from __future__ import annotations

import struct

import pytest

from director.model.config import Timeouts
from director.shell.cttimeout import (
    MAX_SECONDS,
    Policy,
    delete_request,
    get_request,
    parse_policy,
    policies,
    set_request,
)

AF_INET, AF_UNSPEC = 2, 0
TCP, UDP = 6, 17
NESTED = 0x8000


def nla(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def message(msg_type: int, flags: int, seq: int, attrs: bytes) -> bytes:
    body = bytes([AF_UNSPEC, 0, 0, 0]) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def test_the_tcp_policy_of_set_timeout_30_20_10() -> None:
    """ESTABLISHED 30 s and FIN_WAIT 20 s; every other state left out (the kernel
    fills them in from the namespace's defaults)."""
    tcp, _ = policies(Timeouts(tcp=30, tcpfin=20, udp=10))
    expected = message(
        0x800,
        0x1 | 0x4 | 0x400 | 0x100,
        7,
        nla(1, b"director-tcp\0")
        + nla(2, b"\x00\x02")  # AF_INET, big endian
        + nla(3, bytes([TCP]))
        + nla(4 | NESTED, nla(3, struct.pack("!I", 30)) + nla(4, struct.pack("!I", 20))),
    )
    assert set_request(tcp, 7) == expected
    # the layout, spelled out: 16 + 4, then the name's 4 + 13 bytes padded to 20, ...
    assert len(expected) == 20 + 20 + 8 + 8 + 4 + 8 + 8


def test_the_udp_policy_gives_both_of_conntracks_states_the_udp_figure() -> None:
    """IPVS has one UDP state (ip_vs_proto_udp.c IP_VS_UDP_S_NORMAL); conntrack's
    udp_packet keeps a flow on UNREPLIED until it was answered and 2 s old, then
    REPLIED: both take ipvsadm --set's udp."""
    _, udp = policies(Timeouts(tcp=30, tcpfin=20, udp=10))
    expected = message(
        0x800,
        0x505,
        1,
        nla(1, b"director-udp\0")
        + nla(2, b"\x00\x02")
        + nla(3, bytes([UDP]))
        + nla(4 | NESTED, nla(1, struct.pack("!I", 10)) + nla(2, struct.pack("!I", 10))),
    )
    assert set_request(udp, 1) == expected


def test_delete_and_get_by_name_and_the_dump() -> None:
    assert delete_request("director-tcp", 3) == message(0x802, 0x5, 3, nla(1, b"director-tcp\0"))
    assert get_request("director-udp", 4) == message(0x801, 0x5, 4, nla(1, b"director-udp\0"))
    assert get_request(None, 5) == message(0x801, 0x301, 5, b"")


def test_a_name_longer_than_the_kernel_keeps_is_refused() -> None:
    """CTNL_TIMEOUT_NAME_MAX 32 with its NUL: 31 characters at most."""
    assert get_request("x" * 31, 1)
    with pytest.raises(ValueError):
        get_request("x" * 32, 1)


def test_a_policy_as_ctnl_timeout_fill_info_sends_it() -> None:
    """NAME, L3PROTO, L4PROTO, USE, then DATA with every state (tcp_timeout_obj_to_nlattr
    puts all eleven), nested with NLA_F_NESTED by nla_nest_start."""
    seconds = [120, 60, 30, 20, 60, 30, 120, 10, 120, 300, 300]
    data = b"".join(nla(state, struct.pack("!I", s)) for state, s in enumerate(seconds, 1))
    answer = message(
        0x800,
        0x2,  # NLM_F_MULTI, in a dump
        9,
        nla(1, b"director-tcp\0")
        + nla(2, b"\x00\x02")
        + nla(3, bytes([TCP]))
        + nla(5, struct.pack("!I", 2))
        + nla(4 | NESTED, data),
    )
    policy = parse_policy(answer, 0, len(answer))
    assert policy == Policy("director-tcp", AF_INET, TCP, dict(enumerate(seconds, 1)), use=2)


def test_a_policy_without_its_data_is_malformed() -> None:
    answer = message(0x800, 0, 1, nla(1, b"x\0") + nla(2, b"\x00\x02") + nla(3, bytes([TCP])))
    with pytest.raises(ValueError):
        parse_policy(answer, 0, len(answer))


def test_the_figures_each_state_takes() -> None:
    """tcp -> ESTABLISHED (3), tcpfin -> FIN_WAIT (4), udp -> UNREPLIED (1) and REPLIED
    (2); nothing else (CLOSE_WAIT, LAST_ACK, TIME_WAIT... stay conntrack's)."""
    tcp, udp = policies(Timeouts(tcp=900, tcpfin=120, udp=300))
    assert (tcp.name, tcp.l3proto, tcp.l4proto, dict(tcp.timeouts)) == (
        "director-tcp", AF_INET, TCP, {3: 900, 4: 120})  # fmt: skip
    assert (udp.name, udp.l3proto, udp.l4proto, dict(udp.timeouts)) == (
        "director-udp", AF_INET, UDP, {1: 300, 2: 300})  # fmt: skip


def test_a_figure_past_what_conntrack_can_hold_is_its_bound() -> None:
    """ipvsadm takes up to 31 days (2678400 s); conntrack holds an expiry of at most
    INT_MAX jiffies ahead (nf_ct_is_expired reads (s32)(timeout - now)), which at
    HZ=1000 is 2147483647 // 1000 = 2147483 s; IPVS itself refuses more than
    INT_MAX / HZ (ip_vs_ctl.c ip_vs_set_timeout)."""
    assert MAX_SECONDS == 2147483
    tcp, udp = policies(Timeouts(tcp=2678400, tcpfin=2147483, udp=2147484))
    assert dict(tcp.timeouts) == {3: 2147483, 4: 2147483}
    assert dict(udp.timeouts) == {1: 2147483, 2: 2147483}

"""ipvsadm -L layouts, against expected text written out column for column."""

from __future__ import annotations

import time

from dpkt.tcp import TH_ACK, TH_SYN

from director.core.xmit import MARK, SEND
from director.ctl.listing import (
    ListFormat,
    find_service,
    format_conns,
    format_list,
    format_timeout,
    largenum,
)
from director.ctl.snapshot import DestDict, ServiceDict, Snapshot
from tests.conftest import MakeTarget
from tests.core.packets import CLIENT, VIP, tcp, udp

RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m -w 1
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 2 -x 100 -y 50
-A -t 203.0.113.5:21 -s wlc -p 360 -M 255.255.255.0
-a -t 203.0.113.5:21 -r 198.18.0.3:21 -g -w 1
-A -f 7 -s rr -p 60
-A -u 203.0.113.5:53 -s wrr -o
"""


def dest_of(svc: ServiceDict, addr: str, port: int) -> DestDict:
    (dest,) = (d for d in svc["dests"] if (d["addr"], d["port"]) == (addr, port))
    return dest


def snapshot(make_target: MakeTarget) -> Snapshot:
    """The daemon's own snapshot of RULES, with figures put in the columns under test."""
    snap = make_target(RULES).snapshot(conns=False)
    web = find_service(snap, ("tcp", "203.0.113.5", 80))
    assert web is not None
    busy = dest_of(web, "198.18.0.2", 80)
    busy["activeconns"] = 3
    busy["inactconns"] = 12
    busy["persistconns"] = 1
    web["stats"].update(conns=15, inpkts=123456789, outpkts=1500000000, inbytes=98765,
                        outbytes=123456789012345)  # fmt: skip
    return snap


def test_list_numeric(make_target: MakeTarget) -> None:
    assert format_list(snapshot(make_target)) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  203.0.113.5:21 wlc persistent 360 mask 255.255.255.0\n"
        "  -> 198.18.0.3:21                Route   1      0          0         \n"
        "TCP  203.0.113.5:80 rr\n"
        "  -> 198.18.0.2:80                Masq    2      3          12        \n"
        "  -> 198.18.0.3:8000              Masq    1      0          0         \n"
        "UDP  203.0.113.5:53 wrr ops\n"
        "FWM  7 rr persistent 60\n"
    )


def test_list_one_service_has_no_version_header(make_target: MakeTarget) -> None:
    snap = snapshot(make_target)
    svc = find_service(snap, ("udp", "203.0.113.5", 53))
    assert svc is not None
    assert format_list(snap, ListFormat(), svc) == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "UDP  203.0.113.5:53 wrr ops\n"
    )
    assert find_service(snap, ("tcp", "203.0.113.5", 53)) is None


def test_list_stats(make_target: MakeTarget) -> None:
    snap = snapshot(make_target)
    svc = find_service(snap, ("tcp", "203.0.113.5", 80))
    assert format_list(snap, ListFormat(stats=True), svc) == (
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  203.0.113.5:80                     15  123456K    1500M    98765     123T\n"
        "  -> 198.18.0.2:80                       0        0        0        0        0\n"
        "  -> 198.18.0.3:8000                     0        0        0        0        0\n"
    )


def test_list_stats_exact(make_target: MakeTarget) -> None:
    snap = snapshot(make_target)
    svc = find_service(snap, ("tcp", "203.0.113.5", 80))
    lines = format_list(snap, ListFormat(stats=True, exact=True), svc).splitlines()
    assert lines[2] == (
        "TCP  203.0.113.5:80                     15 123456789 1500000000    98765 123456789012345"
    )


def test_list_rate(make_target: MakeTarget) -> None:
    snap = snapshot(make_target)
    svc = find_service(snap, ("udp", "203.0.113.5", 53))
    assert format_list(snap, ListFormat(rate=True), svc) == (
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
        "  -> RemoteAddress:Port\n"
        "UDP  203.0.113.5:53                      0        0        0        0        0\n"
    )


def test_list_thresholds_and_persistent_conn(make_target: MakeTarget) -> None:
    snap = snapshot(make_target)
    svc = find_service(snap, ("tcp", "203.0.113.5", 80))
    assert format_list(snap, ListFormat(thresholds=True), svc) == (
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n"
        "  -> RemoteAddress:Port\n"
        "TCP  203.0.113.5:80 rr\n"
        "  -> 198.18.0.2:80                100        50         3          12        \n"
        "  -> 198.18.0.3:8000              0          0          0          0         \n"
    )
    assert format_list(snap, ListFormat(persistent_conn=True), svc) == (
        "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn \n"
        "  -> RemoteAddress:Port\n"
        "TCP  203.0.113.5:80 rr\n"
        "  -> 198.18.0.2:80                2         1           3          12        \n"
        "  -> 198.18.0.3:8000              1         0           0          0         \n"
    )


def test_connections(make_target: MakeTarget) -> None:
    """ipvsadm -Lc of two real NAT connections (each request sent on, rewritten): a
    TCP one the client's SYN and ACK made ESTABLISHED (900 s) and a UDP one (300 s),
    0.3 s after their last packet; the expiry shows as mm:ss, cut down."""
    target = make_target(
        "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
        "-A -u 203.0.113.5:53 -s rr\n-a -u 203.0.113.5:53 -r 198.18.0.3:53 -m\n"
    )
    then = time.monotonic() - 0.3
    for buf in (
        tcp(CLIENT, VIP, 40000, 80, flags=TH_SYN),
        tcp(CLIENT, VIP, 40000, 80, flags=TH_ACK),
        udp("203.0.113.11", VIP, 5353, 53, b"q"),
    ):
        assert target.director.hook_in(buf, then)[0] == SEND
    conns = format_conns(target.snapshot(conns=True)).splitlines()
    assert conns[:2] == [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
    ]
    assert sorted(conns[2:]) == [
        "TCP 14:59  ESTABLISHED 203.0.113.10:40000 203.0.113.5:80     198.18.0.2:80",
        "UDP 04:59  UDP         203.0.113.11:5353  203.0.113.5:53     198.18.0.3:53",
    ]


def test_a_fast_path_connection_is_marked_kernel(make_target: MakeTarget) -> None:
    """On the kernel fast path the entry is the director's, its packets conntrack's:
    `list -c` says so after the destination (ipvsadm has no such column), --json too."""
    target = make_target("-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n")
    for svc in target.director.services:
        for dest in svc.dests:
            dest.fast_mark = 0x4C000001
    assert (
        target.director.hook_in(tcp(CLIENT, VIP, 40000, 80, flags=TH_SYN), time.monotonic())[0]
        == MARK
    )
    snap = target.snapshot(conns=True)
    assert [c.get("fast") for c in snap["conns"]] == [True]
    row = format_conns(snap).splitlines()[2]
    assert row.endswith("198.18.0.2:80 [kernel]"), row


def test_timeout(make_target: MakeTarget) -> None:
    assert format_timeout(snapshot(make_target)) == "Timeout (tcp tcpfin udp): 900 120 300\n"


def test_largenum_units() -> None:
    assert largenum(99_999_999) == " 99999999"
    assert largenum(100_000_000) == "  100000K"
    assert largenum(1_000_000_000) == "     1000M"[-9:]
    assert largenum(100_000_000_000_000) == "      100T"[-9:]
    assert largenum(5, exact=True) == "        5"
    assert largenum(1234567890, exact=True) == " 1234567890"

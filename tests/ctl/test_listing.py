"""ipvsadm -L layouts, against expected text written out column for column."""

from __future__ import annotations

from director.ctl.ipvsadm import load_rules
from director.ctl.listing import (
    ListFormat,
    find_service,
    format_conns,
    format_list,
    format_timeout,
    largenum,
)
from director.ctl.snapshot import Snapshot
from tests.ctl.fake import FakeTarget

RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m -w 1
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 2 -x 100 -y 50
-A -t 203.0.113.5:21 -s wlc -p 360 -M 255.255.255.0
-a -t 203.0.113.5:21 -r 198.18.0.3:21 -g -w 1
-A -f 7 -s rr -p 60
-A -u 203.0.113.5:53 -s wrr -o
"""


def snapshot() -> Snapshot:
    target = FakeTarget(config=load_rules(RULES))
    snap = target.snapshot(conns=True)
    web = snap["services"][0]
    web["dests"][1]["activeconns"] = 3
    web["dests"][1]["inactconns"] = 12
    web["dests"][1]["persistconns"] = 1
    web["stats"] = {
        "conns": 15,
        "inpkts": 123456789,
        "outpkts": 1500000000,
        "inbytes": 98765,
        "outbytes": 123456789012345,
    }
    snap["conns"] = [
        {
            "protocol": "TCP",
            "state": "ESTABLISHED",
            "expires": 899.7,
            "caddr": "203.0.113.10",
            "cport": 40000,
            "vaddr": "203.0.113.5",
            "vport": 80,
            "daddr": "198.18.0.2",
            "dport": 80,
        },
        {
            "protocol": "UDP",
            "state": "UDP",
            "expires": 5,
            "caddr": "203.0.113.11",
            "cport": 5353,
            "vaddr": "203.0.113.5",
            "vport": 53,
            "daddr": "198.18.0.3",
            "dport": 53,
        },
    ]
    return snap


def test_list_numeric() -> None:
    assert format_list(snapshot()) == (
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


def test_list_one_service_has_no_version_header() -> None:
    snap = snapshot()
    svc = find_service(snap, ("udp", "203.0.113.5", 53))
    assert svc is not None
    assert format_list(snap, ListFormat(), svc) == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "UDP  203.0.113.5:53 wrr ops\n"
    )
    assert find_service(snap, ("tcp", "203.0.113.5", 53)) is None


def test_list_stats() -> None:
    snap = snapshot()
    svc = find_service(snap, ("tcp", "203.0.113.5", 80))
    assert format_list(snap, ListFormat(stats=True), svc) == (
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  203.0.113.5:80                     15  123456K    1500M    98765     123T\n"
        "  -> 198.18.0.2:80                       0        0        0        0        0\n"
        "  -> 198.18.0.3:8000                     0        0        0        0        0\n"
    )


def test_list_stats_exact() -> None:
    snap = snapshot()
    svc = find_service(snap, ("tcp", "203.0.113.5", 80))
    lines = format_list(snap, ListFormat(stats=True, exact=True), svc).splitlines()
    assert lines[2] == (
        "TCP  203.0.113.5:80                     15 123456789 1500000000    98765 123456789012345"
    )


def test_list_rate() -> None:
    snap = snapshot()
    svc = find_service(snap, ("udp", "203.0.113.5", 53))
    assert format_list(snap, ListFormat(rate=True), svc) == (
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
        "  -> RemoteAddress:Port\n"
        "UDP  203.0.113.5:53                      0        0        0        0        0\n"
    )


def test_list_thresholds_and_persistent_conn() -> None:
    snap = snapshot()
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


def test_connections() -> None:
    assert format_conns(snapshot()) == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:59  ESTABLISHED 203.0.113.10:40000 203.0.113.5:80     198.18.0.2:80\n"
        "UDP 00:05  UDP         203.0.113.11:5353  203.0.113.5:53     198.18.0.3:53\n"
    )


def test_timeout() -> None:
    assert format_timeout(snapshot()) == "Timeout (tcp tcpfin udp): 900 120 300\n"


def test_ipv6_names_are_bracketed_and_not_cut() -> None:
    target = FakeTarget(
        config=load_rules(
            "-A -t [2001:db8:1::100]:443 -s rr\n"
            "-a -t [2001:db8:1::100]:443 -r [2001:db8:2::1234:5678:9abc]:8443 -m\n"
        )
    )
    lines = format_list(target.snapshot(conns=False)).splitlines()
    assert lines[3] == "TCP  [2001:db8:1::100]:443 rr"
    assert lines[4].startswith("  -> [2001:db8:2::1234:5678:9abc]:8443 Masq    1      ")


def test_largenum_units() -> None:
    assert largenum(99_999_999) == " 99999999"
    assert largenum(100_000_000) == "  100000K"
    assert largenum(1_000_000_000) == "     1000M"[-9:]
    assert largenum(100_000_000_000_000) == "      100T"[-9:]
    assert largenum(5, exact=True) == "        5"
    assert largenum(1234567890, exact=True) == " 1234567890"

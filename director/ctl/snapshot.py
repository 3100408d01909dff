"""The shape of what ``dirctl list --json`` prints and the daemon answers to ``list``.

One snapshot carries everything the ipvsadm-style listings need, so the text layouts
(``director.ctl.listing``) are pure functions of it.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class StatsDict(TypedDict):
    """Counters since the last ``zero`` and the estimator's rates (per second)."""

    conns: int
    inpkts: int
    outpkts: int
    inbytes: int
    outbytes: int
    cps: int
    inpps: int
    outpps: int
    inbps: int
    outbps: int


class DestDict(TypedDict):
    addr: str
    port: int
    method: str  # "masq", "droute", "tunnel", "local"
    weight: int
    u_threshold: int
    l_threshold: int
    activeconns: int
    inactconns: int
    persistconns: int
    stats: StatsDict
    # Health (director.health): "unknown", "up", "down" for checked real servers,
    # "sorry" for a sorry server in service; absent when not checked.
    state: NotRequired[str]
    # Why the director cannot deliver to it now ("no route", ...), for a DR or TUN
    # real server the route lookup found no usable way to; absent when it can.
    unreachable: NotRequired[str]
    # VS/TUN's encapsulation, for a tunnel only: "ipip", "gue" or "gre"; GUE's UDP
    # port (0 otherwise); "nocsum", "csum" or "remcsum".
    tun_type: NotRequired[str]
    tun_port: NotRequired[int]
    tun_flags: NotRequired[str]


class ServiceDict(TypedDict):
    protocol: str  # "TCP", "UDP", "FWM"
    addr: str  # "" for IPv4 fwmark services, "::" for IPv6 ones (-f MARK -6)
    port: int
    fwmark: int
    scheduler: str
    persistent: int | None
    netmask: str
    sched_flags: list[str]
    ops: bool
    stats: StatsDict
    dests: list[DestDict]


class ConnDict(TypedDict):
    protocol: str  # "TCP", "UDP"
    state: str  # "ESTABLISHED", "SYN_RECV", ..., "UDP"
    expires: float  # seconds left
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    # On the kernel fast path (conntrack carries its packets); absent when not.
    fast: NotRequired[bool]


class TimeoutsDict(TypedDict):
    tcp: int
    tcpfin: int
    udp: int


class Snapshot(TypedDict):
    version: str  # "1.2.1", the IPVS version ipvsadm prints
    conn_tab_size: int
    services: list[ServiceDict]
    conns: list[ConnDict]  # empty unless asked for (list -c): one page of the table
    # Where the next page of conns starts (the offset to ask for), None after the last.
    conns_next: NotRequired[int | None]
    timeouts: TimeoutsDict
    totals: StatsDict
    conn_entries: int  # entries in the connection table

"""Live virtual services and real servers, mirroring ``struct ip_vs_service`` and
``struct ip_vs_dest`` (net/netfilter/ipvs/ip_vs_ctl.c).

The table is reconciled from a ``Config`` (``ServiceTable.apply``): services and real
servers that stay keep their identity, counters and scheduler state, as
``ipvsadm -E``/``-e`` do in the kernel.  Addresses are packed bytes (4 for IPv4, 16 for
IPv6) so the per-packet lookup hashes what the packet already holds.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from director.core.route import Route
from director.core.stats import Stats
from director.model.config import Config, ConfigError, DestConf, ServiceConf

if TYPE_CHECKING:
    from director.core.sched import Scheduler

IPPROTO_TCP = 6
IPPROTO_UDP = 17
MIN_PMTU = 552  # net.ipv4.route.min_pmtu (ip_rt_min_pmtu)
MTU_EXPIRES = 600.0  # net.ipv4.route.mtu_expires (ip_rt_mtu_expires), seconds
PROTO_NUMBERS: dict[str, int] = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
PROTO_NAMES: dict[int, str] = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}

# Service key: (protocol number, packed VIP, port), or (0, b"", fwmark) for IPv4 fwmark
# services and (0, 16 zero bytes, fwmark) for IPv6 ones.
ServiceKey = tuple[int, bytes, int]


def pack_addr(text: str) -> bytes:
    """Text address to the packed form packets carry; ConfigError if it is not one."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, text)
        except OSError:
            continue
    raise ConfigError(f"invalid address {text!r}")


def pack_netmask(text: str) -> bytes:
    """A persistence netmask (-M) to the packed mask templates apply: a dotted IPv4
    mask, or an IPv6 prefix length (ipvsadm's ``-M 64``), whose mask is the one
    ip_vs_sched_persist applies with ipv6_addr_prefix: the first ``plen`` bits set."""
    if text.isdigit():
        plen = int(text)
        if not 0 <= plen <= 128:
            raise ConfigError(f"invalid prefix length {text!r}")
        return ((1 << 128) - (1 << (128 - plen))).to_bytes(16, "big")
    return pack_addr(text)


def unpack_addr(packed: bytes) -> str:
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed)


@dataclass(eq=False, slots=True)
class Dest:
    """A real server (``struct ip_vs_dest``).

    ``activeconns`` counts TCP connections in an active state (SYN_SENT, SYN_RECV,
    SYNACK, ESTABLISHED: tcp_state_active_table), ``inactconns`` every other
    connection, ``persistconns`` the persistence templates that point here, exactly as
    ipvsadm's ActiveConn / InActConn columns show them.
    """

    addr: bytes
    port: int
    method: str
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    overloaded: bool = False  # IP_VS_DEST_F_OVERLOAD
    available: bool = True  # IP_VS_DEST_F_AVAILABLE: false once deleted from its service
    stats: Stats = field(default_factory=Stats)
    route: Route | None = None  # filled in by the shell from netlink (DR, TUN, local node)
    # A path MTU an ICMP error taught (the route's nexthop exception in the kernel), and
    # when it is forgotten: kept apart from ``route`` so a fresh lookup keeps it.
    pmtu: int = 0
    pmtu_expires: float = 0.0
    # The service it was added to (dest->protocol, vaddr, vport, vfwmark): the trash
    # gives a removed server back to that service only (ip_vs_trash_get_dest).
    service: ServiceKey | None = None
    # Its firewall mark on the kernel fast path (director.core.xmit.kernel), set by the
    # shell; 0: its packets pass the worker (every-packet path).
    fast_mark: int = 0
    # The sysctl pmtu_disc, which the director copies here (Director._tune) for the
    # tunnel transmitter, which reads it with every packet as ip_vs_tunnel_xmit does.
    pmtu_disc: bool = True
    # VS/TUN's encapsulation (dest->tun_type, tun_port, tun_flags): "ipip", "gue" or
    # "gre"; GUE's UDP destination port; "nocsum", "csum" or "remcsum".
    tun_type: str = "ipip"
    tun_port: int = 0
    tun_flags: str = "nocsum"
    # Address and port as one integer, which the connection entries to this port share
    # (Conn.dkey) rather than each holding its own.
    dkey: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        self.dkey = int.from_bytes(self.addr, "big") << 16 | self.port

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.addr, self.port)

    @property
    def conns(self) -> int:
        """All connections bound here (the figure the thresholds compare)."""
        return self.activeconns + self.inactconns

    def path_mtu(self, route: Route) -> int:
        """dst_mtu of the route toward the server: the route's MTU, or the smaller path
        MTU learned from ICMP while it lasts."""
        return min(route.mtu, self.pmtu) if self.pmtu else route.mtu

    def learn_pmtu(self, mtu: int, route: Route, now: float) -> None:
        """__ip_rt_update_pmtu (net/ipv4/route.c): a larger figure than the path's is
        ignored, one below min_pmtu (552) is raised to it, and what is learned lasts
        mtu_expires (600 s)."""
        current = self.path_mtu(route)
        if current < mtu:
            return
        self.pmtu = min(current, MIN_PMTU) if mtu < MIN_PMTU else mtu
        self.pmtu_expires = now + MTU_EXPIRES

    def update(self, conf: DestConf) -> None:
        """ipvsadm -e: change weight, method, thresholds and tunnel in place
        (__ip_vs_update_dest)."""
        self.method = conf.method
        self.weight = conf.weight
        self.u_threshold = conf.u_threshold
        self.l_threshold = conf.l_threshold
        self.tun_type = conf.tun_type
        self.tun_port = conf.tun_port
        self.tun_flags = conf.tun_flags
        if not self.u_threshold or self.conns < self.u_threshold:
            self.overloaded = False

    def describe(self) -> str:
        return f"{unpack_addr(self.addr)}:{self.port}"


@dataclass(eq=False, slots=True)
class Service:
    """A virtual service (``struct ip_vs_service``).

    ``dests`` is kept newest first, because the kernel adds real servers at the head of
    ``svc->destinations`` (list_add_rcu) and every scheduler walks that list from the
    head: the order decides ties.
    """

    key: ServiceKey
    conf: ServiceConf
    scheduler: Scheduler
    dests: list[Dest] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    # Persistence granularity (-M), packed: 4 bytes for an IPv4 service, 16 for IPv6.
    netmask: bytes = b"\xff\xff\xff\xff"
    # VIP and port as one integer, which its connection entries share (Conn.vkey); none
    # for a firewall-mark service.
    vkey: int = field(init=False, default=-1, repr=False)
    # The real server of its cache_bypass entries (director.core.xmit.bypass): none,
    # 0.0.0.0:0 (or :: for IPv6), in no list of real servers.
    bypass_dest: Dest = field(init=False, repr=False)

    def __post_init__(self) -> None:
        proto, addr, port = self.key
        if proto:
            self.vkey = int.from_bytes(addr, "big") << 16 | port
        zero = bytes(16 if len(addr) == 16 else 4)
        self.bypass_dest = Dest(addr=zero, port=0, method="bypass", service=self.key)

    @property
    def protocol(self) -> int:
        return self.key[0]

    def find_dest(self, addr: bytes, port: int) -> Dest | None:
        for dest in self.dests:
            if dest.addr == addr and dest.port == port:
                return dest
        return None

    def describe(self) -> str:
        proto, addr, port = self.key
        if not proto:
            return f"FWM {port}"
        return f"{PROTO_NAMES[proto]} {unpack_addr(addr)}:{port}"


def service_key(conf: ServiceConf) -> ServiceKey:
    if conf.protocol == "fwm":  # (af, fwmark): an IPv6 one has the zero address "::"
        return (0, pack_addr(conf.addr) if conf.addr else b"", conf.fwmark)
    return (PROTO_NUMBERS[conf.protocol], pack_addr(conf.addr), conf.port)


class ServiceTable:
    """All virtual services, looked up the way ``ip_vs_service_find`` does."""

    def __init__(self) -> None:
        self.services: dict[ServiceKey, Service] = {}
        # Firewall-mark services by mark, one table per family: ip_vs_svc_fwm_find
        # matches the packet's family, so an IPv6 packet never meets an IPv4 service.
        self.fwmarks: dict[int, Service] = {}
        self.fwmarks6: dict[int, Service] = {}
        # Real servers removed from their service but still referenced by connections
        # (the kernel's dest_trash): kept so counters stay right until they drain.
        self.trash: list[Dest] = []
        # NAT real servers by (protocol, address, port), protocol 0 for a firewall-mark
        # service's (any protocol): the kernel's rs_table, which holds only MASQ ones.
        self.real_services: dict[tuple[int, bytes, int], Dest] = {}

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services.values())

    def __len__(self) -> int:
        return len(self.services)

    def lookup(self, protocol: int, vaddr: bytes, vport: int, mark: int = 0) -> Service | None:
        """Firewall-mark services of the packet's family (by the VIP's length) first,
        then (protocol, VIP, port), then port-zero."""
        if mark:
            svc = (self.fwmarks6 if len(vaddr) == 16 else self.fwmarks).get(mark)
            if svc is not None:
                return svc
        svc = self.services.get((protocol, vaddr, vport))
        if svc is None and vport:
            svc = self.services.get((protocol, vaddr, 0))
        return svc

    def apply(self, config: Config) -> None:
        """Make the live table match ``config``, keeping what stays (ip_vs_ctl semantics).

        The caller has validated ``config``: this only fails on a bug.
        """
        from director.core.sched import create_scheduler

        wanted = {service_key(conf): conf for conf in config.services}
        for key in list(self.services):
            if key not in wanted:
                self._remove_service(self.services.pop(key))
        for key, conf in wanted.items():
            svc = self.services.get(key)
            if svc is None:
                svc = Service(key=key, conf=conf, scheduler=create_scheduler(conf.scheduler))
                self.services[key] = svc
            elif svc.conf.scheduler != conf.scheduler:
                svc.scheduler = create_scheduler(conf.scheduler)
            svc.conf = conf
            svc.netmask = pack_netmask(conf.netmask) if conf.netmask else svc.netmask
            self._reconcile_dests(svc, conf)
        self.fwmarks = {key[2]: svc for key, svc in self.services.items() if key[:2] == (0, b"")}
        self.fwmarks6 = {key[2]: svc for key, svc in self.services.items()
                         if not key[0] and len(key[1]) == 16}  # fmt: skip
        self.real_services = {
            (svc.protocol, dest.addr, dest.port): dest
            for svc in self.services.values()
            for dest in svc.dests
            if dest.method == "masq"
        }

    def real_service(self, protocol: int, addr: bytes, port: int) -> Dest | None:
        """ip_vs_has_real_service: the NAT real server at this address and port of a
        service of this protocol or of a firewall-mark service, if any."""
        found = self.real_services.get((protocol, addr, port))
        return found if found is not None else self.real_services.get((0, addr, port))

    def _reconcile_dests(self, svc: Service, conf: ServiceConf) -> None:
        wanted = {(pack_addr(d.addr), d.port): d for d in conf.dests}
        for dest in list(svc.dests):
            if dest.key not in wanted:
                svc.dests.remove(dest)
                self._retire(dest)
        # ServiceConf.dests is oldest first; the kernel list is newest first.
        for (addr, port), dconf in wanted.items():
            found = svc.find_dest(addr, port)
            if found is None:
                found = self._revive(svc.key, addr, port) or Dest(
                    addr=addr, port=port, method=dconf.method, service=svc.key
                )
                found.available = True
                svc.dests.insert(0, found)
            found.update(dconf)
        svc.scheduler.update(svc)

    def _remove_service(self, svc: Service) -> None:
        for dest in svc.dests:
            self._retire(dest)
        svc.dests.clear()
        svc.scheduler.update(svc)

    def _retire(self, dest: Dest) -> None:
        dest.available = False
        if dest.conns or dest.persistconns:
            self.trash.append(dest)

    def _revive(self, key: ServiceKey, addr: bytes, port: int) -> Dest | None:
        """ip_vs_trash_get_dest: a removed server comes back, with its counters and
        connections, only to the service it was removed from (same protocol, VIP and
        port, or same fwmark) and at the same address and port."""
        for dest in self.trash:
            if dest.service == key and dest.addr == addr and dest.port == port:
                self.trash.remove(dest)
                return dest
        return None

    def expire_pmtu(self, now: float) -> None:
        """Learned path MTUs last mtu_expires, as the kernel's route exceptions do."""
        for svc in self.services.values():
            for dest in svc.dests:
                if dest.pmtu and now >= dest.pmtu_expires:
                    dest.pmtu = 0

    def collect_trash(self) -> None:
        """Forget removed real servers that no connection uses any more."""
        self.trash = [d for d in self.trash if d.conns or d.persistconns]

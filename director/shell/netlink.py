"""Routes, addresses and neighbours over netlink (pyroute2): what DR and TUN need.

``Routes`` answers, for each real server, what the kernel's output route would
(``__ip_vs_get_out_rt``): interface, source address, MTU, whether there is a gateway
on the way, whether the address is the director's own.  It is asked again whenever
the configuration changes and whenever the kernel announces a route, address or link
change.  A real server with no route is taken all the same, as IPVS takes it
(ip_vs_new_dest asks only for a unicast or local address): its packets are dropped
(``no_route``) and it is shown unreachable until a route to it appears.

``Neighbours`` hands DR frames to the real server's MAC.  It keeps the kernel's
neighbour table in a dictionary, kept current from RTM_NEWNEIGH/RTM_DELNEIGH
announcements; for an address it does not know it asks the kernel to resolve it
(NTF_USE, as a kernel user of the entry would) and holds the frame until the answer
comes, so the first packet of a connection is not lost for want of an ARP entry.
Frames still unresolved after ``RESOLVE_TIMEOUT`` are dropped and counted.

Both families: an IPv6 real server's route is looked up the same way (its source the
address the kernel would choose, its MTU the route's or the device's), and its
neighbour comes from NDP as an IPv4 one's from ARP: the table holds both families'
entries (keyed by the packed address, 4 or 16 bytes), and NTF_USE on an IPv6 entry
makes the kernel send a neighbour solicitation (neigh_event_send, ndisc_solicit).
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from director.core.fragment import fragment
from director.core.route import Frame, Route
from director.core.service import Dest, pack_addr, unpack_addr
from director.core.tunneled import ENCAP_NONE, Link
from director.core.xmit.dr import ethernet_frame

log = logging.getLogger(__name__)

RTN_LOCAL = 2
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable stale delay probe noarp perm
NTF_USE = 0x01
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
RESOLVE_TIMEOUT = 3.0
PENDING_MAX = 64  # frames held per unresolved neighbour


class Routes:
    """Route lookups toward real servers."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def lookup(self, addr: str) -> Route | None:
        try:
            (answer, *_) = self.ipr.route("get", dst=addr)
        except Exception:  # no route at all: the caller reports it
            return None
        ifindex = int(answer.get_attr("RTA_OIF") or 0)
        source = answer.get_attr("RTA_PREFSRC") or addr
        mtu = self._mtu(answer, ifindex)
        return Route(
            ifindex=ifindex,
            source=pack_addr(source),
            mtu=mtu,
            onlink=answer.get_attr("RTA_GATEWAY") is None,
            local=answer["type"] == RTN_LOCAL,
        )

    def _mtu(self, answer: object, ifindex: int) -> int:
        metrics = answer.get_attr("RTA_METRICS")  # type: ignore[attr-defined]
        if metrics:
            mtu = metrics.get_attr("RTAX_MTU")
            if mtu:
                return int(mtu)
        try:
            (link, *_) = self.ipr.link("get", index=ifindex)
            return int(link.get_attr("IFLA_MTU") or 1500)
        except Exception:
            return 1500

    def annotate(self, dests: Iterable[Dest]) -> None:
        for dest in dests:
            dest.route = self.lookup(unpack_addr(dest.addr))

    def local_addresses(self) -> frozenset[bytes] | None:
        """The host's own addresses, of every family (cache_bypass sends on only what
        is addressed elsewhere): read again whenever netlink says an address, link or
        route changed."""
        found: set[bytes] = set()
        try:
            for msg in self.ipr.get_addr():
                for name in ("IFA_LOCAL", "IFA_ADDRESS"):
                    addr = msg.get_attr(name)
                    if addr:
                        found.add(pack_addr(addr))
        except Exception as err:  # netlink refused: none bypassed rather than a guess
            log.warning("cannot list the host's addresses: %s", err)
            return None
        return frozenset(found)

    def links(self) -> list[Link] | None:
        """Every device's name, kind and tunnel encapsulation (ignore_tunneled's
        devices, director.core.tunneled): read again whenever netlink says a link,
        address or route changed; None when netlink refuses."""
        try:
            return [link_of(msg) for msg in self.ipr.get_links()]
        except Exception as err:
            log.warning("cannot list the host's links: %s", err)
            return None


def link_of(msg: object) -> Link:
    """One RTM_NEWLINK message as a Link: IFLA_IFNAME, IFLA_LINKINFO's IFLA_INFO_KIND and
    the tunnel's encapsulation type (IFLA_IPIP_/SIT_/IP6TNL_/GRE_/IP6GRE_ENCAP_TYPE)."""
    name = str(msg.get_attr("IFLA_IFNAME") or "")  # type: ignore[attr-defined]
    info = msg.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    if info is None:
        return Link(name)
    kind = str(info.get_attr("IFLA_INFO_KIND") or "")
    data = info.get_attr("IFLA_INFO_DATA")
    encap = ENCAP_NONE
    for attr in getattr(data, "get", lambda _: None)("attrs") or ():
        if str(attr[0]).endswith("_ENCAP_TYPE"):
            encap = int(attr[1] or ENCAP_NONE)
    return Link(name, kind, encap)


@dataclass
class Neighbours:
    """Layer-2 delivery of DR frames with the kernel's neighbour table."""

    errors: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.ipr = IPRoute()
        self.marshal = MarshalRtnl()
        self.packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.monitor = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.monitor.bind((0, RTMGRP_NEIGH | RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
                           | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE))  # fmt: skip
        self.monitor.setblocking(False)
        self.macs: dict[tuple[int, bytes], bytes] = {}
        self.links: dict[int, tuple[str, bytes, int]] = {}  # index -> name, MAC, MTU
        self.pending: dict[tuple[int, bytes], list[tuple[float, bytes]]] = {}
        self.routes_changed = False
        for msg in self.ipr.neigh("dump"):
            self._neighbour(msg)
        for link in self.ipr.get_links():
            self._link(link)

    def fileno(self) -> int:
        return self.monitor.fileno()

    def close(self) -> None:
        self.ipr.close()
        self.packet.close()
        self.monitor.close()

    def send(self, frame: Frame, now: float) -> None:
        key = (frame.ifindex, frame.nexthop)
        mac = self.macs.get(key)
        if mac is not None:
            self._transmit(frame.ifindex, mac, frame.packet)
            return
        held = self.pending.get(key)
        if held is None:
            self.pending[key] = held = []
            self._resolve(frame)
        if len(held) < PENDING_MAX:
            held.append((now + RESOLVE_TIMEOUT, bytes(frame.packet)))
        else:
            self.errors["neighbour_queue_full"] += 1

    def expire(self, now: float) -> list[bytes]:
        """Drop frames whose neighbour did not resolve in time; return the next hops."""
        failed: list[bytes] = []
        for key, held in list(self.pending.items()):
            keep = [(deadline, pkt) for deadline, pkt in held if deadline > now]
            self.errors["no_neighbour"] += len(held) - len(keep)
            if keep:
                self.pending[key] = keep
            else:
                del self.pending[key]
                failed.append(key[1])
        return failed

    def on_readable(self) -> None:
        """Take in the kernel's announcements."""
        while True:
            try:
                data = self.monitor.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as err:  # ENOBUFS: we missed some; read the table again
                log.warning("netlink monitor: %s; re-reading neighbours", err)
                for msg in self.ipr.neigh("dump"):
                    self._neighbour(msg)
                self.routes_changed = True
                return
            for msg in self.marshal.parse(data):
                event = msg.get("event")
                if event in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
                    self._neighbour(msg)
                elif event in ("RTM_NEWLINK", "RTM_DELLINK"):
                    self._link(msg)
                    self.routes_changed = True
                else:
                    self.routes_changed = True

    def _neighbour(self, msg: object) -> None:
        dst = msg.get_attr("NDA_DST")  # type: ignore[attr-defined]
        if not dst:
            return
        try:
            key = (int(msg["ifindex"]), pack_addr(dst))  # type: ignore[index]
        except ValueError:  # not an IP neighbour (a bridge's MAC entry)
            return
        lladdr = msg.get_attr("NDA_LLADDR")  # type: ignore[attr-defined]
        usable = msg["state"] & NUD_USABLE  # type: ignore[index]
        if msg.get("event") == "RTM_DELNEIGH" or not lladdr or not usable:  # type: ignore[attr-defined]
            self.macs.pop(key, None)
            return
        mac = bytes.fromhex(lladdr.replace(":", ""))
        self.macs[key] = mac
        for _, packet in self.pending.pop(key, ()):
            self._transmit(key[0], mac, packet)

    def _link(self, msg: object) -> None:
        index = int(msg["index"])  # type: ignore[index]
        if msg.get("event") == "RTM_DELLINK":  # type: ignore[attr-defined]
            self.links.pop(index, None)
            return
        name = msg.get_attr("IFLA_IFNAME")  # type: ignore[attr-defined]
        address = msg.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"  # type: ignore[attr-defined]
        mtu = int(msg.get_attr("IFLA_MTU") or 1500)  # type: ignore[attr-defined]
        self.links[index] = (name, bytes.fromhex(address.replace(":", "")), mtu)

    def _resolve(self, frame: Frame) -> None:
        try:
            self.ipr.neigh(
                "replace",
                dst=unpack_addr(frame.nexthop),
                family=socket.AF_INET6 if len(frame.nexthop) == 16 else socket.AF_INET,
                ifindex=frame.ifindex,
                state=NUD_INCOMPLETE,
                flags=NTF_USE,
            )
        except Exception as err:
            self.errors["neighbour_resolve_error"] += 1
            log.debug("neighbour resolution failed: %s", err)

    def _transmit(self, ifindex: int, mac: bytes, packet: bytes | bytearray) -> None:
        link = self.links.get(ifindex)
        if link is None:
            self.errors["no_interface"] += 1
            return
        name, own, mtu = link
        # A packet larger than the link (a datagram reassembled before LOCAL_IN) goes
        # as fragments, as ip_output would send it; DF ones the core answered before.
        # IPv6 packets are never fragmented on the way (the core answered those).
        ipv6 = packet[0] >> 4 == 6
        too_big = len(packet) > mtu
        pieces = ([] if ipv6 else list(fragment(packet, mtu))) if too_big else [packet]
        if not pieces:
            self.errors["frame_too_big"] += 1
        proto = ETH_P_IPV6 if ipv6 else ETH_P_IP
        for piece in pieces:
            try:
                self.packet.sendto(ethernet_frame(mac, own, piece), (name, proto))
            except OSError:
                self.errors["send_frame_error"] += 1
                return

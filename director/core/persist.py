"""Persistence: connection templates (ip_vs_sched_persist in ip_vs_core.c).

A persistent service sends every connection from one client (its address masked by the
service's netmask, ``-M``: a dotted mask for IPv4, a prefix length for IPv6) to the same
real server for as long as the client keeps coming back within the persistence timeout
(``-p``).  The choice lives in a template, a connection entry without ports, keyed

- ``<proto, client net, 0, VIP, vport>`` when the packet is for the service's port,
- ``<proto, client net, 0, VIP, 0>`` for a port-zero (all ports) service,
- ``<IP, client net, 0, fwmark, 0>`` for a firewall-mark service.

Each new connection through a template restarts its timer (ip_vs_conn_put).  A
template whose real server has gone, or has weight 0 while
``expire_quiescent_template`` is set, is no longer used (ip_vs_check_template).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from director.core.conn import Conn, ConnProtocol, InKey, Template

if TYPE_CHECKING:
    from director.core.packet import Packet
    from director.core.service import Dest, Service
    from director.core.sysctl import Sysctls
    from director.core.xmit import Xmit


FTPPORT = 21  # ip_vs_core.c's FTPPORT, fixed whatever ports= the FTP helper watches


class IpTemplateProtocol:
    """Firewall-mark templates have protocol 0 (IPPROTO_IP); they only show "NONE"."""

    name = "IP"
    state_names: tuple[str, ...] = ("NONE",)

    def initial_state(self) -> int:
        return 0

    def transition(self, conn: Conn, direction: int, flags: int) -> None:
        pass


IP_TEMPLATE = IpTemplateProtocol()


def mask(addr: bytes, netmask: bytes) -> bytes:
    """The client network of ``addr`` (ip_vs_sched_persist: ``saddr & svc->netmask``
    for IPv4, ipv6_addr_prefix for IPv6, the netmask being the prefix's packed mask).
    A netmask of the other family (one left at the IPv4 default on an IPv6 service)
    keeps the whole address, as each family's default (/32, /128) does."""
    if len(netmask) != len(addr):
        return addr
    return bytes(a & m for a, m in zip(addr, netmask, strict=True))


def template_key(svc: Service, pkt: Packet) -> InKey:
    snet = mask(pkt.saddr, svc.netmask)
    proto, _, port = svc.key
    if not proto:
        # ``union nf_inet_addr fwmark = { .ip = htonl(svc->fwmark) }``: the mark in the
        # first word, the rest of an IPv6 address zero.
        return (0, snet, 0, port.to_bytes(4, "big").ljust(len(snet), b"\0"), 0)
    if port and pkt.dport == port:
        # "FTP template: <protocol, caddr, 0, vaddr, 0, daddr, 0>": a service on
        # port 21 shares its clients' templates with the VIP's port-zero service,
        # which takes their data connections (ip_vs_sched_persist, FTPPORT).
        return (proto, snet, 0, pkt.daddr, 0 if port == FTPPORT else pkt.dport)
    return (proto, snet, 0, pkt.daddr, 0)


def usable(template: Conn, sysctls: Sysctls) -> bool:
    """ip_vs_check_template: is the template's real server still a valid choice?"""
    dest = template.dest
    if not dest.available:
        return False
    return not (sysctls.expire_quiescent_template and dest.weight == 0)


def new_template(
    proto: ConnProtocol, key: InKey, svc: Service, dest: Dest, xmit: Xmit, now: float
) -> Template:
    """ip_vs_conn_new(..., IP_VS_CONN_F_TEMPLATE): ports only for the service's own port."""
    protocol, snet, _, vaddr, vport = key
    template = Template(
        proto if protocol else IP_TEMPLATE,
        protocol,
        snet,
        0,
        vaddr,
        vport,
        svc,
        dest,
        xmit,
        dport=dest.port if vport else 0,
    )
    template.timeout = svc.conf.persistent or 0
    template.expires = now + template.timeout
    return template

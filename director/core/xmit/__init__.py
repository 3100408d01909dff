"""Forwarding methods (net/netfilter/ipvs/ip_vs_xmit.c), registered by name.

A forwarding method rewrites a packet of a connection and says what to do with it.
It is chosen from the real server when the connection is created and bound to the
connection (``ip_vs_bind_xmit``); the per-packet path only calls ``conn.xmit``.

A verdict is a pair ``(action, data)``:

- ``(ACCEPT, None)``: let the packet go on unchanged;
- ``(ACCEPT, buf)``: let it go on as rewritten in ``buf``;
- ``(SEND, buf)``: drop the original and send ``buf`` as a new IP packet, routed by its
  destination (a request arrives at LOCAL_IN, past the routing decision, so the
  director must send the rewritten packet on itself);
- ``(DIRECT, Frame)``: drop the original and hand the packet, unchanged, to the real
  server at layer 2 (VS/DR: only the Ethernet destination changes);
- ``(DROP, reason)``: drop it, counted under ``reason``;
- ``(MARK, mark)``: let it go on unchanged with this firewall mark: the kernel fast path
  (``directord --fast-path kernel``), where a rule of the hooks turns the mark into a
  DNAT to the real server that conntrack then applies to the rest of the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from director.core.route import Frame, Route

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import IcmpError, Packet
    from director.core.service import Dest

ACCEPT, SEND, DROP, DIRECT, MARK = 0, 1, 2, 3, 4
VERDICT_NAMES: tuple[str, ...] = ("accept", "send", "drop", "direct", "mark")

Verdict = tuple[int, "bytearray | Frame | str | int | None"]


class Xmit:
    """A forwarding method: what happens to requests (``xmit_in``) and replies (``xmit_out``)."""

    name: ClassVar[str]
    nooutput: ClassVar[bool] = True  # replies do not come back through the director
    # The IP versions it carries: Director.check refuses a service or real server of
    # another.
    families: ClassVar[frozenset[int]] = frozenset((4,))

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        raise NotImplementedError

    def xmit_out(self, conn: Conn, pkt: Packet) -> Verdict:
        return (ACCEPT, None)

    def fused_in(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        """The fused path's xmit_in (Director.hook_in): the same rewrite and verdict
        for a packet with a 20-byte IP header, or None, having changed nothing, when
        the packet needs a question the general path asks (no route, too big...).
        By default every packet takes the general path."""
        return None

    def fused_out(self, conn: Conn, buf: bytearray) -> Verdict | None:
        """The fused path's xmit_out, as ``fused_in``."""
        return None

    def fused_out_partial(self, conn: Conn, buf: bytearray, skb_info: int) -> Verdict | None:
        """``fused_out`` for a packet whose transport checksum is the kernel's partial
        seed (``skb_info``: the queue's NFQA_SKB_INFO flags)."""
        return None

    def fused_in6(self, conn: Conn, buf: bytearray, length: int) -> Verdict | None:
        """``fused_in`` for an IPv6 packet with no extension headers (the transport
        header at 40).  By default every IPv6 packet takes the general path."""
        return None

    def fused_out6(self, conn: Conn, buf: bytearray, skb_info: int) -> Verdict | None:
        """``fused_out`` for an IPv6 packet with no extension headers, its transport
        checksum perhaps the kernel's partial seed (``skb_info``: the queue's
        NFQA_SKB_INFO flags)."""
        return None

    def icmp_in(self, conn: Conn, err: IcmpError) -> Verdict:
        """An ICMP error from outside about a connection: by default it goes to the
        real server as it is, the way the connection's packets go (ip_vs_icmp_xmit)."""
        return self.xmit_in(conn, err.pkt)

    def icmp_out(self, conn: Conn, err: IcmpError) -> Verdict:
        """An ICMP error from the real server about a connection."""
        return (ACCEPT, None)

    def unreachable(self, route: Route | None) -> str | None:
        """Why this method cannot deliver a packet along ``route`` (None: it can).

        IPVS takes such a real server all the same (ip_vs_new_dest checks only that
        the address is unicast or local) and its packets fail at transmit time
        (__ip_vs_get_out_rt); the director says so in listings and metrics."""
        return None


XMITS: dict[str, Xmit] = {}


def register(cls: type[Xmit]) -> type[Xmit]:
    if cls.name in XMITS:
        raise ValueError(f"forwarding method {cls.name} registered twice")
    XMITS[cls.name] = cls()
    return cls


def named(method: str) -> Xmit | None:
    """The forwarding method registered under ``method``, if any."""
    if not _loaded:
        _load_all()
    return XMITS.get(method)


def bind_xmit(dest: Dest) -> Xmit:
    """ip_vs_bind_xmit: the transmitter for a real server.

    A real server that is an address of the director is served locally whatever
    method it was given (__ip_vs_update_dest turns it into IP_VS_CONN_F_LOCALNODE).
    """
    if not _loaded:
        _load_all()
    if dest.route is not None and dest.route.local:
        return XMITS["local"]
    if dest.fast_mark and dest.method == "masq":
        return XMITS[KERNEL_NAT]
    return XMITS[dest.method]


KERNEL_NAT = "kernel-nat"  # not a method one configures: masq on the kernel fast path


def unreachable(dest: Dest) -> str | None:
    """Why the packets of ``dest`` cannot be delivered now, by the route the shell
    last found toward it (None: nothing stops them)."""
    try:
        xmit = bind_xmit(dest)
    except KeyError:  # a method the data path does not know: not a route question
        return None
    return xmit.unreachable(dest.route)


_loaded = False


def _load_all() -> None:
    """Import every forwarding method module: importing one registers it."""
    global _loaded
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True

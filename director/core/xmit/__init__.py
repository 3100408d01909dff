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
- ``(DROP, reason)``: drop it, counted under ``reason``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from director.core.conn import Conn
    from director.core.packet import Packet

ACCEPT, SEND, DROP = 0, 1, 2
VERDICT_NAMES: tuple[str, ...] = ("accept", "send", "drop")

Verdict = tuple[int, "bytearray | str | None"]


class Xmit:
    """A forwarding method: what happens to requests (``xmit_in``) and replies (``xmit_out``)."""

    name: ClassVar[str]
    nooutput: ClassVar[bool] = True  # replies do not come back through the director

    def xmit_in(self, conn: Conn, pkt: Packet) -> Verdict:
        raise NotImplementedError

    def xmit_out(self, conn: Conn, pkt: Packet) -> Verdict:
        return (ACCEPT, None)


XMITS: dict[str, Xmit] = {}


def register(cls: type[Xmit]) -> type[Xmit]:
    if cls.name in XMITS:
        raise ValueError(f"forwarding method {cls.name} registered twice")
    XMITS[cls.name] = cls()
    return cls


def bind_xmit(method: str) -> Xmit:
    """ip_vs_bind_xmit: the transmitter for a real server's forwarding method."""
    if not XMITS:
        from director.core.xmit import nat  # noqa: F401  (registers itself)
    return XMITS[method]

"""The path-MTU check every transmitter makes before sending (ensure_mtu_is_adequate).

A packet with DF set that does not fit the way to its real server is answered with
ICMP fragmentation needed carrying the MTU that fits; the client's stack lowers its
path MTU and sends again (RFC 1191).  Without DF the packet goes on and the kernel
fragments it on output.
"""

from __future__ import annotations

from director.core.icmp import frag_needed
from director.core.packet import Packet
from director.core.xmit import SEND, Verdict

_IP_DF = 0x40  # in the first byte of the fragment field


def too_big(pkt: Packet, mtu: int) -> Verdict | None:
    """The ICMP answer if ``pkt`` needs more than ``mtu`` bytes and may not be fragmented."""
    if pkt.length > mtu and pkt.buf[6] & _IP_DF:
        return (SEND, frag_needed(pkt.buf, mtu))
    return None

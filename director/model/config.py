"""The configuration an operator gives: virtual services, their real servers, timeouts.

This is what ipvsadm's ``-A/-E/-D/-a/-e/-d/--set`` edit and what ``ipvsadm-save``
prints: plain, immutable data with text addresses.  It knows nothing of packets or
connections; the live tables (``director.core.service``) are reconciled from it, so
every change is "compute a new Config, validate it, then apply it whole", which is
what makes a change atomic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from director.model.health import Health

# Forwarding methods, by the names the kernel uses (IP_VS_CONN_F_MASQ, _DROUTE, _TUNNEL,
# _LOCALNODE) and the words ipvsadm -L prints for them.
METHOD_WORDS: dict[str, str] = {
    "masq": "Masq",
    "droute": "Route",
    "tunnel": "Tunnel",
    "local": "Local",
}

PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "fwm")

# Tunnel types of a VS/TUN real server, by the names ipvsadm 1.31 gives them, in the
# kernel's order (IP_VS_CONN_F_TUNNEL_TYPE_IPIP, _GUE, _GRE: the index is the number
# the kernel keeps in dest->tun_type), and its encapsulation flags by the names
# ipvsadm lists them under (tunflags[]: IP_VS_TUNNEL_ENCAP_FLAG_NOCSUM 0, _CSUM 1<<0,
# _REMCSUM 1<<1, the value its bits).
TUN_TYPES: tuple[str, ...] = ("ipip", "gue", "gre")
TUN_FLAGS: dict[str, int] = {"nocsum": 0, "csum": 1, "remcsum": 2}
DEFAULT_TUN_TYPE = "ipip"
DEFAULT_TUN_FLAGS = "nocsum"

DEFAULT_SCHEDULER = "wlc"
DEFAULT_PERSISTENCE = 360  # seconds, ipvsadm's bare -p
DEFAULT_NETMASK = "255.255.255.255"
# The address of an IPv6 firewall-mark service (ipvsadm's ``-f MARK -6``): the kernel keys
# fwmark services by (af, fwmark) with a zero svc->addr; an IPv4 one keeps "" here.
FWM6_ADDR = "::"
MAX_WEIGHT = 2147483647  # the kernel takes any non-negative int


class ConfigError(ValueError):
    """The operator's request is wrong; the message is one line that says why."""


@dataclass(frozen=True, slots=True)
class DestConf:
    """One real server of a service (ipvsadm -a)."""

    addr: str
    port: int
    method: str = "droute"  # -g is ipvsadm's default
    weight: int = 1
    u_threshold: int = 0  # -x, 0 = no limit
    l_threshold: int = 0  # -y
    # VS/TUN's encapsulation (ipvsadm --tun-type, --tun-port, --tun-nocsum/--tun-csum/
    # --tun-remcsum): the defaults for every other method, as the kernel keeps them.
    tun_type: str = DEFAULT_TUN_TYPE
    tun_port: int = 0  # GUE's UDP destination port; 0 for IPIP and GRE
    tun_flags: str = DEFAULT_TUN_FLAGS

    @property
    def key(self) -> tuple[str, int]:
        return (self.addr, self.port)


@dataclass(frozen=True, slots=True)
class ServiceConf:
    """One virtual service (ipvsadm -A): by protocol, VIP and port, or by fwmark.

    A firewall-mark service has an address family too (``struct ip_vs_service``'s
    ``af``; ipvsadm's ``-f MARK -6``): its ``addr`` is "" for IPv4 and ``FWM6_ADDR``
    ("::", the zero address) for IPv6, so that ``-f 1`` and ``-f 1 -6`` are two services.
    """

    protocol: str  # "tcp", "udp" or "fwm"
    addr: str = ""  # VIP; "" (IPv4) or "::" (IPv6) for fwmark services
    port: int = 0
    fwmark: int = 0
    scheduler: str = DEFAULT_SCHEDULER
    persistent: int | None = None  # -p timeout in seconds, None = not persistent
    netmask: str = DEFAULT_NETMASK
    sched_flags: tuple[str, ...] = ()
    ops: bool = False  # one-packet scheduling
    dests: tuple[DestConf, ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies a service: (protocol, VIP, port), or ("fwm", "", mark) and
        ("fwm", "::", mark) for IPv4 and IPv6 firewall-mark services."""
        if self.protocol == "fwm":
            return ("fwm", self.addr, self.fwmark)
        return (self.protocol, self.addr, self.port)

    @property
    def family(self) -> int:
        """4 or 6: the service's address family (svc->af)."""
        return 6 if ":" in self.addr else 4


@dataclass(frozen=True, slots=True)
class Timeouts:
    """ipvsadm --set tcp tcpfin udp: the ESTABLISHED, FIN_WAIT and UDP timeouts."""

    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon persists in its rules file."""

    services: tuple[ServiceConf, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Health checks and failure policies (director.health): intent, saved as comment
    # lines of the rules file; the live table is ``health.effective.effective(...)``.
    health: Health = field(default_factory=Health)

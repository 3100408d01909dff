"""What ``dirctl realserver up|down`` changes on a real server: pure planning.

A VS/DR or VS/TUN real server must accept packets addressed to the VIP without ever
answering ARP for it (the director owns the VIP on the shared LAN), and answer the
client directly with the VIP as source.  The classic LVS recipe, which the kernel
selftest ``ipvs.sh`` follows too:

* the VIP as a /32 on a device that does not ARP: a ``dummy`` device ``director0``
  where the kernel has the module loaded, else ``lo``; for TUN without the kernel's
  ``ipip`` module, the TUN device ``dirtun0`` of the userspace decapsulator;
* ``arp_ignore=1`` (answer ARP only for addresses of the receiving device) and
  ``arp_announce=2`` (never use the VIP as ARP source), on ``all`` and the VIP device;
* ``rp_filter`` relaxed where the reverse path check would drop the traffic: strict
  (1) becomes loose (2); the decapsulating device gets 0, since the packets appearing
  there come from clients that are routed elsewhere;
* for TUN, ``tunl0`` up where the kernel has ``ipip``, else the decapsulator.

IPv6 VIPs (``--vip 2001:db8:1::100``) go on the same device as a /128.  Neighbour
discovery needs no setting: Linux answers a neighbour solicitation only for an address
of the interface it arrived on (ndisc_recv_ns looks the target up on that device), so
a VIP on ``lo``, the dummy or the TUN device is never announced on the LAN; the ARP and
rp_filter settings are IPv4's and are made only when an IPv4 VIP is served.  This
kernel decapsulates no IPv6 tunnel (no ip6_tunnel, no sit): IPv6 VIPs on a TUN real
server take the userspace decapsulator, which takes IPv6-in-IPv6, IPv4-in-IPv6 and
IPv6-in-IPv4 as well as IPIP.

No modules are loaded: loading ``dummy`` or ``ipip`` would create devices in every
namespace, the host's own included.  ``plan_up`` and ``plan_down`` compare what the
host has (``Host``) with what is wanted and return the actions to take, in order;
``recorded`` folds each applied action into the ``State`` that ``down`` undoes.
Nothing the host had before is taken over: an address, link or sysctl value that was
already there is left alone, and ``down`` restores a sysctl only if it still has the
value ``up`` gave it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from director.core.tunneled import DECAP_DEVICE
from director.model.config import ConfigError

Method = Literal["dr", "tun"]
Decap = Literal["auto", "kernel", "userspace"]
METHODS: tuple[str, ...] = ("dr", "tun")
DECAPS: tuple[str, ...] = ("auto", "kernel", "userspace")
TUN_TYPES: tuple[str, ...] = ("ipip", "gue", "gre")  # the director's --tun-type

DUMMY_DEV = "director0"
TUN_DEV = DECAP_DEVICE  # the userspace decapsulator's (the director's ignore_tunneled knows it)
KERNEL_TUN_DEV = "tunl0"
LOOPBACK = "lo"

ARP_IGNORE = 1  # reply only for addresses configured on the receiving device
ARP_ANNOUNCE = 2  # always the best local address of the outgoing device as ARP source
RP_STRICT, RP_LOOSE, RP_OFF = 1, 2, 0


class PlanError(ConfigError):
    """The request cannot be carried out on this host; the message says why."""


def conf(dev: str, key: str) -> str:
    """The /proc/sys path (below /proc/sys) of an IPv4 per-device setting."""
    return f"net/ipv4/conf/{dev}/{key}"


@dataclass(frozen=True, slots=True)
class Link:
    kind: str  # "" for devices without link info (lo, veth has "veth", ...)
    up: bool


@dataclass(frozen=True, slots=True)
class Host:
    """What the host has now, as far as the planner needs to know."""

    links: Mapping[str, Link]
    addrs: frozenset[tuple[str, str]]  # (device, IPv4 or IPv6 address)
    sysctls: Mapping[str, int]  # conf(dev, key) -> value, for existing devices
    modules: frozenset[str]  # of "dummy", "ipip": those loaded (or built in)
    decap_alive: bool = False  # the recorded decapsulator process runs


@dataclass(frozen=True, slots=True)
class Request:
    method: Method
    vips: tuple[str, ...]
    decap: Decap = "auto"
    # VS/TUN's tunnel type (the director's --tun-type): "ipip", "gue" (with its UDP
    # port) or "gre"; GUE and GRE take the userspace decapsulator (no fou, no gre).
    tun_type: str = "ipip"
    tun_port: int = 0


@dataclass(slots=True)
class State:
    """What ``up`` did, for ``down`` to undo and ``status`` to show (kept as JSON)."""

    method: str
    mode: str  # "dr", "tun-kernel" or "tun-userspace"
    vip_dev: str
    vips: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)
    raised_links: list[str] = field(default_factory=list)
    added_addrs: list[tuple[str, str]] = field(default_factory=list)
    sysctls: dict[str, tuple[int, int]] = field(default_factory=dict)  # path: (old, ours)
    decap_pid: int | None = None
    tun_type: str = "ipip"
    tun_port: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "mode": self.mode,
            "vip_dev": self.vip_dev,
            "vips": list(self.vips),
            "created_links": list(self.created_links),
            "raised_links": list(self.raised_links),
            "added_addrs": [list(a) for a in self.added_addrs],
            "sysctls": {k: list(v) for k, v in self.sysctls.items()},
            "decap_pid": self.decap_pid,
            "tun_type": self.tun_type,
            "tun_port": self.tun_port,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> State:
        return cls(
            method=str(data["method"]),
            mode=str(data["mode"]),
            vip_dev=str(data["vip_dev"]),
            vips=[str(v) for v in data.get("vips", [])],
            created_links=[str(v) for v in data.get("created_links", [])],
            raised_links=[str(v) for v in data.get("raised_links", [])],
            added_addrs=[(str(d), str(a)) for d, a in data.get("added_addrs", [])],
            sysctls={str(k): (int(o), int(n)) for k, (o, n) in data.get("sysctls", {}).items()},
            decap_pid=None if data.get("decap_pid") is None else int(data["decap_pid"]),
            tun_type=str(data.get("tun_type", "ipip")),
            tun_port=int(data.get("tun_port", 0)),
        )


# --- actions: what the shell carries out, in order ------------------------------------


@dataclass(frozen=True, slots=True)
class CreateLink:
    name: str
    kind: Literal["dummy", "tun"]


@dataclass(frozen=True, slots=True)
class DeleteLink:
    name: str


@dataclass(frozen=True, slots=True)
class SetLink:
    name: str
    up: bool


def prefixlen(addr: str) -> int:
    """The prefix length a VIP is added with: a host route's, /32 or /128."""
    return 128 if ":" in addr else 32


@dataclass(frozen=True, slots=True)
class AddAddress:
    dev: str
    addr: str  # added as a /32 (IPv4) or a /128 (IPv6)


@dataclass(frozen=True, slots=True)
class DeleteAddress:
    dev: str
    addr: str


@dataclass(frozen=True, slots=True)
class WriteSysctl:
    path: str
    value: int
    old: int | None  # None: a device of ours, nothing to restore


@dataclass(frozen=True, slots=True)
class RestoreSysctl:
    path: str
    value: int


@dataclass(frozen=True, slots=True)
class StartDecap:
    tun: str
    vips: tuple[str, ...]
    tun_type: str = "ipip"  # gue or gre: the decapsulator reads them too
    tun_port: int = 0


@dataclass(frozen=True, slots=True)
class StopDecap:
    pid: int


Action = (
    CreateLink
    | DeleteLink
    | SetLink
    | AddAddress
    | DeleteAddress
    | WriteSysctl
    | RestoreSysctl
    | StartDecap
    | StopDecap
)


# --- up ------------------------------------------------------------------------------


def parse_vips(vips: Iterable[str]) -> tuple[str, ...]:
    """The VIPs in canonical form, without repeats; PlanError on anything but a unicast
    IPv4 or IPv6 address a service can have."""
    out: list[str] = []
    for text in vips:
        try:
            addr = ipaddress.ip_address(text.strip())
        except ValueError:
            raise PlanError(f"--vip {text!r}: not an IPv4 or IPv6 address") from None
        if (
            addr.is_unspecified
            or addr.is_loopback
            or addr.is_multicast
            or addr.is_link_local
            or addr == ipaddress.IPv4Address("255.255.255.255")
            or (isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None)
        ):
            raise PlanError(f"--vip {text}: not a unicast address a service can have")
        if str(addr) not in out:
            out.append(str(addr))
    if not out:
        raise PlanError("give at least one --vip")
    return tuple(out)


def choose_mode(req: Request, host: Host, vips: Iterable[str] = ()) -> str:
    """dr, tun-kernel (ipip, IPv4 VIPs only) or tun-userspace (the decapsulator)."""
    if req.method == "dr":
        if req.decap != "auto":
            raise PlanError("--decap is for --method tun")
        if req.tun_type != "ipip":
            raise PlanError("--tun-type is for --method tun")
        return "dr"
    if req.tun_type not in TUN_TYPES:
        raise PlanError(f"--tun-type {req.tun_type!r}: choose ipip, gue or gre")
    if (req.tun_type == "gue") != bool(req.tun_port) or not 0 <= req.tun_port <= 65535:
        raise PlanError("--tun-port: GUE's UDP port (1 to 65535), for --tun-type gue only")
    if req.tun_type != "ipip":
        if req.decap == "kernel":
            raise PlanError(
                f"the kernel here has no {req.tun_type} decapsulation: use --decap userspace"
            )
        return "tun-userspace"
    ipv6 = any(":" in vip for vip in vips)
    if req.decap == "kernel" and ipv6:
        raise PlanError("the kernel decapsulates no IPv6 tunnel here: use --decap userspace")
    if req.decap == "kernel" and "ipip" not in host.modules:
        raise PlanError("the kernel's ipip module is not loaded: use --decap userspace")
    if req.decap == "kernel" or (req.decap == "auto" and "ipip" in host.modules and not ipv6):
        return "tun-kernel"
    return "tun-userspace"


def vip_device(mode: str, host: Host) -> str:
    if mode == "tun-userspace":
        return TUN_DEV
    if "dummy" in host.modules or host.links.get(DUMMY_DEV, Link("", False)).kind == "dummy":
        return DUMMY_DEV
    return LOOPBACK


def plan_up(host: Host, req: Request, state: State | None) -> tuple[State, list[Action]]:
    """The actions that make the host serve ``req.vips`` by ``req.method``.

    With a state from an earlier ``up`` of the same method, only what is missing is
    done (more VIPs, a decapsulator that died); another method must be brought down
    first.
    """
    vips = parse_vips(req.vips)
    every = tuple(dict.fromkeys([*(state.vips if state is not None else ()), *vips]))
    mode = choose_mode(req, host, every)
    if state is not None and (state.method, state.mode, state.tun_type, state.tun_port) != (
        req.method, mode, req.tun_type, req.tun_port,
    ):  # fmt: skip
        raise PlanError(
            f"already up for {state.mode}: run `dirctl realserver down` before changing method"
        )
    if state is None:
        state = State(
            method=req.method, mode=mode, vip_dev=vip_device(mode, host),
            tun_type=req.tun_type, tun_port=req.tun_port,
        )  # fmt: skip
    dev = state.vip_dev
    actions: list[Action] = []
    created = dev not in host.links

    if created:
        actions.append(CreateLink(dev, "tun" if dev == TUN_DEV else "dummy"))
    if any(":" not in vip for vip in every):  # ARP and rp_filter are IPv4's
        actions += _sysctls_up(host, mode, dev, created)
    if created or not host.links[dev].up:
        actions.append(SetLink(dev, up=True))
    if mode == "tun-kernel":
        tunl = host.links.get(KERNEL_TUN_DEV)
        if tunl is None:
            raise PlanError(f"the ipip module is loaded but there is no {KERNEL_TUN_DEV}")
        if not tunl.up:
            actions.append(SetLink(KERNEL_TUN_DEV, up=True))

    held = {addr for _, addr in host.addrs}
    actions += [AddAddress(dev, vip) for vip in vips if vip not in held]

    if mode == "tun-userspace":
        wanted = tuple(dict.fromkeys([*state.vips, *vips]))
        if state.decap_pid is not None and host.decap_alive and set(wanted) != set(state.vips):
            actions.append(StopDecap(state.decap_pid))
            actions.append(StartDecap(dev, wanted, state.tun_type, state.tun_port))
        elif state.decap_pid is None or not host.decap_alive:
            actions.append(StartDecap(dev, wanted, state.tun_type, state.tun_port))
    return replace(state, vips=list(dict.fromkeys([*state.vips, *vips]))), actions


def _raise_to(host: Host, path: str, floor: int) -> list[Action]:
    """Set ``path`` to ``floor`` if it is lower now (a stricter setting is left alone)."""
    old = host.sysctls.get(path)
    return [] if old is None or old >= floor else [WriteSysctl(path, floor, old)]


def _sysctls_up(host: Host, mode: str, dev: str, created: bool) -> list[Action]:
    actions: list[Action] = []
    arp_devs = ["all"] + ([dev] if dev != TUN_DEV else [])
    for name in arp_devs:
        if name == dev and created:
            actions.append(WriteSysctl(conf(name, "arp_ignore"), ARP_IGNORE, None))
            actions.append(WriteSysctl(conf(name, "arp_announce"), ARP_ANNOUNCE, None))
        else:
            actions += _raise_to(host, conf(name, "arp_ignore"), ARP_IGNORE)
            actions += _raise_to(host, conf(name, "arp_announce"), ARP_ANNOUNCE)

    # The effective rp_filter of a device is max(all, device): strict anywhere in the
    # pair drops a packet whose source is routed through another device.
    if host.sysctls.get(conf("all", "rp_filter")) == RP_STRICT:
        actions.append(WriteSysctl(conf("all", "rp_filter"), RP_LOOSE, RP_STRICT))
    if mode == "dr":
        for name, link in sorted(host.links.items()):
            path = conf(name, "rp_filter")
            if name != LOOPBACK and link.up and host.sysctls.get(path) == RP_STRICT:
                actions.append(WriteSysctl(path, RP_LOOSE, RP_STRICT))
    else:
        decap_dev = dev if mode == "tun-userspace" else KERNEL_TUN_DEV
        path = conf(decap_dev, "rp_filter")
        if decap_dev == TUN_DEV and created:
            actions.append(WriteSysctl(path, RP_OFF, None))
        elif host.sysctls.get(path, RP_OFF) != RP_OFF:
            actions.append(WriteSysctl(path, RP_OFF, host.sysctls[path]))
    return actions


# --- down ----------------------------------------------------------------------------


def plan_down(host: Host, state: State) -> list[Action]:
    """The actions that undo ``state``, leaving alone whatever others changed since."""
    actions: list[Action] = []
    if state.decap_pid is not None and host.decap_alive:
        actions.append(StopDecap(state.decap_pid))
    for dev, addr in state.added_addrs:
        if (dev, addr) in host.addrs and dev not in state.created_links:
            actions.append(DeleteAddress(dev, addr))
    for name in state.created_links:
        if name in host.links:
            actions.append(DeleteLink(name))
    for name in state.raised_links:
        link = host.links.get(name)
        if link is not None and link.up and name not in state.created_links:
            actions.append(SetLink(name, up=False))
    for path, (old, ours) in state.sysctls.items():
        if host.sysctls.get(path) == ours:
            actions.append(RestoreSysctl(path, old))
    return actions


# --- bookkeeping ---------------------------------------------------------------------


def recorded(state: State, action: Action, pid: int | None = None) -> State:
    """``state`` after ``action`` was carried out (``pid``: of a started decapsulator)."""
    s = replace(
        state,
        created_links=list(state.created_links),
        raised_links=list(state.raised_links),
        added_addrs=list(state.added_addrs),
        sysctls=dict(state.sysctls),
    )
    match action:
        case CreateLink(name=name):
            if name not in s.created_links:
                s.created_links.append(name)
        case DeleteLink(name=name):
            s.created_links.remove(name)
            s.added_addrs = [(d, a) for d, a in s.added_addrs if d != name]
        case SetLink(name=name, up=True):
            if name not in s.created_links and name not in s.raised_links:
                s.raised_links.append(name)
        case SetLink(name=name, up=False):
            if name in s.raised_links:
                s.raised_links.remove(name)
        case AddAddress(dev=dev, addr=addr):
            s.added_addrs.append((dev, addr))
        case DeleteAddress(dev=dev, addr=addr):
            s.added_addrs.remove((dev, addr))
        case WriteSysctl(path=path, value=value, old=old):
            if old is not None:
                first = s.sysctls.get(path, (old, value))[0]
                s.sysctls[path] = (first, value)
        case RestoreSysctl(path=path):
            s.sysctls.pop(path, None)
        case StartDecap():
            s.decap_pid = pid
        case StopDecap():
            s.decap_pid = None
        case _:
            raise TypeError(f"unknown action {action!r}")
    return s


def describe(action: Action) -> str:
    """One line for the operator, in ``ip``/``sysctl`` words."""
    match action:
        case CreateLink(name=name, kind=kind):
            return f"ip link add {name} type {kind}"
        case DeleteLink(name=name):
            return f"ip link del {name}"
        case SetLink(name=name, up=up):
            return f"ip link set {name} {'up' if up else 'down'}"
        case AddAddress(dev=dev, addr=addr):
            return f"ip addr add {addr}/{prefixlen(addr)} dev {dev}"
        case DeleteAddress(dev=dev, addr=addr):
            return f"ip addr del {addr}/{prefixlen(addr)} dev {dev}"
        case WriteSysctl(path=path, value=value) | RestoreSysctl(path=path, value=value):
            return f"sysctl {path.replace('/', '.')}={value}"
        case StartDecap(tun=tun, vips=vips, tun_type=tun_type):
            kinds = "IPIP" if tun_type == "ipip" else f"IPIP and {tun_type.upper()}"
            return f"start the {kinds} decapsulator into {tun} for {', '.join(vips)}"
        case StopDecap(pid=pid):
            return f"stop the IPIP decapsulator (pid {pid})"
        case _:
            raise TypeError(f"unknown action {action!r}")

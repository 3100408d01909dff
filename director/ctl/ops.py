"""Configuration changes as data, and the one pure function that applies them.

Each operation mirrors one ipvsadm command (``-A -E -D -a -e -d -C --set``) and
``apply(config, op)`` checks it the way ipvsadm and the kernel's ``ip_vs_ctl.c`` do,
returning a new ``Config`` or raising ``ConfigError`` with one line that says why
(ipvsadm's own wording where it has one: "Service already exists", "No such
destination", ...).  ``apply`` never mutates its input, so a failed change leaves the
running configuration exactly as it was.

Deliberate choices, each noted where it is made:

* ``EditService`` replaces every service setting, as ``ipvsadm -E`` does (that is how
  persistence or one-packet scheduling is switched off); real servers stay.
* ``EditServer`` changes only the fields it carries (``None`` keeps the current value),
  unlike ``ipvsadm -e``, which silently resets weight and method to their defaults.
* Addresses are stored in canonical text, and the real-server port of a DR or TUN
  server of a port service is the service port (ipvsadm forces it, the kernel ignores
  it), so every accepted ``Config`` saves and restores to itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from director.core.sched import scheduler_names
from director.model.config import (
    DEFAULT_NETMASK,
    DEFAULT_TUN_FLAGS,
    DEFAULT_TUN_TYPE,
    FWM6_ADDR,
    MAX_WEIGHT,
    PROTOCOLS,
    TUN_FLAGS,
    TUN_TYPES,
    Config,
    ConfigError,
    DestConf,
    ServiceConf,
)

ServiceKey: TypeAlias = tuple[
    str, str, int
]  # ServiceConf.key: (proto, VIP, port) or ("fwm", "" | "::", mark)

MAX_TIMEOUT = 86400 * 31  # ipvsadm's limit for -p and --set
MAX_THRESHOLD = 2147483647  # INT_MAX, ipvsadm's limit for -x/-y
MAX_FWMARK = 4294967295
DEFAULT_NETMASK6 = "128"  # persistence granularity of IPv6 services is a prefix length

# Forwarding methods an operator may choose (-g -i -m); "local" is decided by the daemon.
CHOOSABLE_METHODS: frozenset[str] = frozenset({"droute", "tunnel", "masq"})
# Methods whose real-server port is the service port (ipvsadm process_options).
PORTLESS_METHODS: frozenset[str] = frozenset({"droute", "tunnel"})

# Scheduler flags (-b), by IP_VS_SVC_F_SCHED1..3 bit, and the names ipvsadm prints
# for them with each scheduler (print_sched_flags); "sh-*"/"mh-*" need that scheduler.
SCHED_FLAG_BITS: dict[str, int] = {
    "flag-1": 1,
    "flag-2": 2,
    "flag-3": 3,
    "sh-fallback": 1,
    "sh-port": 2,
    "mh-fallback": 1,
    "mh-port": 2,
}
SCHED_FLAG_OWNER: dict[str, str] = {
    "sh-fallback": "sh",
    "sh-port": "sh",
    "mh-fallback": "mh",
    "mh-port": "mh",
}
SCHED_FLAG_NAMES: dict[str, dict[int, str]] = {
    "sh": {1: "sh-fallback", 2: "sh-port"},
    "mh": {1: "mh-fallback", 2: "mh-port"},
}
GENERIC_FLAG_NAMES: dict[int, str] = {1: "flag-1", 2: "flag-2", 3: "flag-3"}


@dataclass(frozen=True, slots=True)
class AddService:
    """ipvsadm -A: ``service`` carries every setting; its ``dests`` are ignored."""

    service: ServiceConf


@dataclass(frozen=True, slots=True)
class EditService:
    """ipvsadm -E: replace the settings of an existing service, keep its real servers."""

    service: ServiceConf


@dataclass(frozen=True, slots=True)
class DeleteService:
    """ipvsadm -D."""

    key: ServiceKey


@dataclass(frozen=True, slots=True)
class AddServer:
    """ipvsadm -a: append a real server (ServiceConf.dests is oldest first)."""

    key: ServiceKey
    dest: DestConf


@dataclass(frozen=True, slots=True)
class EditServer:
    """ipvsadm -e: change a real server in place; ``None`` keeps the current value."""

    key: ServiceKey
    addr: str
    port: int
    method: str | None = None
    weight: int | None = None
    u_threshold: int | None = None
    l_threshold: int | None = None
    tun_type: str | None = None
    tun_port: int | None = None
    tun_flags: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteServer:
    """ipvsadm -d."""

    key: ServiceKey
    addr: str
    port: int


@dataclass(frozen=True, slots=True)
class Clear:
    """ipvsadm -C: remove every service (timeouts stay, as in the kernel's flush)."""


@dataclass(frozen=True, slots=True)
class SetTimeout:
    """ipvsadm --set tcp tcpfin udp; 0 keeps the current value."""

    tcp: int = 0
    tcpfin: int = 0
    udp: int = 0


Op: TypeAlias = (
    AddService | EditService | DeleteService | AddServer | EditServer | DeleteServer | Clear
) | SetTimeout

# Command names, as the dirctl verbs and the control protocol spell them.
OPS: dict[str, type[Op]] = {
    "add-service": AddService,
    "edit-service": EditService,
    "delete-service": DeleteService,
    "add-server": AddServer,
    "edit-server": EditServer,
    "delete-server": DeleteServer,
    "clear": Clear,
    "set-timeout": SetTimeout,
}
OP_NAMES: dict[type[Op], str] = {cls: name for name, cls in OPS.items()}


# --- value checks -------------------------------------------------------------------


def canonical_addr(text: str, what: str = "address") -> str:
    """The canonical text of an IPv4 or IPv6 address (what inet_ntop prints)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}") from None


def _version(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def _check_range(value: int, low: int, high: int, message: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(message)


def _check_netmask(netmask: str, family: int) -> str:
    """-M: a contiguous dotted mask for IPv4, a prefix length 1..128 for IPv6."""
    if family == 6:
        if not netmask.isdigit() or not 1 <= int(netmask) <= 128:
            raise ConfigError("illegal ipv6 netmask specified")
        return str(int(netmask))
    try:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{netmask}").netmask)
    except ValueError:
        raise ConfigError("illegal virtual server persistent mask specified") from None


def default_netmask(family: int) -> str:
    return DEFAULT_NETMASK6 if family == 6 else DEFAULT_NETMASK


def normalize_sched_flags(flags: tuple[str, ...], scheduler: str) -> tuple[str, ...]:
    """-b: check each flag as ipvsadm's parse_sched_flags does and return them in the
    form ipvsadm prints back (print_sched_flags), so save and restore agree."""
    bits: set[int] = set()
    for flag in flags:
        if flag not in SCHED_FLAG_BITS:
            raise ConfigError(f"invalid scheduler flag `{flag}'")
        owner = SCHED_FLAG_OWNER.get(flag)
        if owner is not None and owner != scheduler:
            raise ConfigError(f"incompatible scheduler flag `{flag}'")
        bits.add(SCHED_FLAG_BITS[flag])
    names = SCHED_FLAG_NAMES.get(scheduler, GENERIC_FLAG_NAMES)
    return tuple(names.get(bit, GENERIC_FLAG_NAMES[bit]) for bit in sorted(bits))


def check_service(svc: ServiceConf) -> ServiceConf:
    """Validate one service's settings (ipvsadm process_options + ip_vs_add_service)."""
    if svc.protocol not in PROTOCOLS:
        raise ConfigError(f"invalid protocol {svc.protocol!r}")
    if svc.persistent is not None:
        _check_range(
            svc.persistent, 1, MAX_TIMEOUT, f"invalid timeout value `{svc.persistent}' specified"
        )
    if svc.protocol == "fwm":
        _check_range(svc.fwmark, 1, MAX_FWMARK, f"invalid fwmark value `{svc.fwmark}' specified")
        if svc.addr not in ("", FWM6_ADDR) or svc.port:
            raise ConfigError("a firewall-mark service has no address or port")
        addr, family = svc.addr, svc.family
    else:
        addr = canonical_addr(svc.addr, "virtual server address")
        family = _version(addr)
        _check_range(svc.port, 0, 65535, "illegal virtual server address[:port] specified")
        if svc.fwmark:
            raise ConfigError("only firewall-mark services have a firewall mark")
        if svc.port == 0 and svc.persistent is None:
            raise ConfigError("Zero port specified for non-persistent service")
    if svc.ops and svc.protocol == "tcp":
        raise ConfigError("One-Packet Scheduling is only for UDP virtual services")
    if svc.scheduler not in scheduler_names():
        raise ConfigError(f"Scheduler or persistence engine not found: {svc.scheduler!r}")
    # The mask only acts with persistence and ipvsadm -E resets it: keep it only there.
    netmask = default_netmask(family)
    if svc.persistent is not None:
        netmask = _check_netmask(svc.netmask, family)
    return replace(
        svc,
        addr=addr,
        netmask=netmask,
        sched_flags=normalize_sched_flags(tuple(svc.sched_flags), svc.scheduler),
        dests=(),
    )


def check_dest(svc: ServiceConf, dest: DestConf) -> DestConf:
    """Validate one real server (ipvsadm process_options + ip_vs_ctl's ip_vs_check_dest)."""
    addr = canonical_addr(dest.addr, "real server address")
    if dest.method not in CHOOSABLE_METHODS:
        raise ConfigError(f"invalid forwarding method {dest.method!r}")
    _check_range(dest.port, 0, 65535, "illegal real server address[:port] specified")
    _check_range(dest.weight, 0, MAX_WEIGHT, "illegal weight specified")
    _check_range(dest.u_threshold, 0, MAX_THRESHOLD, "illegal u_threshold specified")
    _check_range(dest.l_threshold, 0, MAX_THRESHOLD, "illegal l_threshold specified")
    # The kernel refuses l > u outright; a lower threshold without an upper one is
    # harmless (it only ends an overload), so it is allowed here.
    if dest.u_threshold and dest.l_threshold > dest.u_threshold:
        raise ConfigError("lower threshold is higher than upper threshold")
    if _version(addr) != svc.family and dest.method != "tunnel":
        raise ConfigError("Different address family is allowed only for tunneling servers")
    _check_tunnel(dest)
    port = dest.port
    if svc.protocol != "fwm" and dest.method in PORTLESS_METHODS:
        port = svc.port
    return replace(dest, addr=addr, port=port)


def _check_tunnel(dest: DestConf) -> None:
    """The tunnel settings: the defaults for a method other than VS/TUN (ipvsadm:
    "Tunnel options conflict with forward method"); a GUE tunnel needs its UDP port
    (ip_vs_new_dest and ip_vs_edit_dest refuse a zero one); GRE has no port and no
    remote checksum offload, IPIP neither a port nor a checksum option (ipvsadm's
    tunnel_types_v_options)."""
    if dest.tun_type not in TUN_TYPES:
        raise ConfigError("illegal tunnel type specified")
    if dest.tun_flags not in TUN_FLAGS:
        raise ConfigError(f"illegal tunnel flags {dest.tun_flags!r}")
    _check_range(dest.tun_port, 0, 65535, "illegal tunnel port specified")
    if dest.method != "tunnel":
        if (dest.tun_type, dest.tun_port, dest.tun_flags) != (
            DEFAULT_TUN_TYPE, 0, DEFAULT_TUN_FLAGS,
        ):  # fmt: skip
            raise ConfigError("Tunnel options conflict with forward method")
        return
    if dest.tun_type == "gue" and not dest.tun_port:
        raise ConfigError("You need to supply the 'tun-port' option for the 'gue' tunnel type")
    if dest.tun_type != "gue" and dest.tun_port:
        raise ConfigError(f"Illegal 'tun-port' option with the '{dest.tun_type}' tunnel type")
    if dest.tun_type == "gre" and dest.tun_flags == "remcsum":
        raise ConfigError("Illegal 'tun-remcsum' option with the 'gre' tunnel type")
    if dest.tun_type == "ipip" and dest.tun_flags != DEFAULT_TUN_FLAGS:
        raise ConfigError(f"Illegal 'tun-{dest.tun_flags}' option with the 'ipip' tunnel type")


# --- lookups ------------------------------------------------------------------------


def canonical_key(key: ServiceKey) -> ServiceKey:
    proto, addr, port = key
    if proto == "fwm" or not addr:
        return (proto, addr, port)
    return (proto, canonical_addr(addr, "virtual server address"), port)


def _find_service(config: Config, key: ServiceKey, missing: str) -> int:
    wanted = canonical_key(key)
    for index, svc in enumerate(config.services):
        if svc.key == wanted:
            return index
    raise ConfigError(missing)


def _find_dest(svc: ServiceConf, addr: str, port: int) -> int:
    wanted = (canonical_addr(addr, "real server address"), port)
    for index, dest in enumerate(svc.dests):
        if dest.key == wanted:
            return index
    raise ConfigError("No such destination")


def _with_service(config: Config, index: int, svc: ServiceConf) -> Config:
    services = list(config.services)
    services[index] = svc
    return replace(config, services=tuple(services))


# --- apply --------------------------------------------------------------------------


def _add_service(config: Config, op: AddService) -> Config:
    svc = check_service(op.service)
    if any(existing.key == svc.key for existing in config.services):
        raise ConfigError("Service already exists")
    return replace(config, services=(*config.services, svc))


def _edit_service(config: Config, op: EditService) -> Config:
    svc = check_service(op.service)
    index = _find_service(config, svc.key, "No such service")
    return _with_service(config, index, replace(svc, dests=config.services[index].dests))


def _delete_service(config: Config, op: DeleteService) -> Config:
    index = _find_service(config, op.key, "No such service")
    return replace(config, services=config.services[:index] + config.services[index + 1 :])


def _add_server(config: Config, op: AddServer) -> Config:
    index = _find_service(config, op.key, "Service not defined")
    svc = config.services[index]
    dest = check_dest(svc, op.dest)
    if any(existing.key == dest.key for existing in svc.dests):
        raise ConfigError("Destination already exists")
    return _with_service(config, index, replace(svc, dests=(*svc.dests, dest)))


def _edit_server(config: Config, op: EditServer) -> Config:
    index = _find_service(config, op.key, "Service not defined")
    svc = config.services[index]
    port = op.port
    if op.method in PORTLESS_METHODS and svc.protocol != "fwm":
        port = svc.port  # ipvsadm looks a DR/TUN server up by the service port
    at = _find_dest(svc, op.addr, port)
    current = svc.dests[at]
    method = current.method if op.method is None else op.method
    edited = DestConf(
        addr=current.addr,
        port=current.port,
        method=method,
        weight=current.weight if op.weight is None else op.weight,
        u_threshold=current.u_threshold if op.u_threshold is None else op.u_threshold,
        l_threshold=current.l_threshold if op.l_threshold is None else op.l_threshold,
        **_edited_tunnel(current, method, op),
    )
    dest = check_dest(svc, edited)
    if dest.key != current.key and any(d.key == dest.key for d in svc.dests):
        raise ConfigError("Destination already exists")
    dests = list(svc.dests)
    dests[at] = dest  # same position: edit keeps the kernel's list order
    return _with_service(config, index, replace(svc, dests=tuple(dests)))


def _edited_tunnel(current: DestConf, method: str, op: EditServer) -> dict[str, Any]:
    """The tunnel settings after an edit: a new --tun-type brings its own port and
    checksum option (or their defaults); without one, what is given changes the
    current tunnel; a server leaving VS/TUN with no tunnel option given drops them."""
    if op.tun_type is not None:
        return {
            "tun_type": op.tun_type,
            "tun_port": op.tun_port or 0,
            "tun_flags": op.tun_flags or DEFAULT_TUN_FLAGS,
        }
    if method != "tunnel" and op.tun_port is None and op.tun_flags is None:
        return {}
    return {
        "tun_type": current.tun_type,
        "tun_port": current.tun_port if op.tun_port is None else op.tun_port,
        "tun_flags": current.tun_flags if op.tun_flags is None else op.tun_flags,
    }


def _delete_server(config: Config, op: DeleteServer) -> Config:
    index = _find_service(config, op.key, "Service not defined")
    svc = config.services[index]
    at = _find_dest(svc, op.addr, op.port)
    return _with_service(config, index, replace(svc, dests=svc.dests[:at] + svc.dests[at + 1 :]))


def _clear(config: Config, op: Clear) -> Config:
    return replace(config, services=())


def _set_timeout(config: Config, op: SetTimeout) -> Config:
    values = {"tcp": op.tcp, "tcpfin": op.tcpfin, "udp": op.udp}
    for value in values.values():
        _check_range(value, 0, MAX_TIMEOUT, f"invalid timeout value `{value}' specified")
    kept = {name: value for name, value in values.items() if value}
    return replace(config, timeouts=replace(config.timeouts, **kept))


_APPLY: dict[type[Op], Callable[[Config, Any], Config]] = {
    AddService: _add_service,
    EditService: _edit_service,
    DeleteService: _delete_service,
    AddServer: _add_server,
    EditServer: _edit_server,
    DeleteServer: _delete_server,
    Clear: _clear,
    SetTimeout: _set_timeout,
}


def apply(config: Config, op: Op) -> Config:
    """Return ``config`` changed by ``op``, or raise ConfigError and change nothing."""
    handler = _APPLY.get(type(op))
    if handler is None:
        raise ConfigError(f"unknown operation {type(op).__name__}")
    return handler(config, op)


def apply_all(config: Config, ops: list[Op]) -> Config:
    """Apply ops in order, all or nothing (the caller keeps ``config`` on ConfigError)."""
    for op in ops:
        config = apply(config, op)
    return config

"""The sync daemon's settings (ipvsadm --start-daemon's options), checked as the
kernel's ip_vs_genl_new_daemon and start_sync_thread check them.

They are kept by directord in ``<state-dir>/sync.json`` (as ``dirctl sysctl``'s
changes are), not in the rules file: ipvsadm-save does not save the daemons either,
and the rules file stays ipvsadm-restore's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from director.model.config import ConfigError

SYNC_GROUP = "224.0.0.81"  # IP_VS_SYNC_GROUP
SYNC_PORT = 8848  # IP_VS_SYNC_PORT
SYNC_TTL = 1
IFNAME_MAXLEN = 16  # IP_VS_IFNAME_MAXLEN, the terminating NUL included
STATES = ("master", "backup")


@dataclass(frozen=True, slots=True)
class DaemonConf:
    """One sync daemon: ``ipvsadm --start-daemon STATE --mcast-interface IF ...``.
    ``sync_maxlen`` 0 takes the kernel's default (the interface's MTU for a backup,
    1500 for a master, less the IP and UDP headers)."""

    state: str
    mcast_ifn: str
    syncid: int = 0
    sync_maxlen: int = 0
    mcast_group: str = SYNC_GROUP
    mcast_port: int = SYNC_PORT
    mcast_ttl: int = SYNC_TTL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(args: dict[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        option = "--" + name.replace("_", "-")
        raise ConfigError(f"{option} must be {low} to {high}, not {value!r}")
    return value


def parse_daemon(args: dict[str, Any]) -> DaemonConf:
    """A DaemonConf from ``start-daemon``'s arguments, or ConfigError saying which one
    is wrong (ipvsadm's and the kernel's checks: a state, an interface name that fits
    IP_VS_IFNAME_MAXLEN, a syncid of 8 bits, a multicast group, a port, a TTL of 8
    bits)."""
    state = args.get("state")
    if state not in STATES:
        raise ConfigError(f"daemon state must be master or backup, not {state!r}")
    ifn = args.get("mcast_ifn")
    if not isinstance(ifn, str) or not ifn:
        raise ConfigError("--mcast-interface is required")
    if len(ifn) >= IFNAME_MAXLEN or "/" in ifn or any(c.isspace() for c in ifn):
        raise ConfigError(f"invalid interface name {ifn!r}")
    group = args.get("mcast_group") or SYNC_GROUP
    try:
        addr = ipaddress.ip_address(str(group))
    except ValueError:
        raise ConfigError(f"invalid multicast group {group!r}") from None
    if not addr.is_multicast:
        raise ConfigError(f"{group} is not a multicast address")
    if addr.version == 6:
        raise ConfigError("an IPv6 multicast group is not supported by director yet")
    return DaemonConf(
        state=state,
        mcast_ifn=ifn,
        syncid=_int(args, "syncid", 0, 255, 0),
        sync_maxlen=_int(args, "sync_maxlen", 0, 65535, 0),
        mcast_group=str(addr),
        mcast_port=_int(args, "mcast_port", 1, 65535, SYNC_PORT),
        mcast_ttl=_int(args, "mcast_ttl", 1, 255, SYNC_TTL),
    )

"""IPVS's per-namespace sysctls that change how packets are handled
(Documentation/networking/ipvs-sysctl.rst), kept as settings of the daemon.

Defaults are the kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(slots=True)
class Sysctls:
    # Expire a connection whose real server was removed at its next packet (and let a
    # SYN be scheduled afresh) instead of silently dropping its packets.
    expire_nodest_conn: bool = False
    # A persistence template whose real server has weight 0 is no longer used.
    expire_quiescent_template: bool = False
    # Schedule a TCP connection on any packet but RST, not only on SYN.
    sloppy_tcp: bool = False
    # 1: a SYN that finds a connection in TIME_WAIT or CLOSE schedules afresh;
    # 2 (bit): also FIN_WAIT of a DR/TUN connection; 0: reuse the old connection.
    conn_reuse_mode: int = 1
    # The DoS defences (director.core.defense): 0 off, 1 automatic (armed), 2 automatic
    # (active now: memory is short), 3 always on.  The automatic ones move between 1
    # and 2 by themselves, as the kernel's do.
    drop_entry: int = 0
    drop_packet: int = 0
    secure_tcp: int = 0
    # Memory is short when less than this many 4 KiB pages are available.
    amemthresh: int = 1024
    # drop_packet=3 drops one new connection in this many.
    am_droprate: int = 10
    # Seconds an lblc entry / an lblcr entry may go unused before the full check (every
    # 30 minutes) drops it; lblcr also drops a set's busiest member after this long
    # without a change.
    lblc_expiration: int = 24 * 60 * 60
    lblcr_expiration: int = 24 * 60 * 60

    def as_dict(self) -> dict[str, int | bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def set(self, name: str, value: str) -> None:
        """Set one setting from text; ValueError names what is wrong."""
        if name not in {f.name for f in fields(self)}:
            raise ValueError(f"unknown setting {name!r}")
        current = getattr(self, name)
        if isinstance(current, bool):
            if value not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"{name} takes 0 or 1, not {value!r}")
            setattr(self, name, value in ("1", "true", "yes", "on"))
        else:
            low, high = RANGES[name]
            if not value.isdigit() or not low <= int(value) <= high:
                raise ValueError(f"{name} takes {low}..{high}, not {value!r}")
            setattr(self, name, int(value))

    def updated(self, changes: dict[str, str]) -> Sysctls:
        """A copy with ``changes`` applied: all of them, or none (ValueError)."""
        trial = replace(self)
        for name, value in changes.items():
            trial.set(name, value)
        return trial


INT_MAX = 2**31 - 1
RANGES: dict[str, tuple[int, int]] = {
    "conn_reuse_mode": (0, 3),
    "drop_entry": (0, 3),
    "drop_packet": (0, 3),
    "secure_tcp": (0, 3),
    "amemthresh": (0, INT_MAX),
    "am_droprate": (1, INT_MAX),
    # proc_dointvec_jiffies refuses more than INT_MAX / HZ seconds (HZ 250 on Debian).
    "lblc_expiration": (0, INT_MAX // 250),
    "lblcr_expiration": (0, INT_MAX // 250),
}

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
    # The connection sync daemon (director.core.sync).  sync_threshold and sync_period
    # are the two numbers of the kernel's net.ipv4.vs.sync_threshold ("3 50"): a
    # connection is synced at its 3rd packet, then every 50th (0: only at state
    # changes, or once at the threshold without sync_refresh_period).
    sync_threshold: int = 3
    sync_period: int = 50
    # Seconds: with it set, a connection is synced again only when its timeout moved by
    # this much (or half of it), with sync_retries retries at 1/8 of it.
    sync_refresh_period: int = 0
    sync_retries: int = 0
    # Connections under persistence are not synced, only their templates.
    sync_persist_mode: bool = False
    # 1: the version 1 protocol; 0: version 0 (IPv4 only, no timeouts) for old backups.
    sync_version: int = 1
    # Messages the master's queue holds at most (the kernel's default is
    # nr_free_buffer_pages() / 32, about 32768 on 4 GiB).
    sync_qlen_max: int = 32768
    # SO_SNDBUF / SO_RCVBUF of the sync sockets in bytes (0: the system's default).
    sync_sock_size: int = 0
    # While the backup daemon runs, the director does not balance (its packets go on to
    # the local stack): a backup that only keeps the master's connections.
    backup_only: bool = False
    # An ICMP error from outside that finds no connection is scheduled as the packet it
    # quotes would be, and goes to the real server chosen (ip_vs_in_icmp): for
    # directors behind ECMP, where an error may reach one that never saw the flow.
    schedule_icmp: bool = False
    # What a tunnel device decapsulated (IPIP, GRE, sit, ip6tnl...; the userspace
    # decapsulator's dirtun0) is left to the host, never scheduled again
    # (ip_vs_in_hook's ipvs_property: a director that is also a real server of
    # another director, director.core.tunneled).
    ignore_tunneled: bool = False
    # A DF packet that does not fit a tunnel is answered with fragmentation needed; off,
    # an IPv4 packet is tunnelled without DF and fragmented (ensure_mtu_is_adequate).
    pmtu_disc: bool = True
    # A NAT real server's TCP or UDP packet that belongs to no connection is answered
    # with ICMP port unreachable and dropped (ip_vs_out_hook), a TCP reset excepted.
    nat_icmp_send: bool = False
    # No real server left for a firewall-mark service: a packet to an address not the
    # director's goes on there, its connection with it (ip_vs_leave, ip_vs_bypass_xmit:
    # transparent cache clusters).
    cache_bypass: bool = False
    # The kernel keeps conntrack entries for IPVS's connections.  director's own
    # connection table is the only one in every-packet mode (its hooks NOTRACK the
    # VIPs' traffic, and its NAT sends the rewritten packets itself), so this stays 0:
    # stateful firewall rules see the fast services' flows with --fast-path kernel.
    conntrack: bool = False
    # The rate estimator runs every 2 s (ip_vs_est.c); off, the rates stay as they were
    # and the first step after it is back counts everything since (not accurate).
    run_estimation: bool = True

    def as_dict(self) -> dict[str, int | bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def set(self, name: str, value: str) -> None:
        """Set one setting from text; ValueError names what is wrong."""
        if name not in {f.name for f in fields(self)}:
            raise ValueError(f"unknown setting {name!r}")
        current = getattr(self, name)
        if isinstance(current, bool):
            if value not in _TRUE + _FALSE:
                raise ValueError(f"{name} takes 0 or 1, not {value!r}")
            if name in FIXED and (value in _TRUE) != FIXED[name][0]:
                raise ValueError(f"{name} takes only {int(FIXED[name][0])}: {FIXED[name][1]}")
            setattr(self, name, value in _TRUE)
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
        if trial.sync_period and trial.sync_threshold >= trial.sync_period:
            # proc_do_sync_threshold: the threshold must be below the period (or 0).
            raise ValueError(
                f"sync_threshold ({trial.sync_threshold}) must be below sync_period "
                f"({trial.sync_period}) unless sync_period is 0"
            )
        return trial


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
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
    "sync_threshold": (0, INT_MAX),
    "sync_period": (0, INT_MAX),
    "sync_refresh_period": (0, INT_MAX // 250),
    "sync_retries": (0, 3),  # proc_dointvec_minmax, 0..3
    "sync_version": (0, 1),
    "sync_qlen_max": (1, INT_MAX),
    "sync_sock_size": (0, INT_MAX),
}

# Settings a userspace director holds at one value, and why (the one-line refusal).
FIXED: dict[str, tuple[bool, str]] = {
    "conntrack": (
        False,
        "director keeps its connections in its own table, not conntrack's "
        "(--fast-path kernel hands the fast services' flows to conntrack)",
    ),
}

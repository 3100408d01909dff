"""The snapshot of the live tables that ``dirctl list`` shows (``director.ctl.snapshot``).

Pure: it reads the core's tables and the time it is given, nothing else.
"""

from __future__ import annotations

from itertools import chain, islice

from director.core.conn import Conn
from director.core.engine import Director
from director.core.service import PROTO_NAMES, Dest, Service, unpack_addr
from director.core.stats import Stats
from director.core.xmit import KERNEL_NAT, unreachable
from director.ctl.snapshot import ConnDict, DestDict, ServiceDict, Snapshot, StatsDict

# Connection entries in one answer to `list -c`: a page costs the loop a few
# milliseconds and its answer well under the client's MAX_MESSAGE, whatever the
# table holds.  The client asks page after page.
CONN_PAGE = 2048
IPVS_VERSION = "1.2.1"
CONN_TAB_SIZE = 4096  # what ipvsadm prints as (size=...): the kernel's default hash size


def stats_dict(stats: Stats) -> StatsDict:
    """ip_vs_copy_stats: counters relative to the last zero, and the decoded rates."""
    conns, inpkts, outpkts, inbytes, outbytes = stats.shown()
    cps, inpps, outpps, inbps, outbps = stats.rates()
    return StatsDict(
        conns=conns,
        inpkts=inpkts,
        outpkts=outpkts,
        inbytes=inbytes,
        outbytes=outbytes,
        cps=cps,
        inpps=inpps,
        outpps=outpps,
        inbps=inbps,
        outbps=outbps,
    )


def dest_dict(dest: Dest) -> DestDict:
    row = DestDict(
        addr=unpack_addr(dest.addr),
        port=dest.port,
        # __ip_vs_update_dest: a real server at an address of the director is local.
        method="local" if dest.route is not None and dest.route.local else dest.method,
        weight=dest.weight,
        u_threshold=dest.u_threshold,
        l_threshold=dest.l_threshold,
        activeconns=dest.activeconns,
        inactconns=dest.inactconns,
        persistconns=dest.persistconns,
        stats=stats_dict(dest.stats),
    )
    if row["method"] == "tunnel":
        row["tun_type"] = dest.tun_type
        row["tun_port"] = dest.tun_port
        row["tun_flags"] = dest.tun_flags
    reason = unreachable(dest)
    if reason is not None:
        row["unreachable"] = reason
    return row


def service_dict(svc: Service) -> ServiceDict:
    conf = svc.conf
    proto, _, _ = svc.key
    # ServiceConf.dests is oldest first; ipvsadm lists the kernel's list, newest first.
    return ServiceDict(
        protocol=PROTO_NAMES.get(proto, "FWM"),
        addr=conf.addr,
        port=conf.port,
        fwmark=conf.fwmark,
        scheduler=conf.scheduler,
        persistent=conf.persistent,
        netmask=conf.netmask,
        sched_flags=list(conf.sched_flags),
        ops=conf.ops,
        stats=stats_dict(svc.stats),
        dests=[dest_dict(d) for d in svc.dests],
    )


def conn_dict(conn: Conn, now: float) -> ConnDict:
    row = _conn_row(conn, now)
    if conn.xmit.name == KERNEL_NAT:
        row["fast"] = True
    return row


def _conn_row(conn: Conn, now: float) -> ConnDict:
    return ConnDict(
        protocol=conn.proto.name,
        state=conn.state_name,
        expires=max(0.0, conn.expires - now),
        caddr=unpack_addr(conn.caddr),
        cport=conn.cport,
        vaddr=unpack_addr(conn.vaddr),
        vport=conn.vport,
        daddr=unpack_addr(conn.daddr),
        dport=conn.dport,
    )


def conn_page(director: Director, now: float, offset: int, limit: int) -> list[ConnDict]:
    """Entries ``offset`` to ``offset + limit`` of the table, connections then
    templates, as ``ipvsadm -Lc`` lists them.  Pages are found by position, as the
    kernel's /proc/net/ip_vs_conn is read (ip_vs_conn_seq_start walks to ``*pos``):
    an entry added or removed between two pages may be missed or listed twice."""
    table = director.conns
    entries = chain(table.in_tab.values(), table.templates.values())
    return [conn_dict(c, now) for c in islice(entries, offset, offset + limit)]


def snapshot(
    director: Director,
    config_timeouts: tuple[int, int, int],
    now: float,
    *,
    conns: bool,
    offset: int = 0,
    limit: int = CONN_PAGE,
) -> Snapshot:
    """The tables; with ``conns``, one page of the connection table (``conns_next``
    says where the next one starts)."""
    tcp, tcpfin, udp = config_timeouts
    page = conn_page(director, now, offset, limit) if conns else []
    total = len(director.conns.in_tab) + len(director.conns.templates)
    more = conns and offset + len(page) < total and len(page) == limit
    return Snapshot(
        version=IPVS_VERSION,
        conn_tab_size=CONN_TAB_SIZE,
        services=[service_dict(svc) for svc in director.services],
        conns=page,
        conns_next=offset + len(page) if more else None,
        timeouts={"tcp": tcp, "tcpfin": tcpfin, "udp": udp},
        totals=stats_dict(director.totals),
        conn_entries=len(director.conns),
    )

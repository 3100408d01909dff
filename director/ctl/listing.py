"""ipvsadm -L layouts, column for column, as pure functions of a ``Snapshot``.

The formats follow ipvsadm 1.31's ``list_all``, ``print_title``,
``print_service_entry``, ``print_largenum``, ``list_conn`` and ``list_timeout``:
services sorted by (fwmark, family, protocol, address, port) and real servers by
(address, port) as ``ipvs_cmp_services``/``ipvs_cmp_dests`` do, the trailing spaces of
the ``%-10u`` columns kept, IPv4 names cut at ipvsadm's buffer widths.

Addresses are always numeric: ``list`` without ``-n`` prints the same as ``list -n``,
because director resolves neither host nor service names (scripts use ``-n``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from director.ctl.snapshot import ConnDict, DestDict, ServiceDict, Snapshot, StatsDict
from director.model.config import DEFAULT_TUN_FLAGS, DEFAULT_TUN_TYPE, METHOD_WORDS

ServiceKey = tuple[str, str, int]
# ipvsadm's addrport_to_anyname without -n: (address, port, "tcp" | "udp") -> text.
Names = Callable[[str, int, str], str]


@dataclass(frozen=True, slots=True)
class ListFormat:
    """The ``list`` options that change the layout (ipvsadm's FMT_* flags)."""

    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    exact: bool = False
    tun_info: bool = False
    # --nosort: services in configuration order (the kernel's is its hash table's,
    # keyed by a kernel pointer too), real servers newest first as the kernel's.
    nosort: bool = False
    names: Names | None = field(default=None, compare=False)  # None: numeric (-n)

    @property
    def layout(self) -> str:
        """ipvsadm picks the first of stats, rate, thresholds, persistent-conn, tun-info."""
        for name in ("stats", "rate", "thresholds", "persistent_conn", "tun_info"):
            if getattr(self, name):
                return name
        return "plain"


# --- numbers and names --------------------------------------------------------------

# print_largenum's units: below 100 million exact, then K, M, G, T (thousands each).
_UNITS: tuple[tuple[int, int, str], ...] = (
    (1_000_000_000, 1_000, "K"),
    (100_000_000_000, 1_000_000, "M"),
    (100_000_000_000_000, 1_000_000_000, "G"),
)


def largenum(value: int, exact: bool = False) -> str:
    """ipvsadm's print_largenum: a 9-wide column, abbreviated unless --exact."""
    value = int(value)
    if exact:
        text = str(value)
        return text.rjust(9 if len(text) <= 8 else len(text) + 1)
    if value < 100_000_000:
        return f"{value:9d}"
    for limit, divisor, unit in _UNITS:
        if value < limit:
            return f"{value // divisor:8d}{unit}"
    return f"{value // 1_000_000_000_000:8d}T"


def addr_port(addr: str, port: int) -> str:
    """Numeric addrport_to_anyname: ``a.b.c.d:port`` or ``[v6]:port``."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def service_key(svc: ServiceDict) -> ServiceKey:
    """The ServiceConf.key of a listed service, to select it by -t/-u/-f."""
    if svc["protocol"] == "FWM":
        return ("fwm", svc["addr"], svc["fwmark"])
    return (svc["protocol"].lower(), svc["addr"], svc["port"])


def _is_v6(addr: str) -> bool:
    return ":" in addr


def _proto(svc: ServiceDict) -> str:
    """The protocol whose service names name the ports (ipvsadm gives -f TCP's)."""
    return "udp" if svc["protocol"] == "UDP" else "tcp"


def _any_name(addr: str, port: int, proto: str, names: Names | None) -> str:
    return addr_port(addr, port) if names is None else names(addr, port, proto)


def _service_name(svc: ServiceDict, names: Names | None = None) -> str:
    """``TCP  vip:port`` (cut to 33 characters for IPv4), ``FWM  mark`` or
    ``FWM  mark IPv6`` (print_service_entry's svc_name)."""
    if svc["protocol"] == "FWM":
        return f"FWM  {svc['fwmark']}" + (" IPv6" if _is_v6(svc["addr"]) else "")
    vname = _any_name(svc["addr"], svc["port"], _proto(svc), names)
    name = f"{svc['protocol']:<4} {vname}"
    return name if _is_v6(svc["addr"]) else name[:33]


def _dest_name(dest: DestDict, proto: str = "tcp", names: Names | None = None) -> str:
    name = _any_name(dest["addr"], dest["port"], proto, names)
    return name if _is_v6(dest["addr"]) else name[:28]


def _addr_sort(addr: str) -> tuple[int, int]:
    if not addr:
        return (0, 0)
    ip = ipaddress.ip_address(addr)
    return (ip.version, int(ip))


_PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "FWM": 0}


def _service_order(svc: ServiceDict) -> tuple[int, int, int, int, int]:
    version, number = _addr_sort(svc["addr"])
    return (svc["fwmark"], version, _PROTO_NUMBERS.get(svc["protocol"], 0), number, svc["port"])


def _dest_order(dest: DestDict) -> tuple[int, int, int]:
    return (*_addr_sort(dest["addr"]), dest["port"])


# --- titles and rows, one entry per layout ------------------------------------------

_PLAIN_TITLE = (
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
)
_TITLES: dict[str, str] = {
    "plain": _PLAIN_TITLE,
    "stats": f"{'Prot LocalAddress:Port':<33} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} "
    f"{'InBytes':>8} {'OutBytes':>8}\n  -> RemoteAddress:Port\n",
    "rate": f"{'Prot LocalAddress:Port':<33} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} "
    f"{'InBPS':>8} {'OutBPS':>8}\n  -> RemoteAddress:Port\n",
    "thresholds": f"{'Prot LocalAddress:Port':<33} {'Uthreshold':<10} {'Lthreshold':<10} "
    f"{'ActiveConn':<10} {'InActConn':<10}\n  -> RemoteAddress:Port\n",
    "persistent_conn": f"{'Prot LocalAddress:Port':<33} {'Weight':<9} {'PersistConn':<11} "
    f"{'ActiveConn':<10} {'InActConn':<10}\n  -> RemoteAddress:Port\n",
    "tun_info": "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n",
}

_STATS_KEYS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
# The estimator's figures; a snapshot without them lists zeros.
_RATE_KEYS = ("cps", "inpps", "outpps", "inbps", "outbps")


def _figures(stats: StatsDict, keys: tuple[str, ...]) -> list[int]:
    values: Mapping[str, float] = stats  # type: ignore[assignment]
    return [int(values.get(key, 0)) for key in keys]


def _service_settings(svc: ServiceDict, names: Names | None = None) -> str:
    """``name sched (flags) persistent N mask M ops``, ipvsadm's plain service line."""
    words = [_service_name(svc, names), svc["scheduler"]]
    if svc["sched_flags"]:
        words.append(f"({','.join(svc['sched_flags'])})")
    if svc["persistent"] is not None:
        words.append(f"persistent {svc['persistent']}")
        default = "128" if _is_v6(svc["addr"]) else "255.255.255.255"
        if svc["netmask"] != default:
            words.append(f"mask {svc['netmask']}")
    if svc["ops"]:
        words.append("ops")
    return " ".join(words)


def _service_row(svc: ServiceDict, fmt: ListFormat) -> str:
    if fmt.layout in ("stats", "rate"):
        keys = _STATS_KEYS if fmt.layout == "stats" else _RATE_KEYS
        numbers = "".join(largenum(n, fmt.exact) for n in _figures(svc["stats"], keys))
        return f"{_service_name(svc, fmt.names):<33}{numbers}"
    return _service_settings(svc, fmt.names)


# Health and route markers after ipvsadm's last column, so its columns stay where
# they are.
_STATE_MARKERS = {"down": "[down]", "sorry": "[sorry]"}
UNREACHABLE_MARKER = "[unreachable]"


def _plain_dest(name: str, dest: DestDict, fmt: ListFormat) -> str:
    word = METHOD_WORDS.get(dest["method"], dest["method"])
    markers = [_STATE_MARKERS.get(dest.get("state", ""), "")]
    if "unreachable" in dest:
        markers.append(UNREACHABLE_MARKER)
    return " ".join(
        [
            f"  -> {name:<28} {word:<7} {dest['weight']:<6} "
            f"{dest['activeconns']:<10} {dest['inactconns']:<10}",
            *filter(None, markers),
        ]
    )


def _stats_dest(name: str, dest: DestDict, fmt: ListFormat) -> str:
    numbers = "".join(largenum(n, fmt.exact) for n in _figures(dest["stats"], _STATS_KEYS))
    return f"  -> {name:<28}{numbers}"


def _rate_dest(name: str, dest: DestDict, fmt: ListFormat) -> str:
    cps, inpps, outpps, inbps, outbps = _figures(dest["stats"], _RATE_KEYS)
    bps = largenum(inbps, fmt.exact) + largenum(outbps, fmt.exact)
    return f"  -> {name:<28} {cps:8d} {inpps:8d} {outpps:8d}{bps}"


def _thresholds_dest(name: str, dest: DestDict, fmt: ListFormat) -> str:
    return (
        f"  -> {name:<28} {dest['u_threshold']:<10} {dest['l_threshold']:<10} "
        f"{dest['activeconns']:<10} {dest['inactconns']:<10}"
    )


def _persistent_dest(name: str, dest: DestDict, fmt: ListFormat) -> str:
    return (
        f"  -> {name:<28} {dest['weight']:<9} {dest['persistconns']:<11} "
        f"{dest['activeconns']:<10} {dest['inactconns']:<10}"
    )


# ipvsadm's tunflags[], the encapsulation flags as --tun-info shows them.
TUN_INFO_FLAGS: dict[str, str] = {"nocsum": "-c", "csum": "+c", "remcsum": "r+c"}


def tun_info(dest: DestDict) -> str:
    """ipvsadm 1.31's fwd_tun_info: ``ipip``, ``gue:PORT:FLAGS``, ``gre:FLAGS`` for a
    tunnel (FLAGS ``-c``, ``+c`` or ``r+c``), ``n/a`` for the other methods."""
    if dest["method"] != "tunnel":
        return "n/a"
    tun_type = dest.get("tun_type", DEFAULT_TUN_TYPE)
    flags = TUN_INFO_FLAGS[dest.get("tun_flags", DEFAULT_TUN_FLAGS)]
    if tun_type == "gue":
        return f"gue:{dest.get('tun_port', 0)}:{flags}"
    if tun_type == "gre":
        return f"gre:{flags}"
    return tun_type


def tunnel_rule(tun_type: str, tun_port: int, tun_flags: str) -> str:
    """What ipvsadm 1.31's print_tunnel_rule prints after a tunnel's ``-w``:
    ``--tun-type ipip``, ``--tun-type gue --tun-port PORT --tun-FLAGS``,
    ``--tun-type gre --tun-FLAGS`` (the checksum option always, --tun-nocsum too)."""
    if tun_type == "gue":
        return f"--tun-type gue --tun-port {tun_port} --tun-{tun_flags}"
    if tun_type == "gre":
        return f"--tun-type gre --tun-{tun_flags}"
    return f"--tun-type {tun_type}"


def _tun_info_dest(name: str, dest: DestDict, fmt: ListFormat) -> str:
    word = METHOD_WORDS.get(dest["method"], dest["method"])
    return (
        f"  -> {name:<28} {word:<7} {tun_info(dest):<13} {dest['weight']:<6} "
        f"{dest['activeconns']:<10} {dest['inactconns']:<10}"
    )


_DEST_ROWS: dict[str, Callable[[str, DestDict, ListFormat], str]] = {
    "plain": _plain_dest,
    "stats": _stats_dest,
    "rate": _rate_dest,
    "thresholds": _thresholds_dest,
    "persistent_conn": _persistent_dest,
    "tun_info": _tun_info_dest,
}


def _dests(svc: ServiceDict, fmt: ListFormat) -> list[DestDict]:
    """Sorted as ipvs_cmp_dests; --nosort: as the snapshot has them, newest first like
    the kernel's list (list_add_rcu at the head)."""
    return list(svc["dests"]) if fmt.nosort else sorted(svc["dests"], key=_dest_order)


def _service_block(svc: ServiceDict, fmt: ListFormat) -> list[str]:
    lines = [_service_row(svc, fmt)]
    row = _DEST_ROWS[fmt.layout]
    proto = _proto(svc)
    lines.extend(row(_dest_name(d, proto, fmt.names), d, fmt) for d in _dests(svc, fmt))
    return lines


# --- the listings -------------------------------------------------------------------


def find_service(snapshot: Snapshot, key: ServiceKey) -> ServiceDict | None:
    for svc in snapshot["services"]:
        if service_key(svc) == key:
            return svc
    return None


def format_list(
    snapshot: Snapshot, fmt: ListFormat | None = None, service: ServiceDict | None = None
) -> str:
    """``ipvsadm -L -n [options]``; with ``service``, ipvsadm's list_service (no header)."""
    fmt = fmt or ListFormat()
    lines: list[str] = []
    if service is None:
        lines.append(
            f"IP Virtual Server version {snapshot['version']} (size={snapshot['conn_tab_size']})"
        )
        services = list(snapshot["services"])
        if not fmt.nosort:
            services.sort(key=_service_order)
    else:
        services = [service]
    text = "".join(f"{line}\n" for line in lines) + _TITLES[fmt.layout]
    body = [line for svc in services for line in _service_block(svc, fmt)]
    return text + "".join(f"{line}\n" for line in body)


def _expire(seconds: float) -> str:
    whole = max(int(seconds), 0)
    return f"{whole // 60:02d}:{whole % 60:02d}"


def _conn_row(conn: ConnDict, names: Names | None = None) -> str:
    # Carried by conntrack on the kernel fast path: not a column of ipvsadm's.
    kernel = " [kernel]" if conn.get("fast") else ""
    proto = conn["protocol"].lower()
    return (
        f"{conn['protocol']:<3} {_expire(conn['expires']):<6} {conn['state']:<11} "
        f"{_any_name(conn['caddr'], conn['cport'], proto, names):<18} "
        f"{_any_name(conn['vaddr'], conn['vport'], proto, names):<18} "
        f"{_any_name(conn['daddr'], conn['dport'], proto, names)}{kernel}"
    )


def format_conns(
    snapshot: Snapshot,
    *,
    header: bool = True,
    persistent: bool = False,
    names: Names | None = None,
) -> str:
    """``ipvsadm -L -n -c``: the connection table with expiry as mm:ss (the header
    once, then the rows of each page the daemon answers).  With ``persistent``
    (``--persistent-conn``) the header has list_conn's persistence-engine columns;
    the rows are the same, print_conn's without a pe name (director has no engine)."""
    columns = f"pro expire {'state':<11} {'source':<18} {'virtual':<18} "
    columns += f"{'destination':<18} {'pe name':<16} pe_data" if persistent else "destination"
    lines = ["IPVS connection entries", columns]
    if not header:
        lines = []
    lines.extend(_conn_row(conn, names) for conn in snapshot["conns"])
    return "".join(f"{line}\n" for line in lines)


def format_timeout(snapshot: Snapshot) -> str:
    """``ipvsadm -L --timeout``."""
    t = snapshot["timeouts"]
    return f"Timeout (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}\n"


def format_json(snapshot: Snapshot | ServiceDict) -> str:
    """``dirctl list --json``: the snapshot itself, for programs."""
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def format_checks(rows: list[dict[str, Any]]) -> str:
    """``dirctl list --checks``: one line per checked real server."""
    lines = [
        f"{'Prot LocalAddress:Port':<28} {'RemoteAddress:Port':<22} {'Check':<6} "
        f"{'State':<8} {'For':>7} {'Fails':>5}  Last error"
    ]
    for row in rows:
        proto, vaddr, vport = row["service"]
        raddr, rport = row["server"]
        if proto == "fwm":
            service = f"FWM  {vport}" + (" IPv6" if vaddr else "")
        else:
            service = f"{str(proto).upper():<4} {addr_port(vaddr, vport)}"
        check = f"{row['type']}{'+vip' if row['via_vip'] else ''}"
        lines.append(
            f"{service:<28} {addr_port(raddr, rport):<22} {check:<6} {row['state']!s:<8} "
            f"{row['for_seconds']!s:>6}s {row['failures']!s:>5}  {row['last_error']}"
        )
    return "".join(f"{line.rstrip()}\n" for line in lines)


def format_daemon(confs: list[dict[str, Any]]) -> str:
    """``ipvsadm -L --daemon`` (ipvsadm 1.28 and later, list_daemon): one line per
    daemon, master first, with the settings the kernel reports (its defaults filled
    in, as start_sync_thread stores them)."""
    lines = []
    for state in ("master", "backup"):
        for conf in confs:
            if conf["state"] != state:
                continue
            line = f"{state} sync daemon (mcast={conf['mcast_ifn']}, syncid={conf['syncid']}"
            if conf.get("sync_maxlen"):
                line += f", maxlen={conf['sync_maxlen']}"
            line += f", group={conf['mcast_group']}"
            if conf.get("mcast_port"):
                line += f", port={conf['mcast_port']}"
            if conf.get("mcast_ttl"):
                line += f", ttl={conf['mcast_ttl']}"
            lines.append(line + ")\n")
    return "".join(lines)


# ipvsadm-save's switch for each method (fwd_switch): the local node is saved as -g.
_RULE_SWITCHES = {"masq": "-m", "tunnel": "-i", "droute": "-g", "local": "-g"}


def _rule_service(svc: ServiceDict, names: Names | None) -> str:
    """print_service_entry's svc_name with FMT_RULE: ``-t VIP:PORT``, ``-f MARK [-6]``."""
    if svc["protocol"] == "FWM":
        return f"-f {svc['fwmark']}" + (" -6" if _is_v6(svc["addr"]) else "")
    switch = "-u" if svc["protocol"] == "UDP" else "-t"
    return f"{switch} {_any_name(svc['addr'], svc['port'], _proto(svc), names)}"


def format_rules(snapshot: Snapshot, names: Names | None = None) -> str:
    """``ipvsadm -S [-n]`` (``ipvsadm-save``) of a snapshot: sorted as the list is,
    ``-A`` with -s, -p, -M (when not the family's full mask), -o and -b, then each
    real server as ``-a ... -r ADDR:PORT -g|-i|-m -w W`` with its tunnel_rule after
    a tunnel's weight; no thresholds and no timeouts, as ipvsadm-save prints none."""
    lines: list[str] = []
    for svc in sorted(snapshot["services"], key=_service_order):
        name = _rule_service(svc, names)
        words = [f"-A {name} -s {svc['scheduler']}"]
        if svc["persistent"] is not None:
            words.append(f"-p {svc['persistent']}")
            default = "128" if _is_v6(svc["addr"]) else "255.255.255.255"
            if svc["netmask"] != default:
                words.append(f"-M {svc['netmask']}")
        if svc["ops"]:
            words.append("-o")
        if svc["sched_flags"]:
            words.append(f"-b {','.join(svc['sched_flags'])}")
        lines.append(" ".join(words))
        for dest in sorted(svc["dests"], key=_dest_order):
            dname = _any_name(dest["addr"], dest["port"], _proto(svc), names)
            line = f"-a {name} -r {dname} {_RULE_SWITCHES[dest['method']]} -w {dest['weight']}"
            if dest["method"] == "tunnel":
                line += " " + tunnel_rule(
                    dest.get("tun_type", DEFAULT_TUN_TYPE),
                    dest.get("tun_port", 0),
                    dest.get("tun_flags", DEFAULT_TUN_FLAGS),
                )
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)

"""The connection table written out and read back, so that a restart drops no
connection: the daemon dumps it at stop and loads it at start.

Each entry names its service and real server by their keys, not by object, and its
time to live rather than a clock reading, so a dump stays good across processes.
Templates come first, so the connections they control can be tied to them again.
Entries whose service or real server is gone are left out (and counted).  The same
dumps carry entries from one worker to another when the shards change
(director.shell.daemon).

An application helper's control connection (director.core.app) carries its helper's
word and its sequence adjustments (``app``: app_data, in_seq, out_seq and their
flags), so the packets after a restart keep their numbers moved as before; its data
connections name it as their controller, and one still waiting for its client's port
says so (``no_cport``).  Controllers (templates, control connections) are dumped
before what they control: templates first, connections oldest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from director.core.app import AppConn, new_conn
from director.core.conn import Conn, Controller
from director.core.engine import Director
from director.core.persist import new_template
from director.core.proto_tcp import STATE_ACTIVE
from director.core.service import Dest, Service, pack_addr, unpack_addr
from director.core.xmit import bind_xmit

FORMAT = 1


def _service_key(svc: Service) -> list[Any]:
    proto, addr, port = svc.key
    return [proto, unpack_addr(addr) if addr else "", port]


def _entry(conn: Conn, now: float) -> dict[str, Any]:
    control = conn.control
    return {
        "template": conn.template,
        "protocol": conn.protocol,
        "caddr": unpack_addr(conn.caddr),
        "cport": conn.cport,
        "vaddr": conn.vaddr.hex(),  # fwmark templates carry the mark here, not an address
        "vport": conn.vport,
        "dport": conn.dport,
        "service": _service_key(conn.svc),
        "dest": [unpack_addr(conn.dest.addr), conn.dest.port],
        "state": conn.state,
        "ttl": max(0.0, conn.expires - now),
        "timeout": conn.timeout,
        "nooutput": conn.nooutput,
        "control": None if control is None else _key(control),
        "control_template": control is None or control.template,
        **_app_state(conn),
    }


def _app_state(conn: Conn) -> dict[str, Any]:
    if not isinstance(conn, AppConn):
        return {}
    return {
        "app": [conn.app.name, conn.app_data, list(conn.in_seq), list(conn.out_seq),
                conn.seq_flags],
    }  # fmt: skip


def _key(conn: Conn) -> list[Any]:
    protocol, caddr, cport, vaddr, vport = conn.in_key
    return [protocol, caddr.hex(), cport, vaddr.hex(), vport]


def dump(
    director: Director, now: float, only: Callable[[Conn], bool] | None = None
) -> dict[str, Any]:
    """The table (with ``only``, the entries it accepts), templates first."""
    conns = director.conns
    templates = [t for t in conns.templates.values() if only is None or only(t)]
    entries = [_entry(t, now) for t in templates]
    for c in conns.in_tab.values():
        if only is None or only(c):
            entry = _entry(c, now)
            entry["no_cport"] = c in conns.no_cport
            entries.append(entry)
    return {"format": FORMAT, "conns": entries}


def drop(director: Director, which: Callable[[Conn], bool]) -> int:
    """Remove the entries ``which`` accepts (handed to another worker): connections
    first, then the templates, which then control none of them.  Returns how many."""
    conns = director.conns
    leaving = [c for c in conns.in_tab.values() if which(c)]
    leaving += [t for t in conns.templates.values() if which(t)]
    for conn in leaving:
        conns.remove(conn)
    return len(leaving)


def load(director: Director, data: dict[str, Any], now: float) -> tuple[int, int]:
    """Put dumped connections back; returns (restored, left out)."""
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown connection dump format {data.get('format')!r}")
    restored = skipped = 0
    controllers: dict[tuple[Any, ...], Controller] = {}
    for entry in data["conns"]:
        found = _find(director, entry)
        if found is None:
            skipped += 1
            continue
        svc, dest = found
        conn = _rebuild(director, entry, svc, dest, now)
        control = None
        if entry["control"]:
            is_template = entry.get("control_template", True)
            control = controllers.get((is_template, *entry["control"]))
        director.conns.add(conn, control, no_cport=entry.get("no_cport", False))
        if not conn.template and conn.protocol == 6 and STATE_ACTIVE[conn.state]:
            dest.inactconns -= 1  # add() counts a new connection inactive
            dest.activeconns += 1
            conn.inactive = False
        if isinstance(conn, Controller):
            controllers[(conn.template, *_key(conn))] = conn
        restored += 1
    return restored, skipped


def _find(director: Director, entry: dict[str, Any]) -> tuple[Service, Dest] | None:
    proto, addr, port = entry["service"]
    svc = director.services.services.get((proto, pack_addr(addr) if addr else b"", port))
    if svc is None:
        return None
    daddr, dport = entry["dest"]
    dest = svc.find_dest(pack_addr(daddr), dport)
    return None if dest is None else (svc, dest)


def _rebuild(
    director: Director, entry: dict[str, Any], svc: Service, dest: Dest, now: float
) -> Conn:
    protocol = entry["protocol"]
    caddr = pack_addr(entry["caddr"])
    vaddr = bytes.fromhex(entry["vaddr"])
    conn: Conn
    if entry["template"]:
        key = (protocol, caddr, 0, vaddr, entry["vport"])
        conn = new_template(director.protocols.get(protocol, director.tcp), key, svc, dest,
                            bind_xmit(dest), now)  # fmt: skip
        conn.state = entry["state"]  # NONE or ASSURED
    else:
        conn = new_conn(
            director, director.protocols[protocol], protocol, caddr, entry["cport"], vaddr,
            entry["vport"], svc, dest, bind_xmit(dest), dport=entry["dport"],
        )  # fmt: skip
        conn.state = entry["state"]
        conn.nooutput = entry["nooutput"]
        state = entry.get("app")
        if isinstance(conn, AppConn) and state is not None and state[0] == conn.app.name:
            conn.app_data = state[1]
            conn.in_seq = (state[2][0], state[2][1], state[2][2])
            conn.out_seq = (state[3][0], state[3][1], state[3][2])
            conn.seq_flags = state[4]
    conn.timeout = entry["timeout"]
    conn.expires = now + entry["ttl"]
    return conn

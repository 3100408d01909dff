"""The read-only status page at ``/`` of ``--metrics-listen``, and ``/status.json``.

What HAProxy's stats page is to HAProxy, for the tables ``ipvsadm -Ln`` lists: every
virtual service and real server (method, effective and configured weight, health
state and last check error, ActiveConn / InActConn, the counters and rates of
``list --stats`` / ``--rate``), then the director's own health (connection-table
entries against the cap, drops by reason, queue drops, the DoS defences, worker
restarts, the sync daemons).

The data comes from the metrics ``Sample`` (director.shell.metrics), which the
daemon's loop builds once a tick and publishes by one reference assignment: while
the page is watched (``Watch``) the loop adds ``rows()`` to it, the services and real
servers in ``dirctl list --json``'s shape (``director.ctl.report``) with health and
the configured weights, built afresh each tick and never changed after.  A page view
only reads the sample it finds: it never walks the connection table, never touches
the core, and changes nothing (GET and HEAD only; there is no control through HTTP).

The page has no external assets (inline CSS, a meta refresh), a Content-Security-
Policy that forbids loading any, and every text it prints goes through
``html.escape``: a check's command, Host header or error text, an address (IPv4 or
IPv6 text) are data, never markup.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from director.core.engine import Director
from director.ctl.report import service_dict, stats_dict
from director.health.manager import HealthManager
from director.model.config import Config
from director.model.health import CheckConf
from director.shell.metrics import Sample
from director.shell.sync import SyncDaemon

REFRESH = 2  # seconds: the estimator's period, so every view shows new rates

# ipvsadm's "Forward" column (ipvsadm.c fwd_name).
FORWARD = {"masq": "Masq", "droute": "Route", "tunnel": "Tunnel", "local": "Local"}
STATS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
RATES = ("cps", "inpps", "outpps", "inbps", "outbps")
# The kernel's own queue drops (nfnetlink_queue.c: queue_dropped, queue_user_dropped).
QUEUE_DROPS = ("kernel_dropped", "kernel_user_dropped")


# --- what the loop adds to the sample ---------------------------------------------------


def rows(
    director: Director, config: Config, health: HealthManager, sync: SyncDaemon
) -> dict[str, Any]:
    """The services as ``list --json`` has them, each real server with its health
    (state, check, last error) and the weight the operator configured beside the
    weight in force; the totals; the sync daemons that run.  Reads the services and
    real servers only (never a connection entry).

    Only health makes the two weights differ (a failed check quiesces,
    director.health.effective), so the configuration is read for checked real servers
    and sorry servers alone: the tick pays little beyond ``service_dict``."""
    touched = bool(health.states) or bool(config.health.policies)
    configured = {svc.key: svc for svc in config.services} if touched else {}
    services: list[dict[str, Any]] = []
    for svc in director.services:
        row: dict[str, Any] = dict(service_dict(svc))  # fresh dicts: ours to add to
        skey = svc.conf.key
        for dest in row["dests"]:
            dest["conf_weight"] = dest["weight"]
            if not touched:
                continue
            dkey = (dest["addr"], dest["port"])
            state = health.dest_state(skey, dkey)
            if state is None:
                continue
            dest["state"] = state
            conf = configured.get(skey)
            dest["conf_weight"] = next(
                (d.weight for d in (conf.dests if conf else ()) if d.key == dkey), dest["weight"]
            )
            check = health.states.get((skey, dkey))
            target = health.targets.get((skey, dkey))
            if check is not None and target is not None:
                dest["check"] = _check(target.check, target.addr, target.port)
                dest["last_error"] = check.last_error
        services.append(row)
    return {
        "services": services,
        "totals": dict(stats_dict(director.totals)),
        "sync": [conf.as_dict() for conf in sync.confs()],
        "sync_counts": dict(sorted(sync.counts().items())),
    }


def _check(check: CheckConf, addr: str, port: int) -> dict[str, Any]:
    """What the page says of a check: its type and target, and the operator's text
    (HTTP path and Host header, the misc command)."""
    kind = check.kind
    shown: dict[str, Any] = {"type": kind, "target": [addr, port]}
    if kind in ("http", "https"):
        shown["path"] = check.path
        if check.host:
            shown["host"] = check.host
    if kind == "misc":
        shown["command"] = check.command
    return shown


# --- the page's data, from one sample ---------------------------------------------------


def data(sample: Sample) -> dict[str, Any]:
    """``/status.json``: the sample's rows and the director's health, one document."""
    rows = dict(sample.status)
    queues = [{"queue": queue, **counts} for queue, counts in sample.queues]
    return {
        "services": rows.get("services", []),
        "totals": rows.get("totals", {}),
        "director": {
            "conn_entries": sample.conn_entries,
            "conn_limit": sample.conn_limit,
            "drops": dict(sample.drops),
            "queue_drops": sum(q.get(k, 0) for q in queues for k in QUEUE_DROPS),
            "queues": queues,
            "defenses": dict(sample.defenses),
            "drop_rate": sample.drop_rate,
            "worker_restarts": sample.restarts,
            "worker_errors": dict(sample.worker_errors),
            "loop_errors": dict(sample.loop_errors),
        },
        "sync": rows.get("sync", []),
        "sync_counts": rows.get("sync_counts", {}),
    }


# --- the HTML ---------------------------------------------------------------------------

_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin-bottom:.8em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#e8e8e8}td.t,th.t{text-align:left}
tr.service td{background:#dde6f0;font-weight:bold}
tr.up td.state{background:#cfc}tr.down td.state{background:#f99}
tr.unknown td.state{background:#eee}tr.sorry td.state{background:#fd8}
td.wrap{white-space:normal;max-width:24em;text-align:left;overflow-wrap:anywhere}
td.error{color:#a00}
.off{color:#888}.on{color:#a00;font-weight:bold}
"""

_DEST_HEAD = (
    ("t", "Real server"), ("t", "Forward"), ("", "Weight"), ("", "Configured"),
    ("t", "State"), ("t", "Check"), ("t", "Last error"), ("", "ActiveConn"),
    ("", "InActConn"), ("", "Conns"), ("", "InPkts"), ("", "OutPkts"), ("", "InBytes"),
    ("", "OutBytes"), ("", "CPS"), ("", "InPPS"), ("", "OutPPS"), ("", "InBPS"),
    ("", "OutBPS"),
)  # fmt: skip


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(key: str, value: object, cls: str = "") -> str:
    klass = f' class="{_e(cls)}"' if cls else ""
    return f'<td data-key="{_e(key)}"{klass}>{_e(value)}</td>'


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def service_name(svc: Mapping[str, Any]) -> str:
    """As ipvsadm -Ln names it (print_service_entry): ``TCP  203.0.113.5:80``, IPv6 in
    brackets, ``FWM  1``, ``FWM  1 IPv6``."""
    if svc["protocol"] == "FWM":
        return f"FWM  {svc['fwmark']}" + (" IPv6" if ":" in svc["addr"] else "")
    return f"{svc['protocol']}  {_hostport(svc['addr'], svc['port'])}"


def _check_text(check: Mapping[str, Any] | None) -> str:
    if not check:
        return ""
    parts = [str(check["type"])]
    for key in ("host", "path", "command"):
        if key in check:
            parts.append(f"{key}={check[key]}")
    return " ".join(parts)


def _stats_cells(stats: Mapping[str, Any]) -> str:
    return "".join(_cell(k, stats.get(k, 0)) for k in (*STATS, *RATES))


def _service_rows(svc: Mapping[str, Any]) -> Iterable[str]:
    name = service_name(svc)
    extra = [svc["scheduler"]]
    if svc.get("persistent") is not None:
        extra.append(f"persistent {svc['persistent']}")
    extra += svc.get("sched_flags", [])
    yield (
        f'<tr class="service" data-service="{_e(name)}">'
        f'<td class="t" data-key="service">{_e(name)}</td>'
        f'<td class="t" colspan="8" data-key="scheduler">{_e(" ".join(extra))}</td>'
        f"{_stats_cells(svc['stats'])}</tr>"
    )
    for dest in svc["dests"]:
        state = dest.get("state", "")
        where = _hostport(dest["addr"], dest["port"])
        error = dest.get("last_error", "")
        if "unreachable" in dest:
            error = f"unreachable: {dest['unreachable']}" + (f"; {error}" if error else "")
        yield (
            f'<tr class="dest {_e(state)}" data-service="{_e(name)}" data-dest="{_e(where)}">'
            + _cell("dest", where, "t")
            + _cell("method", FORWARD.get(dest["method"], dest["method"]), "t")
            + _cell("weight", dest["weight"])
            + _cell("conf_weight", dest.get("conf_weight", dest["weight"]))
            + _cell("state", state or "-", "t state")
            + _cell("check", _check_text(dest.get("check")), "wrap")
            + _cell("last_error", error, "wrap error")
            + _cell("activeconns", dest["activeconns"])
            + _cell("inactconns", dest["inactconns"])
            + _stats_cells(dest["stats"])
            + "</tr>"
        )


def _pairs(title: str, key: str, items: Mapping[str, Any]) -> str:
    body = "".join(
        f'<tr data-{_e(key)}="{_e(name)}"><td class="t">{_e(name)}</td>{_cell(key, value)}</tr>'
        for name, value in items.items()
    )
    if not body:
        body = '<tr><td class="t off" colspan="2">none</td></tr>'
    return f'<h2>{_e(title)}</h2><table id="{_e(key)}">{body}</table>'


def _director(status: Mapping[str, Any]) -> str:
    d = status["director"]
    limit = d["conn_limit"]
    share = f" ({100 * d['conn_entries'] / limit:.1f}%)" if limit else ""
    defenses = " ".join(
        f'<span data-defense="{_e(n)}" class="{"on" if on else "off"}">{_e(n)}</span>'
        for n, on in d["defenses"].items()
    )
    facts = (
        ("conn_entries", "Connection entries", f"{d['conn_entries']}{share}"),
        ("conn_limit", "Entries cap", limit or "none"),
        ("queue_drops", "Queue drops (kernel)", d["queue_drops"]),
        ("drop_rate", "drop_packet rate", d["drop_rate"] or "off"),
        ("worker_restarts", "Worker restarts", d["worker_restarts"]),
    )
    body = "".join(
        f'<tr><th class="t">{_e(label)}</th>{_cell(key, value)}</tr>' for key, label, value in facts
    )
    body += f'<tr><th class="t">Defences</th><td data-key="defenses">{defenses}</td></tr>'
    sync = "".join(
        f'<tr data-sync="{_e(conf["state"])}"><td class="t">{_e(conf["state"])}</td>'
        f'<td class="t">{_e(conf["mcast_ifn"])}</td><td>{_e(conf["syncid"])}</td></tr>'
        for conf in status["sync"]
    )
    sync_table = (
        '<h2>Sync daemons</h2><table id="sync"><tr><th class="t">State</th>'
        f'<th class="t">Interface</th><th>syncid</th></tr>{sync}</table>'
        + _pairs("Sync counters", "sync_count", status["sync_counts"])
        if sync
        else '<h2>Sync daemons</h2><p class="off" id="sync">none running</p>'
    )
    return (
        f'<h2>Director</h2><table id="director">{body}</table>'
        + _pairs("Drops by reason", "drop", d["drops"])
        + _pairs("Worker errors", "worker_error", d["worker_errors"])
        + _pairs("Loop errors", "loop_error", d["loop_errors"])
        + sync_table
    )


def render(status: Mapping[str, Any]) -> str:
    """The whole page, from ``data()``'s document."""
    head = "".join(f'<th class="{c}">{_e(t)}</th>' for c, t in _DEST_HEAD)
    services = "".join(row for svc in status["services"] for row in _service_rows(svc))
    if not services:
        services = f'<tr><td class="t off" colspan="{len(_DEST_HEAD)}">no virtual service</td></tr>'
    totals = status["totals"]
    total_row = (
        f'<tr id="totals"><td class="t" colspan="9">All services</td>{_stats_cells(totals)}</tr>'
        if totals
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH}">'
        '<meta name="viewport" content="width=device-width">'
        f"<title>director status</title><style>{_CSS}</style></head><body>"
        "<h1>director</h1>"
        f'<p class="off">Refreshed every {REFRESH} s; the same data as '
        '<a href="status.json">status.json</a> and <a href="metrics">metrics</a>.</p>'
        f'<table id="services"><tr>{head}</tr>{services}{total_row}</table>'
        + _director(status)
        + "</body></html>\n"
    )


# --- HTTP -------------------------------------------------------------------------------

# No asset of any kind from anywhere; inline style only.
HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
]

Headers = list[tuple[str, str]]
Page = Callable[[Callable[[], Sample]], tuple[Headers, bytes]]

WATCHED = 10.0  # seconds after a view during which the loop keeps adding the rows
WAIT = 3.0  # at most this long the first view after a while waits for them


class Watch:
    """When the page was last asked for (time.monotonic()): the HTTP thread sets it,
    the loop reads it and adds ``rows()`` to its sample only while the page is
    watched, so a page nobody looks at costs the tick nothing.  One float, assigned
    whole."""

    def __init__(self) -> None:
        self.asked = -math.inf

    def watched(self, now: float) -> bool:
        return now - self.asked < WATCHED

    def sample(self, latest: Callable[[], Sample]) -> Sample:
        """The latest sample, with the rows in: the first view after a while waits
        for the loop's next tick (at most ``WAIT``; a stuck loop gets a page without
        services, and its restarts and errors)."""
        self.asked = time.monotonic()
        sample = latest()
        deadline = self.asked + WAIT
        while not sample.status and time.monotonic() < deadline:
            time.sleep(0.05)
            sample = latest()
        return sample


def html_page(sample: Sample) -> tuple[Headers, bytes]:
    return [("Content-Type", "text/html; charset=utf-8"), *HEADERS], render(data(sample)).encode()


def json_page(sample: Sample) -> tuple[Headers, bytes]:
    body = json.dumps(data(sample), indent=1).encode() + b"\n"
    return [("Content-Type", "application/json"), *HEADERS], body


def pages(watch: Watch) -> dict[str, Page]:
    """The listener's routes besides /metrics, each of the latest watched sample."""
    return {
        "/": lambda latest: html_page(watch.sample(latest)),
        "/status.json": lambda latest: json_page(watch.sample(latest)),
    }

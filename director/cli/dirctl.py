"""dirctl: ipvsadm's commands as verbs, spoken to directord over its control socket.

``dirctl add-service -t 203.0.113.5:80 -s rr`` is ``ipvsadm -A -t 203.0.113.5:80 -s rr``;
every option letter is ipvsadm's (SPEC §2).  Option values are parsed by the same
helpers that read ipvsadm-save files (``director.ctl.ipvsadm``), checked here where
that is cheap and checked again by the daemon, which applies the change atomically.

Exit status: 0 done; 2 bad input of any kind, with one line ``dirctl: <reason>`` on
stderr (usage errors too); 3 the daemon is unreachable, with a hint; 1 the daemon
failed.

Sub-apps: ``app`` is a plain Typer app, so other parts of director add their verbs
with ``app.add_typer(...)`` at the bottom of this module (see "Sub-apps").
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from director.cli import syncopts
from director.ctl import listing, protocol
from director.ctl.health_rules import parse_words
from director.ctl.ipvsadm import (
    RawArgs,
    build_op,
    expand_bare_options,
    parse_addr_port,
    parse_restore,
    parse_service_key,
    pick_one,
)
from director.ctl.ops import ServiceKey
from director.ctl.protocol import DEFAULT_SOCKET, DaemonFailed, DaemonUnreachable
from director.model.config import ConfigError
from director.model.sync import STATES as SYNC_STATES
from director.model.sync import parse_daemon

app = typer.Typer(
    name="dirctl",
    help="Administer directord's virtual services, with ipvsadm's options.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=False,
    invoke_without_command=True,
)


@dataclass(frozen=True, slots=True)
class Settings:
    socket: str
    timeout: float = 10.0


# --- options shared by the verbs (ipvsadm's letters) --------------------------------

Tcp = Annotated[
    str | None, typer.Option("-t", "--tcp-service", metavar="VIP[:PORT]", help="TCP service")
]
Udp = Annotated[
    str | None, typer.Option("-u", "--udp-service", metavar="VIP[:PORT]", help="UDP service")
]
Fwm = Annotated[
    str | None, typer.Option("-f", "--fwmark-service", metavar="MARK", help="firewall mark")
]
Six = Annotated[bool, typer.Option("-6", "--ipv6", help="with -f: an IPv6 firewall-mark service")]
Scheduler = Annotated[str | None, typer.Option("-s", "--scheduler", help="scheduler (default wlc)")]
Persistent = Annotated[
    str | None,
    typer.Option("-p", "--persistent", metavar="[SECONDS]", help="persistence (bare: 360)"),
]
Netmask = Annotated[
    str | None, typer.Option("-M", "--netmask", help="persistence granularity mask")
]
SchedFlags = Annotated[
    str | None, typer.Option("-b", "--sched-flags", help="scheduler flags, comma-separated")
]
Ops = Annotated[bool, typer.Option("-o", "--ops", help="one-packet scheduling (UDP)")]
Real = Annotated[
    str | None, typer.Option("-r", "--real-server", metavar="ADDR[:PORT]", help="real server")
]
Gate = Annotated[bool, typer.Option("-g", "--gatewaying", help="direct routing (default)")]
Ipip = Annotated[bool, typer.Option("-i", "--ipip", help="IPIP tunnelling")]
Masq = Annotated[bool, typer.Option("-m", "--masquerading", help="NAT")]
Weight = Annotated[str | None, typer.Option("-w", "--weight", help="weight (default 1)")]
Upper = Annotated[str | None, typer.Option("-x", "--u-threshold", help="upper conn threshold")]
Lower = Annotated[str | None, typer.Option("-y", "--l-threshold", help="lower conn threshold")]
TunType = Annotated[
    str | None, typer.Option("--tun-type", help="with -i: ipip (default), gue or gre")
]
TunPort = Annotated[str | None, typer.Option("--tun-port", help="GUE's UDP destination port")]
TunNocsum = Annotated[bool, typer.Option("--tun-nocsum", help="tunnel without checksum")]
TunCsum = Annotated[bool, typer.Option("--tun-csum", help="tunnel with checksum")]
TunRemcsum = Annotated[bool, typer.Option("--tun-remcsum", help="GUE with remote checksum offload")]


def _service(t: str | None, u: str | None, f: str | None) -> tuple[str, str] | None:
    return pick_one("service-address", [("tcp", t), ("udp", u), ("fwm", f)])


def _method(g: bool, i: bool, m: bool) -> str | None:
    letters = [(letter, letter if on else None) for letter, on in (("g", g), ("i", i), ("m", m))]
    chosen = pick_one("forwarding-method", letters)
    return chosen[0] if chosen else None


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def _ask(ctx: typer.Context, command: str, args: dict[str, Any] | None = None) -> Any:
    settings = _settings(ctx)
    return protocol.request(settings.socket, command, args or {}, settings.timeout)


def _conn_pages(ctx: typer.Context) -> Iterator[Any]:
    """``list -c`` page after page: the daemon answers at most a page of the
    connection table per request (director.ctl.report.CONN_PAGE)."""
    offset = 0
    while True:
        page = _ask(ctx, "list", {"conns": True, "offset": offset})
        yield page
        following = page.get("conns_next")
        if not isinstance(following, int) or following <= offset:
            return
        offset = following


def _change(ctx: typer.Context, command: str, raw: RawArgs) -> None:
    """Parse with the shared ipvsadm helpers, then let the daemon apply the op."""
    name, args = protocol.encode_op(build_op(command, raw))
    _ask(ctx, name, args)


@app.callback()
def _root(
    ctx: typer.Context,
    socket: Annotated[
        str,
        typer.Option("--socket", envvar="DIRECTOR_SOCKET", help="directord's control socket"),
    ] = DEFAULT_SOCKET,
) -> None:
    ctx.obj = Settings(socket=socket)
    if ctx.invoked_subcommand is None:
        raise ConfigError("no command given (try 'dirctl --help')")


# --- virtual services ---------------------------------------------------------------


def _service_args(
    t: str | None,
    u: str | None,
    f: str | None,
    six: bool,
    s: str | None,
    p: str | None,
    mask: str | None,
    b: str | None,
    o: bool,
) -> RawArgs:
    return RawArgs(
        service=_service(t, u, f),
        scheduler=s,
        persistent=p,
        netmask=mask,
        sched_flags=b,
        ops=o,
        ipv6=six,
    )


def _service_key(t: str | None, u: str | None, f: str | None, six: bool) -> ServiceKey | None:
    """The service selected by -t/-u/-f [-6], or None for none."""
    chosen = _service(t, u, f)
    if chosen is None:
        if six:
            raise ConfigError("-6 used before -f")
        return None
    return parse_service_key(*chosen, ipv6=six)


def _service_verb(command: str, doc: str) -> None:
    """add-service and edit-service take the same options (ipvsadm -A and -E)."""

    def verb(
        ctx: typer.Context,
        t: Tcp = None,
        u: Udp = None,
        f: Fwm = None,
        six: Six = False,
        s: Scheduler = None,
        p: Persistent = None,
        mask: Netmask = None,
        b: SchedFlags = None,
        o: Ops = False,
    ) -> None:
        _change(ctx, command, _service_args(t, u, f, six, s, p, mask, b, o))

    verb.__doc__ = doc
    app.command(command)(verb)


_service_verb("add-service", "ipvsadm -A: add a virtual service.")
_service_verb(
    "edit-service", "ipvsadm -E: replace a service's settings (omitted ones take their defaults)."
)


@app.command("delete-service")
def delete_service(
    ctx: typer.Context, t: Tcp = None, u: Udp = None, f: Fwm = None, six: Six = False
) -> None:
    """ipvsadm -D: delete a virtual service and its real servers."""
    _change(ctx, "delete-service", RawArgs(service=_service(t, u, f), ipv6=six))


# --- real servers -------------------------------------------------------------------


def _server_verb(command: str, doc: str) -> None:
    """add-server and edit-server take the same options (ipvsadm -a and -e)."""

    def verb(
        ctx: typer.Context,
        t: Tcp = None,
        u: Udp = None,
        f: Fwm = None,
        six: Six = False,
        r: Real = None,
        g: Gate = False,
        i: Ipip = False,
        m: Masq = False,
        w: Weight = None,
        x: Upper = None,
        y: Lower = None,
        tun_type: TunType = None,
        tun_port: TunPort = None,
        tun_nocsum: TunNocsum = False,
        tun_csum: TunCsum = False,
        tun_remcsum: TunRemcsum = False,
    ) -> None:
        raw = RawArgs(_service(t, u, f), real_server=r, method=_method(g, i, m), ipv6=six)
        raw.weight, raw.u_threshold, raw.l_threshold = w, x, y
        raw.tun_type, raw.tun_port = tun_type, tun_port
        raw.tun_nocsum, raw.tun_csum, raw.tun_remcsum = tun_nocsum, tun_csum, tun_remcsum
        _change(ctx, command, raw)

    verb.__doc__ = doc
    app.command(command)(verb)


_server_verb("add-server", "ipvsadm -a: add a real server to a service.")
_server_verb(
    "edit-server", "ipvsadm -e: change a real server; options not given keep their values."
)


@app.command("delete-server")
def delete_server(
    ctx: typer.Context,
    t: Tcp = None,
    u: Udp = None,
    f: Fwm = None,
    six: Six = False,
    r: Real = None,
) -> None:
    """ipvsadm -d: remove a real server from a service."""
    _change(ctx, "delete-server", RawArgs(_service(t, u, f), real_server=r, ipv6=six))


# --- the whole table ----------------------------------------------------------------


@app.command("clear")
def clear(ctx: typer.Context) -> None:
    """ipvsadm -C: delete every virtual service."""
    _change(ctx, "clear", RawArgs())


@app.command("set-timeout")
def set_timeout(
    ctx: typer.Context,
    tcp: Annotated[str, typer.Argument(help="ESTABLISHED timeout, 0 keeps it")],
    tcpfin: Annotated[str, typer.Argument(help="FIN_WAIT timeout, 0 keeps it")],
    udp: Annotated[str, typer.Argument(help="UDP timeout, 0 keeps it")],
) -> None:
    """ipvsadm --set TCP TCPFIN UDP (seconds)."""
    _change(ctx, "set-timeout", RawArgs(timeouts=(tcp, tcpfin, udp)))


@app.command("zero")
def zero(ctx: typer.Context, t: Tcp = None, u: Udp = None, f: Fwm = None, six: Six = False) -> None:
    """ipvsadm -Z: zero the counters of one service, or of all."""
    key = _service_key(t, u, f, six)
    _ask(ctx, "zero", {"service": list(key) if key else None})


@app.command("save")
def save(
    ctx: typer.Context,
    numeric: Annotated[bool, typer.Option("-n", "--numeric", help="numeric (always)")] = False,
    checks: Annotated[
        bool, typer.Option("--checks", help="add the health checks as # director- lines")
    ] = False,
) -> None:
    """ipvsadm -S: print the rules as ipvsadm-save lines."""
    typer.echo(_ask(ctx, "save", {"checks": True} if checks else {}), nl=False)


@app.command("restore")
def restore(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Argument(help="ipvsadm-save file (default: stdin)", show_default=False)
    ] = None,
) -> None:
    """ipvsadm -R: add the rules of an ipvsadm-save file; nothing if any line is bad."""
    try:
        text = file.read_text() if file is not None else sys.stdin.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    parse_restore(text)  # name a bad line before bothering the daemon
    _ask(ctx, "restore", {"text": text})


# --- listing ------------------------------------------------------------------------

# ipvsadm's '1' options of the list command: at most one of them.
_EXCLUSIVE = ("connection", "service-address", "timeout")


def _check_list_options(chosen: dict[str, bool], layout: listing.ListFormat) -> None:
    """ipvsadm's generic_opt_check and "options conflicts" rules for -L."""
    given = [name for name in _EXCLUSIVE if chosen[name]]
    if len(given) > 1:
        raise ConfigError(
            f"The option '{given[1]}' conflicts with the '{given[0]}' option in the 'list' command"
        )
    numbers = layout.stats or layout.rate or layout.thresholds
    if ((chosen["connection"] or chosen["timeout"]) and numbers) or (
        chosen["timeout"] and layout.persistent_conn
    ):
        raise ConfigError("options conflicts in the list command")


@app.command("list")
def list_(
    ctx: typer.Context,
    t: Tcp = None,
    u: Udp = None,
    f: Fwm = None,
    six: Six = False,
    numeric: Annotated[bool, typer.Option("-n", "--numeric", help="numeric (always)")] = False,
    connection: Annotated[bool, typer.Option("-c", "--connection", help="connections")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="statistics")] = False,
    rate: Annotated[bool, typer.Option("--rate", help="rates")] = False,
    thresholds: Annotated[bool, typer.Option("--thresholds", help="thresholds")] = False,
    persistent_conn: Annotated[
        bool, typer.Option("--persistent-conn", help="persistent connections")
    ] = False,
    timeout: Annotated[bool, typer.Option("--timeout", help="timeouts")] = False,
    tun_info: Annotated[bool, typer.Option("--tun-info", help="tunnel information")] = False,
    exact: Annotated[bool, typer.Option("--exact", help="exact numbers")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the snapshot as JSON")] = False,
    checks: Annotated[bool, typer.Option("--checks", help="health checks and states")] = False,
    daemon: Annotated[bool, typer.Option("--daemon", help="the sync daemons")] = False,
) -> None:
    """ipvsadm -L: list the table (addresses are always numeric)."""
    key: ServiceKey | None = _service_key(t, u, f, six)
    if daemon:
        rows = _ask(ctx, "daemon")
        typer.echo(
            json.dumps(rows, indent=2) + "\n" if as_json else listing.format_daemon(rows), nl=False
        )
        return
    if checks:
        rows = _ask(ctx, "checks")
        if key is not None:
            wanted = list(key)
            rows = [row for row in rows if row["service"] == wanted]
        text = json.dumps(rows, indent=2) + "\n" if as_json else listing.format_checks(rows)
        typer.echo(text, nl=False)
        return
    layout = listing.ListFormat(stats, rate, thresholds, persistent_conn, exact, tun_info)
    flags = {"connection": connection, "service-address": key is not None, "timeout": timeout}
    _check_list_options(flags, layout)
    if connection:
        pages = _conn_pages(ctx)
        if as_json:  # one snapshot with every page's entries
            snapshot = next(pages)
            for page in pages:
                snapshot["conns"].extend(page["conns"])
            snapshot.pop("conns_next", None)
            typer.echo(listing.format_json(snapshot), nl=False)
        else:  # printed as they come: a million entries never sit in memory at once
            for number, page in enumerate(pages):
                text = listing.format_conns(page, header=number == 0, persistent=persistent_conn)
                typer.echo(text, nl=False)
        return
    snapshot = _ask(ctx, "list", {"conns": False})
    service = listing.find_service(snapshot, key) if key else None
    if key and service is None:
        raise ConfigError("No such service")
    if as_json:
        typer.echo(listing.format_json(service or snapshot), nl=False)
    elif timeout:
        typer.echo(listing.format_timeout(snapshot), nl=False)
    else:
        typer.echo(listing.format_list(snapshot, layout, service), nl=False)


# --- the connection sync daemon (ipvsadm --start-daemon) ------------------------------


@app.command("start-daemon")
def start_daemon(
    ctx: typer.Context,
    state: Annotated[str, typer.Argument(help="master or backup")],
    mcast_interface: syncopts.McastInterface = None,
    syncid: syncopts.SyncId = None,
    sync_maxlen: syncopts.SyncMaxlen = None,
    mcast_group: syncopts.McastGroup = None,
    mcast_port: syncopts.McastPort = None,
    mcast_ttl: syncopts.McastTtl = None,
) -> None:
    """ipvsadm --start-daemon: sync connections to backups (master) or from a master
    (backup); both may run.  Kept by directord across restarts."""
    conf = parse_daemon(syncopts.given(
        state=state, mcast_interface=mcast_interface, syncid=syncid, sync_maxlen=sync_maxlen,
        mcast_group=mcast_group, mcast_port=mcast_port, mcast_ttl=mcast_ttl,
    ))  # fmt: skip
    _ask(ctx, "start-daemon", conf.as_dict())


@app.command("stop-daemon")
def stop_daemon(
    ctx: typer.Context, state: Annotated[str, typer.Argument(help="master or backup")]
) -> None:
    """ipvsadm --stop-daemon: stop the master or the backup sync daemon."""
    if state not in SYNC_STATES:
        raise ConfigError(f"daemon state must be master or backup, not {state!r}")
    _ask(ctx, "stop-daemon", {"state": state})


@app.command("top")
def top(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="draw one frame and exit")] = False,
    iterations: Annotated[
        int | None, typer.Option("--iterations", min=1, help="draw N frames and exit")
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="seconds between frames")
    ] = 1.0,
) -> None:
    """Live view of services and real servers, busiest first (q or Ctrl-C quits)."""
    from director.cli import top as live

    live.run(
        lambda: _ask(ctx, "list", {"conns": False}),
        interval=interval,
        iterations=1 if once else iterations,
    )


# --- health checks (director.health) ----------------------------------------------

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
_CHECK_HELP = """
    Options: -t/-u/-f SERVICE, -r ADDR[:PORT] (without: the default of every real
    server of the service), --type tcp|http|https|misc, --port N, --path /url,
    --status 200[,301], --digest MD5, --contains TEXT, --host NAME, --command CMD,
    --interval S (5), --timeout S (3), --rise N (1), --fall N (1), --retry N (0),
    --retry-delay S (1), --warmup S (0), --via-vip (DR/TUN: probe VIP:port through
    the real server's path), --on-failure quiesce|remove (quiesce).
"""


def _health(ctx: typer.Context, verb: str) -> None:
    words = list(ctx.args)
    parse_words(verb, words)  # name a bad option before bothering the daemon
    _ask(ctx, verb, {"words": words})


@app.command("add-check", context_settings=_PASS_THROUGH, help="Add a health check." + _CHECK_HELP)
def add_check(ctx: typer.Context) -> None:
    _health(ctx, "add-check")


@app.command(
    "edit-check",
    context_settings=_PASS_THROUGH,
    help="Change a health check (options not given keep their values)." + _CHECK_HELP,
)
def edit_check(ctx: typer.Context) -> None:
    _health(ctx, "edit-check")


@app.command("delete-check", context_settings=_PASS_THROUGH)
def delete_check(ctx: typer.Context) -> None:
    """Delete a health check: -t/-u/-f SERVICE [-r ADDR[:PORT]]."""
    _health(ctx, "delete-check")


@app.command("set-health", context_settings=_PASS_THROUGH)
def set_health(ctx: typer.Context) -> None:
    """A service's failure policy: -t/-u/-f SERVICE [--sorry-server ADDR[:PORT] -g|-i|-m]
    [--quorum N] [--hysteresis N] [--quorum-up CMD] [--quorum-down CMD]; with the
    service alone, remove it."""
    _health(ctx, "set-health")


@app.command("import-keepalived")
def import_keepalived(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="keepalived.conf")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the dirctl commands, apply nothing")
    ] = False,
    partial: Annotated[
        bool, typer.Option("--partial", help="apply what translates even if some does not")
    ] = False,
) -> None:
    """Bring keepalived.conf virtual_server blocks over as services, servers and checks,
    global_defs' lvs_timeouts as the timeouts (ipvsadm --set) and lvs_sync_daemon as the
    sync daemon (backup until the instance's notify runs `dirctl vrrp-notify master`)."""
    from director.ctl import keepalived

    result = keepalived.translate(keepalived.parse_file(file))
    for item in result.untranslated:
        typer.echo(f"not translated: {item}", err=True)
    if dry_run:
        keepalived.build_config(result)  # bad values exit 2 naming the keepalived line
        typer.echo(keepalived.as_commands(result), nl=False)
        return
    if result.untranslated and not partial:
        raise ConfigError(
            f"{file}: {len(result.untranslated)} setting(s) cannot be translated "
            "(listed above); nothing applied (--partial applies the rest)"
        )
    _ask(ctx, "restore", {"text": keepalived.as_rules(result)})
    # With an instance named, the one daemon follows its VRRP state; without, both run.
    follows_vrrp = len(result.sync_daemons) == 1
    for where, conf in result.sync_daemons:
        _ensure_sync_daemon(ctx, where, conf, follows_vrrp)


def _ensure_sync_daemon(ctx: typer.Context, where: str, conf: Any, follows_vrrp: bool) -> None:
    """Start the sync daemon of an imported lvs_sync_daemon unless it runs already with
    those settings (a backup made master by vrrp-notify stays master)."""
    from director.ctl.vrrp import same_settings

    running = list(_ask(ctx, "daemon"))
    states = {conf.state, "master"} if follows_vrrp else {conf.state}
    if any(same_settings(r, conf) and r["state"] in states for r in running):
        return
    if any(r["state"] == conf.state for r in running):
        raise ConfigError(
            f"{where}: a {conf.state} sync daemon runs with other settings "
            f"(dirctl stop-daemon {conf.state} first)"
        )
    _ask(ctx, "start-daemon", conf.as_dict())


# --- debugging and settings ---------------------------------------------------------


@app.command("which")
def which(
    ctx: typer.Context,
    proto: Annotated[str, typer.Argument(help="tcp or udp")],
    client: Annotated[str, typer.Argument(help="CLIENT:PORT")],
    virtual: Annotated[str, typer.Argument(help="VIP:PORT")],
    mark: Annotated[int, typer.Option("--mark", min=0, help="the packet's fwmark")] = 0,
) -> None:
    """Which real server a new connection would get now (sends no packet)."""
    if proto.lower() not in ("tcp", "udp"):
        raise ConfigError(f"unknown protocol {proto!r}: tcp or udp")
    caddr, cport = parse_addr_port(client, f"bad client address {client!r}: want ADDR:PORT")
    vaddr, vport = parse_addr_port(virtual, f"bad virtual address {virtual!r}: want VIP:PORT")
    dest = _ask(
        ctx,
        "which",
        {
            "protocol": proto,
            "client": [caddr, cport or 0],
            "virtual": [vaddr, vport or 0],
            "mark": mark,
        },
    )
    if dest is None:
        typer.echo("no real server (no such service, or none available)")
        raise typer.Exit(1)
    typer.echo(f"{listing.addr_port(dest['addr'], dest['port'])} {dest['method']}")


@app.command("sysctl")
def sysctl(
    ctx: typer.Context,
    assignments: Annotated[
        list[str] | None, typer.Argument(help="NAME=VALUE to set; none to show all")
    ] = None,
) -> None:
    """IPVS's sysctls (expire_nodest_conn, sloppy_tcp, schedule_icmp, nat_icmp_send,
    pmtu_disc, run_estimation...), kept by the daemon: show them, or set some (all or
    none)."""
    changes: dict[str, str] = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"expected NAME=VALUE, not {item!r}")
        changes[name.strip()] = value.strip()
    for name, value in _ask(ctx, "sysctl", {"set": changes}).items():
        typer.echo(f"{name} = {int(value)}")


# --- Sub-apps -----------------------------------------------------------------------
# Other parts of director hang their verbs here, e.g.
#     from director.lab.cli import app as lab_app
#     app.add_typer(lab_app, name="lab")
# Their ConfigError, DaemonUnreachable and usage errors get the same exit codes.

from director.lab.lab import lab_app  # noqa: E402

app.add_typer(lab_app, name="lab")

from director.realserver.cli import realserver_app  # noqa: E402

app.add_typer(realserver_app, name="realserver")

from director.cli.announce import announce  # noqa: E402

app.command("announce")(announce)

from director.cli.vrrp import vrrp_notify  # noqa: E402

app.command("vrrp-notify")(vrrp_notify)


# --- entry point --------------------------------------------------------------------


def _hoist_socket(argv: Sequence[str]) -> list[str]:
    """Accept ``--socket PATH`` after the verb too, by moving it in front of it."""
    rest: list[str] = []
    front: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--socket" and index + 1 < len(argv):
            front += argv[index : index + 2]
            index += 2
            continue
        (front if word.startswith("--socket=") else rest).append(word)
        index += 1
    return front + rest


def _fail(status: int, message: str) -> int:
    print(f"dirctl: {' '.join(message.split())}", file=sys.stderr)
    return status


def _negatives_as_arguments(argv: list[str]) -> list[str]:
    """``set-timeout -5 0 0``: its arguments are numbers, which click would take for
    options when negative (``No such option: -5``).  Passed after ``--``, they reach the
    timeout check, which says what is wrong with them."""
    if "set-timeout" not in argv:
        return argv
    at = argv.index("set-timeout") + 1
    rest = argv[at:]
    if "--" in rest or not any(re.fullmatch(r"-\d+", word) for word in rest):
        return argv
    return [*argv[:at], "--", *rest]


def run(argv: Sequence[str]) -> int:
    """Run dirctl on ``argv`` (without the program name) and return its exit status."""
    args = _negatives_as_arguments(_hoist_socket(expand_bare_options(argv)))
    try:
        result = app(args, prog_name="dirctl", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors
        return _fail(2, exc.format_message())
    except ConfigError as exc:
        return _fail(2, str(exc))
    except DaemonUnreachable as exc:
        return _fail(3, str(exc))
    except DaemonFailed as exc:
        return _fail(1, f"directord failed: {exc}")
    except typer.Abort:
        return _fail(1, "aborted")
    return result if isinstance(result, int) else 0


def main() -> NoReturn:
    """Console script ``dirctl``."""
    sys.exit(run(sys.argv[1:]))

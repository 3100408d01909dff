"""``dirctl lab up|down|demo``: the labs of SPEC §3, and the seed example on them.

``up`` leaves a lab running (backends answering, optionally the daemon) for a person
to try things in; ``down`` removes it; ``demo`` builds one, shows the seed example
of SPEC §4 being balanced by the real daemon, and removes it again.  ``--kind`` and
``--method`` choose the DR, TUN (real servers behind a router) or mixed lab instead
of the NAT one, and nat6, dr6 or tun6 the same over IPv6 (see ``topology``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from director.lab import ecmp, ha, topology
from director.lab.daemon import Daemon, DaemonError, venv_program
from director.model.config import ConfigError

lab_app = typer.Typer(
    help="Build the NAT lab in network namespaces (root only) and run the demo.",
    no_args_is_help=True,
)

REPO_RULES = Path(__file__).resolve().parents[2] / "rules" / "seed-nat.rules"
# SPEC §4 in ipvsadm-save form, for when the package runs outside the repository.
SEED_RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1
-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m -w 1
-A -t 203.0.113.5:21 -s rr
-a -t 203.0.113.5:21 -r 198.18.0.3:21 -m -w 1
"""
# The same over IPv6 (the nat6 lab's addresses), in rules/ beside it.
REPO_RULES6 = REPO_RULES.with_name("seed-nat6.rules")
SEED_RULES6 = """\
-A -t [2001:db8:1::100]:80 -s rr
-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -m -w 1
-a -t [2001:db8:1::100]:80 -r [2001:db8:2::3]:8000 -m -w 1
-A -t [2001:db8:1::100]:21 -s rr
-a -t [2001:db8:1::100]:21 -r [2001:db8:2::3]:21 -m -w 1
"""
SEEDS: dict[str, tuple[Path, str]] = {"nat": (REPO_RULES, SEED_RULES),
                                      "nat6": (REPO_RULES6, SEED_RULES6)}  # fmt: skip
RUN_DIR = Path("/run/director-lab")
METRICS_LISTEN = "127.0.0.1:9108"  # the director namespace's own loopback

NameOpt = Annotated[str, typer.Option("--name", help="namespace-name prefix of the lab")]
DEFAULT_NAME = "dlab"


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN, bold=True)


def _show(cmd: str, done: subprocess.CompletedProcess[str]) -> None:
    typer.echo(f"$ {cmd}")
    out = (done.stdout + done.stderr).rstrip()
    if out:
        typer.echo(out)
    if done.returncode:
        typer.secho(f"(exit status {done.returncode})", fg=typer.colors.RED)


def _require_root() -> None:
    if os.geteuid() != 0:
        typer.secho("the lab needs root (network namespaces, iptables)", err=True)
        raise typer.Exit(1)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """A lab command that fails says what failed, with the failing command's stderr
    (CommandFailed, a backend's or the daemon's own output), and exits 1."""
    try:
        yield
    except (typer.Exit, typer.Abort, ConfigError):
        raise
    except Exception as err:  # CommandFailed, DaemonError, pyroute2's NetlinkError, ...
        typer.secho(f"lab: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _named(name: str) -> str:
    return "" if name == DEFAULT_NAME else f" --name {name}"


def _kind_file(name: str) -> Path:
    return RUN_DIR / name / "kind"


def _seed(kind: str, given: Path | None = None) -> str:
    """SPEC §4's example for the NAT lab of ``kind`` (nat or nat6): ``given``, else the
    repository's rules file, else the copy above."""
    path, text = SEEDS[kind]
    path = given or path
    return path.read_text() if path.exists() else text


def _rules_for(lab: topology.Lab) -> str:
    """The rules a lab's daemon starts with: SPEC §4's example (rules/seed-nat.rules,
    rules/seed-nat6.rules) in the NAT labs, one service on port 80 over every real
    server in the others."""
    if lab.kind in SEEDS:
        return _seed(lab.kind)
    return lab.rules()


@lab_app.command()
def up(
    name: NameOpt = DEFAULT_NAME,
    daemon: Annotated[
        bool,
        typer.Option(
            help="also start directord in the director, with the lab's rules restored "
            "(on a lab that is up already: start only the daemon)"
        ),
    ] = False,
    kind: Annotated[
        str,
        typer.Option(
            help="nat, dr, tun or mixed real servers, nat6, dr6 or tun6 (the same over "
            "IPv6), ecmp (three directors) or ha (two directors, keepalived's VRRP)"
        ),
    ] = "nat",
) -> None:
    """Build the lab and leave it running: backends answer on 80, 8000 and 21."""
    _require_root()
    if kind not in (*topology.KINDS, ECMP, HA):
        raise ConfigError(f"--kind {kind!r}: one of {', '.join(topology.KINDS)}, {ECMP} or {HA}")
    if kind == ECMP:
        with _reported():
            _up_ecmp(name)
        return
    if kind == HA:
        with _reported():
            _up_ha(name)
        return
    with _reported():
        if topology.namespace_exists(f"{name}-director"):
            built = _kind_file(name).read_text().strip() if _kind_file(name).exists() else kind
            if not daemon or built != kind:
                hint = (
                    "" if daemon else f", or add its daemon: `dirctl lab up{_named(name)} --daemon`"
                )
                typer.secho(
                    f"lab {name} ({built}) exists: `dirctl lab down{_named(name)}` first{hint}",
                    err=True,
                )
                raise typer.Exit(1)
            lab = topology.Lab.named(name, kind)
            _start_daemon(lab, name)
            return
        lab = topology.build(name, kind)
        try:
            topology.start_backends(lab, detach=True)
            _kind_file(name).parent.mkdir(parents=True, exist_ok=True)
            _kind_file(name).write_text(kind + "\n")
            typer.echo(f"lab {name} is up: namespaces {', '.join(lab.namespaces)}")
            if daemon:
                _start_daemon(lab, name)
            else:
                rs = lab.real_servers[0]
                typer.echo("no directord yet; the real servers answer directly:")
                url = f"http://{topology.addr_port(rs.addr, 80)}/"
                typer.echo(f"  ip netns exec {lab.client} curl -g {url}")
                typer.echo(f"`dirctl lab up{_named(name)} --daemon` adds directord with:")
                typer.echo(_rules_for(lab), nl=False)
        except BaseException:
            topology.teardown(lab)
            shutil.rmtree(RUN_DIR / name, ignore_errors=True)
            raise


ECMP = "ecmp"


def _up_ecmp(name: str) -> None:
    """The ECMP lab (director.lab.ecmp), everything started: BIRD in the router, and
    in every director directord and ExaBGP announcing the VIP."""
    if topology.namespace_exists(f"{name}-router") or topology.namespace_exists(f"{name}-director"):
        typer.secho(f"lab {name} exists: `dirctl lab down{_named(name)}` first", err=True)
        raise typer.Exit(1)
    missing = ecmp.missing_program()
    if missing:
        raise RuntimeError(f"{missing} is not installed (Debian packages bird2 and exabgp)")
    lab = ecmp.build(name, RUN_DIR / name)
    try:
        _kind_file(name).write_text(ECMP + "\n")
        topology.start_backends(lab.base, detach=True)
        ecmp.start(lab)
        ecmp.wait_nexthops(lab, {d.addr for d in lab.directors}, timeout=30)
    except BaseException:
        ecmp.teardown(lab)
        shutil.rmtree(RUN_DIR / name, ignore_errors=True)
        raise
    typer.echo(f"lab {name} is up (ecmp): {lab.client}, {lab.router}, "
               f"{', '.join(d.netns for d in lab.directors)}, "
               f"{', '.join(rs.netns for rs in lab.base.real_servers)}")  # fmt: skip
    typer.echo(f"the router's route to {lab.vip} (BIRD, from each director's ExaBGP):")
    typer.echo(lab.run(lab.router, ["ip", "route", "show", f"{lab.vip}/32"]).stdout.rstrip())
    d1 = lab.directors[0]
    dirctl = f"ip netns exec {d1.netns} {venv_program('dirctl')}"
    typer.echo("try:")
    typer.echo(f"  ip netns exec {lab.client} curl http://{lab.vip}/")
    typer.echo(f"  {dirctl} --socket {lab.daemons[d1.name].socket_path} list -n --stats")
    typer.echo(f"  ip netns exec {lab.router} birdc -s {ecmp.bird_socket(lab)} show protocols")
    typer.echo(f"configuration and logs in {lab.workdir}")


HA = "ha"


def _up_ha(name: str) -> None:
    """The HA lab (director.lab.ha), everything started: in both directors directord
    and keepalived (VRRP only), dir1 master, dir2 backup."""
    if any(topology.namespace_exists(f"{name}-{n}") for n in ("switch", "director", "dir1")):
        typer.secho(f"lab {name} exists: `dirctl lab down{_named(name)}` first", err=True)
        raise typer.Exit(1)
    if ha.missing_program():
        raise RuntimeError("keepalived is not installed (Debian package keepalived)")
    lab = ha.build(name, RUN_DIR / name)
    try:
        _kind_file(name).write_text(HA + "\n")
        topology.start_backends(lab.base, detach=True)
        ha.start(lab)
    except BaseException:
        ha.teardown(lab)
        shutil.rmtree(RUN_DIR / name, ignore_errors=True)
        raise
    typer.echo(f"lab {name} is up (ha): {lab.client}, {lab.switch}, "
               f"{', '.join(d.netns for d in lab.directors)}, "
               f"{', '.join(rs.netns for rs in lab.base.real_servers)}")  # fmt: skip
    for d in lab.directors:
        typer.echo(f"  {d.name} ({d.outside}, {d.inside}): {ha.role(lab, d)}")
    d1 = lab.directors[0]
    dirctl = f"ip netns exec {d1.netns} {venv_program('dirctl')}"
    typer.echo("try:")
    typer.echo(f"  ip netns exec {lab.client} curl http://{lab.vip}/      (DR)")
    typer.echo(f"  ip netns exec {lab.client} curl http://{lab.vip}:{ha.NAT_PORT}/  (NAT)")
    typer.echo(f"  {dirctl} --socket {lab.daemon(d1).socket_path} list -n -c")
    typer.echo(f"  {dirctl} --socket {lab.daemon(d1).socket_path} list --daemon")
    typer.echo(f"configuration and logs in {lab.workdir}")


def _start_daemon(lab: topology.Lab, name: str) -> None:
    """Start directord in the lab (unless one answers already) with the lab's rules."""
    d = Daemon(lab, RUN_DIR / name)
    dirctl = f"ip netns exec {lab.director} {venv_program('dirctl')} --socket {d.socket_path}"
    if d.answers():
        typer.echo(f"directord answers on {d.socket_path} already")
    else:
        fresh = not d.rules_path.exists()
        d.start()
        typer.echo(f"directord pid {d.pid} in {lab.director}; log {d.log_path}")
        if fresh:
            done = d.dirctl("restore", input=_rules_for(lab))
            if done.returncode:
                raise RuntimeError(f"dirctl restore: {done.stderr.strip()}")
    typer.echo(d.dirctl("list", "-n").stdout.rstrip())
    typer.echo(f"try:\n  ip netns exec {lab.client} curl -g {lab.url()}\n  {dirctl} list -n")


@lab_app.command()
def down(name: NameOpt = DEFAULT_NAME) -> None:
    """Stop what runs in the lab and remove its namespaces."""
    _require_root()
    with _reported():
        topology.teardown(topology.Lab.named(name))
    shutil.rmtree(RUN_DIR / name, ignore_errors=True)
    typer.echo(f"lab {name} removed")


def _curl(lab: topology.Lab, url: str, timeout: float = 3.0) -> tuple[int, str, float]:
    start = time.monotonic()
    done = lab.run(
        lab.client,
        ["curl", "-sSg", "--max-time", str(timeout), url],  # -g: [IPv6] is no glob
        check=False,
        timeout=timeout + 5,
    )
    return done.returncode, (done.stdout or done.stderr).strip(), time.monotonic() - start


def _stats_and_metrics(lab: topology.Lab, d: Daemon) -> None:
    """Issue 5 in the demo: counters, rates after an estimator step, a scrape."""
    _say("== statistics: connections, packets and bytes per service and real server")
    _show("dirctl list -n --stats", d.dirctl("list", "-n", "--stats"))
    time.sleep(2.2)  # let the 2-second estimator take a step
    _show("dirctl list -n --rate", d.dirctl("list", "-n", "--rate"))
    _say(f"== Prometheus: scrape of http://{METRICS_LISTEN}/metrics (director_* families)")
    done = lab.run(
        lab.director,
        ["curl", "-sS", "--max-time", "5", f"http://{METRICS_LISTEN}/metrics"],
        check=False,
    )
    wanted = (
        "director_connections_total",
        "director_incoming_packets_total",
        "director_outgoing_bytes_total",
        "director_backend_connections_inactive",
        "director_backend_weight",
        "director_connections_per_second",
        "director_connection_entries",
        "director_verdicts_total",
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(wanted)]
    typer.echo(f"$ curl -s http://{METRICS_LISTEN}/metrics | grep ...")
    typer.echo("\n".join(lines) if lines else (done.stderr.strip() or "(no metrics)"))


DEMO_METHODS = ("nat", "dr", "tun", "mixed")
IPV6_DEMOS = ("nat6", "dr6", "tun6")
OTHER_DEMOS = (*IPV6_DEMOS, ECMP, "ha")  # not part of "all": IPv6 and labs of more


@lab_app.command()
def demo(
    requests: Annotated[int, typer.Option(help="requests to the VIP's port 80")] = 20,
    rules: Annotated[Path | None, typer.Option(help="rules file to restore (NAT demo)")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="nat (SPEC §4's example), dr, tun, mixed, all of them, nat6, dr6, tun6 "
            "(the same over IPv6), ecmp "
            "(three directors behind BGP; needs bird2 and exabgp) or ha (two directors, "
            "keepalived's VRRP; needs keepalived)"
        ),
    ] = "nat",
) -> None:
    """Build a lab, balance SPEC §4's example through the real daemon, then remove it.

    ``--method dr|tun|mixed`` shows the same through DR, TUN or all three methods in one
    service; ``--method all`` runs the four demos one after the other; ``--method ecmp``
    shows three directors behind ECMP, one of them dying and a newcomer taking its place;
    ``--method ha`` two directors with keepalived, the master dying mid-download and
    coming back as the backup.
    """
    _require_root()
    if method not in (*DEMO_METHODS, *OTHER_DEMOS, "all"):
        raise ConfigError(
            f"--method {method!r}: one of {', '.join((*DEMO_METHODS, *OTHER_DEMOS))} or all"
        )
    with _reported():
        for kind in DEMO_METHODS if method == "all" else (method,):
            if kind == ECMP:
                _demo_ecmp(requests)
            elif kind == HA:
                _demo_ha(requests)
            elif kind in SEEDS:
                _demo_nat(requests, rules, kind)
            else:
                _demo_method(kind, requests)


def _demo_nat(requests: int, rules: Path | None, kind: str = "nat") -> None:
    rules_text = _seed(kind, rules)
    lab = topology.build(kind=kind)
    work = Path(tempfile.mkdtemp(prefix="director-demo-"))
    d = Daemon(lab, work, ["--metrics-listen", METRICS_LISTEN])
    try:
        _say(f"== lab {lab.prefix}: client {lab.client_addr} -> director (VIP {lab.vip})")
        servers = ", ".join(f"{rs.name} {rs.addr}" for rs in lab.real_servers)
        _say(f"   -> {servers} (backends on ports 80, 8000, 21)")
        topology.start_backends(lab)
        d.start()
        _say(f"== directord running in {lab.director} (pid {d.pid})")
        name = (rules or SEEDS[kind][0]).name
        _show(f"dirctl restore rules/{name}", d.dirctl("restore", input=rules_text))
        _show("dirctl list -n", d.dirctl("list", "-n"))

        _say(f"== {requests} requests from the client to {lab.url()}")
        answers: collections.Counter[str] = collections.Counter()
        for i in range(1, requests + 1):
            code, text, _ = _curl(lab, lab.url())
            typer.echo(f"{i:3d}  {text if code == 0 else f'curl exit {code}: {text}'}")
            answers[text.split()[0] if code == 0 and text else "failed"] += 1
        typer.echo("     " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))

        _say("== port 21 goes to rs2")
        code, text, _ = _curl(lab, lab.url(21))
        typer.echo(f"$ curl -g {lab.url(21)}  ->  {text}")
        _say("== any other port of the VIP is refused at once")
        code, text, took = _curl(lab, lab.url(23))
        typer.echo(f"$ curl -g {lab.url(23)}  ->  exit {code} after {took:.3f} s: {text}")

        _show("dirctl list -n", d.dirctl("list", "-n"))
        _show("dirctl list -n -c", d.dirctl("list", "-n", "-c"))
        _stats_and_metrics(lab, d)
        code = d.stop()
        _say(f"== directord stopped by SIGTERM: exit status {code}")
    except DaemonError as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        d.kill()
        topology.teardown(lab)
        shutil.rmtree(work, ignore_errors=True)
        _say(f"== lab {lab.prefix} removed")


REAL_SERVER_NEEDS = {
    "dr": "the VIP on lo, arp_ignore=1, arp_announce=2: `dirctl realserver up --method dr`",
    "tun": "the VIP on dirtun0, fed by the userspace IPIP decapsulator "
    "(this kernel has no ipip): `dirctl realserver up --method tun`",
    "mixed": "NAT: the director as gateway; DR and TUN: `dirctl realserver up`",
}


def _demo_method(kind: str, requests: int) -> None:
    """The DR, TUN or mixed lab: one service on port 80 over its real servers."""
    lab = topology.build(kind=kind)
    work = Path(tempfile.mkdtemp(prefix="director-demo-"))
    d = Daemon(lab, work)
    try:
        _say(f"== {kind.upper()} lab {lab.prefix}: client {lab.client_addr} -> director (VIP "
             f"{lab.vip})")  # fmt: skip
        for rs in lab.real_servers:
            where = "behind the router" if rs.remote else "on the director's LAN"
            _say(f"   -> {rs.name} {rs.addr} ({rs.method.upper()}, {where})")
        _say(f"   real servers need {REAL_SERVER_NEEDS[lab.method_kind]}")
        special = next((rs for rs in lab.real_servers if rs.method != "nat"), None)
        if special is not None:
            done = topology.realserver(lab, special, "status", check=False)
            _show(f"ip netns exec {special.netns} dirctl realserver status", done)
        topology.start_backends(lab)
        d.start()
        _say(f"== directord running in {lab.director} (pid {d.pid})")
        _show("dirctl restore", d.dirctl("restore", input=lab.rules()))
        _show("dirctl list -n", d.dirctl("list", "-n"))
        _say(f"== {requests} requests from the client to {lab.url()}")
        _say("   (DR and TUN servers answer from the VIP itself: the client's packet reached"
             " them unchanged)")  # fmt: skip
        answers: collections.Counter[str] = collections.Counter()
        for i in range(1, requests + 1):
            code, text, _ = _curl(lab, lab.url())
            typer.echo(f"{i:3d}  {text if code == 0 else f'curl exit {code}: {text}'}")
            answers[text.split()[0] if code == 0 and text else "failed"] += 1
        typer.echo("     " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
        _say("== replies bypass the director's NFQUEUE: OutPkts stay 0 for DR and TUN")
        _show("dirctl list -n --stats", d.dirctl("list", "-n", "--stats"))
        code = d.stop()
        _say(f"== directord stopped by SIGTERM: exit status {code}")
    except (DaemonError, RuntimeError) as err:
        typer.secho(str(err), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    finally:
        d.kill()
        topology.teardown(lab)
        shutil.rmtree(work, ignore_errors=True)
        _say(f"== lab {lab.prefix} removed")


def _requests_by_director(lab: ecmp.EcmpLab, requests: int) -> None:
    """``requests`` new connections to the VIP; what answered, and how many connections
    each director's statistics counted meanwhile."""
    before = {n: _service_conns(d) for n, d in lab.daemons.items() if d.answers()}
    answers: collections.Counter[str] = collections.Counter()
    for _ in range(requests):
        code, text, _ = _curl(lab.base, f"http://{lab.vip}/")
        answers[text.split()[0] if code == 0 and text else f"failed ({text})"] += 1
    typer.echo("     answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
    took = {n: _service_conns(lab.daemons[n]) - b for n, b in before.items()}
    typer.echo("     connections per director: "
               + ", ".join(f"{n}: {c}" for n, c in sorted(took.items())))  # fmt: skip


def _service_conns(d: Daemon) -> int:
    done = d.dirctl("list", "-n", "--json")
    if done.returncode:
        return 0
    return sum(int(svc["stats"]["conns"]) for svc in json.loads(done.stdout)["services"])


def _show_route(lab: ecmp.EcmpLab) -> None:
    done = lab.run(lab.router, ["ip", "route", "show", f"{lab.vip}/32"], check=False)
    _show(f"ip netns exec {lab.router} ip route show {lab.vip}/32", done)


def _demo_ecmp(requests: int) -> None:
    """Three directors behind a BIRD router, each announcing the VIP with ExaBGP; one
    dies (kill -9 of its directord), the router drops it, a newcomer comes back."""
    missing = ecmp.missing_program()
    if missing:
        raise RuntimeError(
            f"{missing} is not installed: the ECMP demo needs bird2 and exabgp "
            "(.ci/install-deps test, or make deps)"
        )
    work = Path(tempfile.mkdtemp(prefix="director-demo-"))
    lab = ecmp.build(workdir=work, ports=(80, DOWNLOAD_PORT))
    download: subprocess.Popen[str] | None = None
    try:
        _say(f"== ECMP lab {lab.base.prefix}: client {lab.base.client_addr} -> router "
             f"(BIRD, AS {ecmp.ROUTER_AS}) -> "
             + ", ".join(f"{d.name} {d.addr}" for d in lab.directors))  # fmt: skip
        _say("   each director: directord (DR, mh -b mh-port, sloppy_tcp, a TCP check) and "
             "ExaBGP running `dirctl announce`; real servers rs1, rs2 (VIP on lo)")  # fmt: skip
        topology.start_backends(lab.base)
        padded = dataclasses.replace(lab.base, backends=[])  # its own list: zipped
        try:
            topology.start_backends(padded, ports=(DOWNLOAD_PORT,), pad=DOWNLOAD_SIZE)
        finally:
            lab.base.backends.extend(padded.backends)  # ended with the lab
        # A small receive buffer in the client: a slow reader makes a slow transfer.
        topology.set_sysctl(lab.client, "net.ipv4.tcp_rmem", "4096 65536 131072")
        ecmp.start(lab)
        ecmp.wait_nexthops(lab, {d.addr for d in lab.directors}, timeout=30)
        _say(f"== every director announces {lab.vip}/32; BIRD merges them into one route")
        _show(f"birdc -s {ecmp.bird_socket(lab)} show protocols",
              ecmp.birdc(lab, "show protocols", check=False))  # fmt: skip
        _show_route(lab)
        _say(f"== {requests} new connections from the client, hashed over the directors")
        _requests_by_director(lab, requests)

        url = f"http://{lab.vip}:{DOWNLOAD_PORT}/"
        argv = ["curl", "-sS", "--limit-rate", "150K", "--max-time", "60", "-o", "/dev/null",
                "-w", "%{size_download}", url]  # fmt: skip
        download = subprocess.Popen(
            lab.base.exec_argv(lab.client, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        victim = _holder_of_download(lab)
        _say(f"== a slow download of {DOWNLOAD_SIZE >> 20} MiB ({url}, 150 KB/s) goes "
             f"through {victim.name}")  # fmt: skip
        time.sleep(1.5)
        _say(f"== {victim.name} crashes: kill -9 of its directord")
        start = time.monotonic()
        ecmp.crash_director(lab, victim)
        survivors = {d.addr for d in lab.directors if d is not victim}
        ecmp.wait_nexthops(lab, survivors, timeout=15)
        took = time.monotonic() - start
        _say(f"== its ExaBGP withdrew the VIP: the router dropped {victim.addr} "
             f"{took:.2f} s after the kill")  # fmt: skip
        _show_route(lab)
        _say(f"== {requests} new connections: the other directors take them all")
        _requests_by_director(lab, requests)
        out, _ = download.communicate(timeout=70)
        _say(f"== the download went on through the others (mh over the same real servers, "
             f"sloppy_tcp): curl exit {download.returncode}, {out.strip()} bytes of "
             f"{DOWNLOAD_SIZE}")  # fmt: skip

        _say(f"== a newcomer on {victim.name}: directord with the same rules, announced again")
        start = time.monotonic()
        lab.daemons[victim.name].start()
        ecmp.wait_nexthops(lab, {d.addr for d in lab.directors}, timeout=30)
        _say(f"   back in the route {time.monotonic() - start:.1f} s after its start")
        _show_route(lab)
        _say(f"== {requests} new connections over the three again")
        _requests_by_director(lab, requests)
    finally:
        if download is not None and download.poll() is None:
            download.kill()
            download.wait()
        ecmp.teardown(lab)
        shutil.rmtree(work, ignore_errors=True)
        _say(f"== lab {lab.base.prefix} removed")


DOWNLOAD_PORT = 8080
DOWNLOAD_SIZE = 1 << 20  # the backends' padded answer on DOWNLOAD_PORT (their largest)


def _holder_of_download(lab: ecmp.EcmpLab, timeout: float = 10.0) -> ecmp.DirectorHost:
    """The director whose table has the client's connection to the download port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in lab.directors:
            done = lab.daemons[d.name].dirctl("list", "-n", "-c", "--json")
            if done.returncode == 0:
                data = json.loads(done.stdout)
                if any(c["vport"] == DOWNLOAD_PORT for c in data.get("conns", [])):
                    return d
        time.sleep(0.1)
    raise RuntimeError(f"no director has the download's connection after {timeout:.0f} s")


def _roles(lab: ha.HaLab) -> None:
    for d in lab.directors:
        daemon = lab.daemon(d)
        listed = daemon.dirctl("list", "--daemon").stdout.strip() if daemon.answers() else ""
        state = ha.role(lab, d) or ("changing" if daemon.answers() else "dead")
        typer.echo(f"     {d.name}: {state}"
                   + (f"  ({listed.replace(chr(10), '; ')})" if listed else ""))  # fmt: skip


def _demo_ha(requests: int) -> None:
    """Two directors with keepalived (VRRP only) and the sync daemon; a slow download
    through the master, which dies (kill -9 of its directord and keepalived); the
    backup takes the VIP and the gateway and the download ends whole; the dead one
    comes back as the backup and learns the connections from its peer."""
    if ha.missing_program():
        raise RuntimeError("keepalived is not installed: the HA demo needs it "
                           "(.ci/install-deps test, or make deps)")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="director-demo-"))
    lab = ha.build(workdir=work)
    download: subprocess.Popen[str] | None = None
    try:
        _say(f"== HA lab {lab.base.prefix}: client {lab.base.client_addr} and "
             + ", ".join(f"{d.name} {d.outside}" for d in lab.directors)
             + " on one segment; the directors and rs1, rs2 on another")  # fmt: skip
        _say(f"   keepalived (VRRP only) moves {lab.vip} (VI_OUT) and the real servers' "
             f"gateway {ha.GATEWAY} (VI_IN), one sync group; its notify scripts run "
             "`dirctl vrrp-notify` (the sync daemon's role)")  # fmt: skip
        topology.start_backends(lab.base)
        padded = dataclasses.replace(lab.base, backends=[])
        try:
            topology.start_backends(padded, ports=(DOWNLOAD_PORT,), pad=DOWNLOAD_SIZE)
        finally:
            lab.base.backends.extend(padded.backends)
        topology.set_sysctl(lab.base.client, "net.ipv4.tcp_rmem", "4096 65536 131072")
        extra = f"-A -t {lab.vip}:{DOWNLOAD_PORT} -s rr\n" + "".join(
            f"-a -t {lab.vip}:{DOWNLOAD_PORT} -r {rs.addr}:{DOWNLOAD_PORT} -g -w 1\n"
            for rs in lab.base.real_servers
        )
        ha.start(lab)
        for d in lab.directors:
            done = lab.daemon(d).dirctl("restore", input=extra)
            if done.returncode:
                raise RuntimeError(f"{d.name}: dirctl restore: {done.stderr.strip()}")
        first = ha.master(lab)
        second = lab.peer(first)
        _say("== roles: VRRP state, and the sync daemon vrrp-notify left running")
        _roles(lab)
        _show(f"dirctl list -n  ({first.name})", lab.daemon(first).dirctl("list", "-n"))
        _say(f"== {requests} requests: DR on port {ha.DR_PORT}, NAT on {ha.NAT_PORT}")
        answers: collections.Counter[str] = collections.Counter()
        for i in range(requests):
            port = (ha.DR_PORT, ha.NAT_PORT)[i % 2]
            code, text, _ = _curl(lab.base, f"http://{lab.vip}:{port}/")
            answers[text if code == 0 else "failed"] += 1
        typer.echo("     " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
        url = f"http://{lab.vip}:{DOWNLOAD_PORT}/"
        argv = ["curl", "-sS", "--limit-rate", "100K", "--max-time", "60", "-o", "/dev/null",
                "-w", "%{size_download}", url]  # fmt: skip
        download = subprocess.Popen(lab.base.exec_argv(lab.base.client, argv),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)  # fmt: skip
        _say(f"== a slow DR download of {DOWNLOAD_SIZE >> 20} MiB ({url}, 100 KB/s) "
             f"through {first.name}")  # fmt: skip
        time.sleep(2.5)  # the 2 s flush: the backup has it
        _show(f"dirctl list -n -c  ({second.name}, the backup: synced)",
              lab.daemon(second).dirctl("list", "-n", "-c"))  # fmt: skip
        _say(f"== {first.name} dies: kill -9 of its directord and its keepalived")
        start = time.monotonic()
        ha.crash(lab, first)
        ha.wait_role(lab, second, "master", 30)
        _say(f"== {second.name} is master {time.monotonic() - start:.2f} s after the kill "
             "(3 missed adverts, advert_int 1 s)")  # fmt: skip
        _roles(lab)
        _say(f"== {first.name} comes back: directord and keepalived started again")
        ha.recover(lab, first)
        ha.wait_role(lab, first, "backup", 30)
        _roles(lab)
        out, _ = download.communicate(timeout=100)
        _say(f"== the download went on through {second.name}: curl exit "
             f"{download.returncode}, {out.strip()} bytes of {DOWNLOAD_SIZE}")  # fmt: skip
        _say(f"== {requests} new requests, now through {second.name}")
        answers.clear()
        for i in range(requests):
            port = (ha.DR_PORT, ha.NAT_PORT)[i % 2]
            code, text, _ = _curl(lab.base, f"http://{lab.vip}:{port}/")
            answers[text if code == 0 else "failed"] += 1
        typer.echo("     " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
        time.sleep(2.5)  # the master's 2 s flush
        _show(f"dirctl list -n -c  ({first.name}, the backup now: learnt from {second.name})",
              lab.daemon(first).dirctl("list", "-n", "-c"))  # fmt: skip
    finally:
        if download is not None and download.poll() is None:
            download.kill()
            download.wait()
        ha.teardown(lab)
        shutil.rmtree(work, ignore_errors=True)
        _say(f"== lab {lab.base.prefix} removed")

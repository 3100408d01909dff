"""``dirctl lab up|down|demo``: the NAT lab of SPEC §3, and the seed example on it.

``up`` leaves a lab running (backends answering, optionally the daemon) for a person
to try things in; ``down`` removes it; ``demo`` builds one, shows the seed example
of SPEC §4 being balanced by the real daemon, and removes it again.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from director.lab import topology
from director.lab.daemon import Daemon, DaemonError

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
RUN_DIR = Path("/run/director-lab")
METRICS_LISTEN = "127.0.0.1:9108"  # the director namespace's own loopback

NameOpt = Annotated[str, typer.Option("--name", help="namespace-name prefix of the lab")]


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


@lab_app.command()
def up(
    name: NameOpt = "dlab",
    daemon: Annotated[bool, typer.Option(help="also start directord in the director")] = False,
) -> None:
    """Build the lab and leave it running: backends answer on 80, 8000 and 21."""
    _require_root()
    if topology.namespace_exists(f"{name}-director"):
        typer.secho(f"lab {name} exists: `lab down --name {name}` first", err=True)
        raise typer.Exit(1)
    lab = topology.build(name)
    try:
        topology.start_backends(lab, detach=True)
        if daemon:
            d = Daemon(lab, RUN_DIR / name)
            d.start()
            typer.echo(f"directord pid {d.pid}; control socket {d.socket_path}")
    except BaseException:
        topology.teardown(lab)
        raise
    typer.echo(f"lab {name} is up: namespaces {', '.join(lab.namespaces)}")
    typer.echo(f"try: ip netns exec {lab.client} curl http://{lab.vip}/")


@lab_app.command()
def down(name: NameOpt = "dlab") -> None:
    """Stop what runs in the lab and remove its namespaces."""
    _require_root()
    topology.teardown(topology.Lab.named(name))
    shutil.rmtree(RUN_DIR / name, ignore_errors=True)
    typer.echo(f"lab {name} removed")


def _curl(lab: topology.Lab, url: str, timeout: float = 3.0) -> tuple[int, str, float]:
    start = time.monotonic()
    done = lab.run(
        lab.client,
        ["curl", "-sS", "--max-time", str(timeout), url],
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


@lab_app.command()
def demo(
    requests: Annotated[int, typer.Option(help="requests to the VIP's port 80")] = 20,
    rules: Annotated[Path | None, typer.Option(help="rules file to restore")] = None,
) -> None:
    """Build a lab, balance SPEC §4's example through the real daemon, then remove it."""
    _require_root()
    rules_text = (rules or REPO_RULES).read_text() if (rules or REPO_RULES).exists() else SEED_RULES
    lab = topology.build()
    work = Path(tempfile.mkdtemp(prefix="director-demo-"))
    d = Daemon(lab, work, ["--metrics-listen", METRICS_LISTEN])
    try:
        _say(f"== lab {lab.prefix}: client {lab.client_addr} -> director (VIP {lab.vip})")
        _say("   -> rs1 198.18.0.2, rs2 198.18.0.3 (backends on ports 80, 8000, 21)")
        topology.start_backends(lab)
        d.start()
        _say(f"== directord running in {lab.director} (pid {d.pid})")
        _show("dirctl restore rules/seed-nat.rules", d.dirctl("restore", input=rules_text))
        _show("dirctl list -n", d.dirctl("list", "-n"))

        _say(f"== {requests} requests from the client to http://{lab.vip}/")
        answers: collections.Counter[str] = collections.Counter()
        for i in range(1, requests + 1):
            code, text, _ = _curl(lab, f"http://{lab.vip}/")
            typer.echo(f"{i:3d}  {text if code == 0 else f'curl exit {code}: {text}'}")
            answers[text.split()[0] if code == 0 and text else "failed"] += 1
        typer.echo("     " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))

        _say("== port 21 goes to rs2")
        code, text, _ = _curl(lab, f"http://{lab.vip}:21/")
        typer.echo(f"$ curl http://{lab.vip}:21/  ->  {text}")
        _say("== any other port of the VIP is refused at once")
        code, text, took = _curl(lab, f"http://{lab.vip}:23/")
        typer.echo(f"$ curl http://{lab.vip}:23/  ->  exit {code} after {took:.3f} s: {text}")

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

"""``dirctl realserver up|down|status``: prepare this host to serve VIPs for DR or TUN.

Run on the real server itself (not through directord).  ``up`` prints each change it
makes, ``down`` each one it undoes; both are idempotent.  Bad input exits 2 with one
line (``dirctl: ...``), a change the host refuses exits 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from director.realserver import host, plan

realserver_app = typer.Typer(
    help="Prepare this host as a DR or TUN real server (VIP, ARP, rp_filter, tunnels).",
    no_args_is_help=True,
)

StateRoot = Annotated[
    Path,
    typer.Option("--state-dir", help="where the record of changes is kept", show_default=True),
]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise plan.PlanError("dirctl realserver needs root (CAP_NET_ADMIN)")


def _fail(err: host.HostError) -> typer.Exit:
    typer.echo(f"dirctl: {' '.join(str(err).split())}", err=True)
    return typer.Exit(1)


@realserver_app.command()
def up(
    vip: Annotated[
        list[str],
        typer.Option("--vip", metavar="ADDR", help="a VIP to serve, IPv4 or IPv6 (repeatable)"),
    ],
    method: Annotated[str, typer.Option("--method", metavar="dr|tun", help="forwarding method")],
    decap: Annotated[
        str,
        typer.Option(
            "--decap",
            metavar="auto|kernel|userspace",
            help="TUN: kernel ipip (if loaded; IPv4 VIPs only) or the userspace decapsulator",
        ),
    ] = "auto",
    tun_type: Annotated[
        str,
        typer.Option(
            "--tun-type",
            metavar="ipip|gue|gre",
            help="TUN: the director's --tun-type (GUE and GRE decapsulated in userspace)",
        ),
    ] = "ipip",
    tun_port: Annotated[
        int, typer.Option("--tun-port", metavar="PORT", help="--tun-type gue: its UDP port")
    ] = 0,
    state_dir: StateRoot = host.DEFAULT_STATE_ROOT,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="print nothing")] = False,
) -> None:
    """Put the VIPs on a non-ARPing device and set ARP and rp_filter for DR or TUN."""
    if method not in plan.METHODS:
        raise plan.PlanError(f"--method {method!r}: choose dr or tun")
    if decap not in plan.DECAPS:
        raise plan.PlanError(f"--decap {decap!r}: choose auto, kernel or userspace")
    _require_root()
    request = plan.Request(
        method=method,  # type: ignore[arg-type]
        vips=tuple(vip),
        decap=decap,  # type: ignore[arg-type]
        tun_type=tun_type,
        tun_port=tun_port,
    )
    plan.parse_vips(request.vips)
    directory = host.state_dir(state_dir)
    try:
        state = host.load_state(directory)
        new_state, actions = plan.plan_up(host.read_host(state), request, state)
        host.save_state(directory, new_state)
        for action, _ in host.run_actions(new_state, actions, directory):
            if not quiet:
                typer.echo(plan.describe(action))
    except host.HostError as err:
        raise _fail(err) from None
    if not quiet:
        typer.echo(f"realserver up ({new_state.mode}): {', '.join(new_state.vips)}"
                   + ("" if actions else " (nothing to change)"))  # fmt: skip


@realserver_app.command()
def down(
    state_dir: StateRoot = host.DEFAULT_STATE_ROOT,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="print nothing")] = False,
) -> None:
    """Undo what `up` did (and only that); stop the decapsulator."""
    _require_root()
    directory = host.state_dir(state_dir)
    try:
        state = host.load_state(directory)
        if state is None:
            if not quiet:
                typer.echo("realserver is not up here: nothing to undo")
            return
        actions = plan.plan_down(host.read_host(state), state)
        for action, _ in host.run_actions(state, actions, directory):
            if not quiet:
                typer.echo(plan.describe(action))
    except host.HostError as err:
        raise _fail(err) from None
    host.remove_state(directory)
    if not quiet:
        typer.echo("realserver down")


@realserver_app.command()
def status(
    state_dir: StateRoot = host.DEFAULT_STATE_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="as JSON")] = False,
) -> None:
    """Show what `up` set up here, and whether it is still in place."""
    directory = host.state_dir(state_dir)
    try:
        state = host.load_state(directory)
        shown = host.status(state, host.read_host(state))
    except host.HostError as err:
        raise _fail(err) from None
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    if not shown["up"]:
        typer.echo("realserver: down")
        return
    typer.echo(f"realserver: up, method {shown['method']} ({shown['mode']})")
    for vip, dev in shown["vips"].items():
        typer.echo(f"  vip {vip}: {'on ' + dev if dev else 'MISSING'}")
    if shown["created_links"]:
        typer.echo(f"  links created: {', '.join(shown['created_links'])}")
    if shown["raised_links"]:
        typer.echo(f"  links set up: {', '.join(shown['raised_links'])}")
    for key, values in shown["sysctls"].items():
        typer.echo(f"  sysctl {key} = {values['now']} (was {values['was']})")
    if shown["decap"] is not None:
        d = shown["decap"]
        state_word = "running" if d["running"] else "NOT RUNNING (run `up` again)"
        typer.echo(f"  decapsulator into {shown['vip_dev']}: pid {d['pid']}, {state_word}")

"""``dirctl vrrp-notify``: the program keepalived's notify scripts run to switch the sync
daemon's role with the VRRP state (what keepalived's ``lvs_sync_daemon`` does for the
kernel's IPVS; director.ctl.vrrp has the table).

In keepalived.conf, on the ``vrrp_sync_group`` (or the ``vrrp_instance``)::

    notify_master "/usr/bin/dirctl vrrp-notify master --mcast-interface eth1 --syncid 7"
    notify_backup "/usr/bin/dirctl vrrp-notify backup --mcast-interface eth1 --syncid 7"
    notify_fault  "/usr/bin/dirctl vrrp-notify fault --mcast-interface eth1 --syncid 7"

or once, ``notify "/usr/bin/dirctl vrrp-notify --mcast-interface eth1 --syncid 7"``:
keepalived appends ``GROUP|INSTANCE NAME STATE PRIORITY``.  keepalived starts the
scripts without waiting for them, so two may overlap: each holds an exclusive lock
(``<control socket>.vrrp-lock``) while it reads and changes the daemons.  A directord
that does not answer yet (keepalived started first, or directord restarting) is waited
for, up to ``--wait`` seconds (10): otherwise it would come up with the daemons of its
last run, whatever the VRRP state is now.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from director.cli import syncopts
from director.ctl import protocol
from director.ctl.protocol import RequestRefused
from director.ctl.vrrp import plan, vrrp_state
from director.model.sync import parse_daemon

# Answers of stop-daemon / start-daemon that mean another notify got there first.
ALREADY = {"stop-daemon": "No daemon is running", "start-daemon": "Daemon has already run"}


@contextlib.contextmanager
def _locked(socket_path: str) -> Iterator[None]:
    if not os.path.exists(socket_path):  # nothing to lock: the request will say so
        yield
        return
    try:
        fd = os.open(f"{socket_path}.vrrp-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # no room next to the socket: go on unlocked
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def vrrp_notify(
    ctx: typer.Context,
    words: Annotated[
        list[str],
        typer.Argument(help="master|backup|fault|stop, or keepalived's notify arguments"),
    ],
    mcast_interface: syncopts.McastInterface = None,
    syncid: syncopts.SyncId = None,
    sync_maxlen: syncopts.SyncMaxlen = None,
    mcast_group: syncopts.McastGroup = None,
    mcast_port: syncopts.McastPort = None,
    mcast_ttl: syncopts.McastTtl = None,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="seconds to wait for directord to answer")
    ] = 10.0,
) -> None:
    """Switch the sync daemon's role with keepalived's VRRP state: MASTER runs the
    master daemon only, BACKUP and FAULT the backup only, STOP stops the master (for
    notify_master / notify_backup / notify_fault / notify_stop, or notify)."""
    state = vrrp_state(words)
    conf = parse_daemon(syncopts.given(
        state="master", mcast_interface=mcast_interface, syncid=syncid, sync_maxlen=sync_maxlen,
        mcast_group=mcast_group, mcast_port=mcast_port, mcast_ttl=mcast_ttl,
    ))  # fmt: skip
    root = ctx.find_root().obj
    socket_path = str(getattr(root, "socket", protocol.DEFAULT_SOCKET))
    timeout = float(getattr(root, "timeout", 10.0))
    deadline = time.monotonic() + wait
    while True:
        try:
            protocol.request(socket_path, "daemon", {}, timeout)
            break
        except protocol.DaemonUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    with _locked(socket_path):
        running: Any = protocol.request(socket_path, "daemon", {}, timeout)
        for step in plan(state, conf, list(running)):
            try:
                protocol.request(socket_path, step.verb, step.args, timeout)
            except RequestRefused as exc:
                if str(exc) != ALREADY[step.verb]:
                    raise
            typer.echo(f"vrrp {state.lower()}: {step.verb} {step.args['state']}")

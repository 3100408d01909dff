"""The sync daemon's role, switched by VRRP state as keepalived switches IPVS's.

keepalived with ``lvs_sync_daemon IF INSTANCE`` runs only the master sync daemon
while that VRRP instance is MASTER and only the backup one otherwise (keepalived.conf(5),
global_defs; its ipvs_syncd_master / ipvs_syncd_backup).  With keepalived for VRRP
only (director does the balancing), ``dirctl vrrp-notify`` does the same from the
instance's or the sync group's ``notify_master`` / ``notify_backup`` /
``notify_fault`` / ``notify_stop`` scripts, talking to directord over its control
socket.  This module is the plan (pure: no I/O); director.cli.vrrp carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from director.model.config import ConfigError
from director.model.sync import DaemonConf

# VRRP state (keepalived's notify words) -> (sync daemon to stop, sync daemon to run).
# A director leaving MASTER for FAULT listens as a backup, as keepalived's
# vrrp_state_leave_master starts the backup daemon whatever the new state; STOP
# (keepalived ending) stops the master daemon and leaves the backup listening.
ROLES: dict[str, tuple[str, str | None]] = {
    "MASTER": ("backup", "master"),
    "BACKUP": ("master", "backup"),
    "FAULT": ("master", "backup"),
    "STOP": ("master", None),
}


def vrrp_state(words: list[str]) -> str:
    """The VRRP state of a notify call: ``STATE`` alone (``notify_master "dirctl
    vrrp-notify master ..."``) or keepalived's ``notify`` arguments ``INSTANCE|GROUP
    NAME STATE [PRIORITY]``."""
    if len(words) == 1:
        state = words[0]
    elif len(words) in (3, 4) and words[0].upper() in ("INSTANCE", "GROUP"):
        state = words[2]
    else:
        raise ConfigError(
            "expected a VRRP state (master, backup, fault, stop) or keepalived's notify "
            f"arguments (INSTANCE|GROUP NAME STATE [PRIORITY]), not {' '.join(words)!r}"
        )
    if state.upper() not in ROLES:
        raise ConfigError(f"VRRP state must be one of {', '.join(ROLES).lower()}, not {state!r}")
    return state.upper()


def same_settings(running: dict[str, Any], want: DaemonConf) -> bool:
    """Whether a running daemon (as ``list --daemon`` reports it, the kernel's defaults
    filled in) has the settings asked for; a maxlen of 0 asks for the default."""
    keys = ("mcast_ifn", "syncid", "mcast_group", "mcast_port", "mcast_ttl")
    if any(running.get(k) != getattr(want, k) for k in keys):
        return False
    return want.sync_maxlen in (0, running.get("sync_maxlen"))


@dataclass(frozen=True, slots=True)
class Step:
    verb: str  # "stop-daemon" or "start-daemon"
    args: dict[str, Any]


def plan(state: str, conf: DaemonConf, running: list[dict[str, Any]]) -> list[Step]:
    """The control requests that take the daemons from ``running`` to the role of VRRP
    ``state``: the other role's daemon stopped first (a director never sends and
    receives as one role twice), then this role's started with ``conf``'s settings,
    or restarted if it runs with others.  Nothing when they are as asked."""
    stop, start = ROLES[state]
    by_state = {r["state"]: r for r in running}
    steps: list[Step] = []
    if stop in by_state:
        steps.append(Step("stop-daemon", {"state": stop}))
    if start is not None:
        now = by_state.get(start)
        wanted = DaemonConf(**{**conf.as_dict(), "state": start})
        if now is not None and not same_settings(now, wanted):
            steps.append(Step("stop-daemon", {"state": start}))
            now = None
        if now is None:
            steps.append(Step("start-daemon", wanted.as_dict()))
    return steps

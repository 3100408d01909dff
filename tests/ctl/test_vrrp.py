"""dirctl vrrp-notify's plan: the sync daemon's role by VRRP state, as keepalived's
lvs_sync_daemon runs it (keepalived.conf(5), global_defs lvs_sync_daemon: "if the
vrrp instance is in master state, only the master sync daemon will run, if the vrrp
instance is not master, only the backup sync daemon will run")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from director.ctl.vrrp import plan, vrrp_state
from director.model.config import ConfigError
from director.model.sync import parse_daemon

CONF = parse_daemon({"state": "master", "mcast_ifn": "int0", "syncid": "7"})


def running(state: str, **over: Any) -> dict[str, Any]:
    """A daemon as ``list --daemon`` reports it (the kernel's maxlen default filled in)."""
    row = {"state": state, "mcast_ifn": "int0", "syncid": 7, "sync_maxlen": 1472,
           "mcast_group": "224.0.0.81", "mcast_port": 8848, "mcast_ttl": 1}  # fmt: skip
    return {**row, **over}


def steps(state: str, now: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(s.verb, s.args["state"]) for s in plan(state, CONF, now)]


def test_master_stops_the_backup_and_starts_the_master() -> None:
    assert steps("MASTER", [running("backup")]) == [
        ("stop-daemon", "backup"), ("start-daemon", "master"),
    ]  # fmt: skip
    (start,) = [s for s in plan("MASTER", CONF, []) if s.verb == "start-daemon"]
    assert start.args == {**CONF.as_dict(), "state": "master"}


@pytest.mark.parametrize("state", ["BACKUP", "FAULT"])
def test_backup_and_fault_stop_the_master_and_start_the_backup(state: str) -> None:
    assert steps(state, [running("master")]) == [
        ("stop-daemon", "master"), ("start-daemon", "backup"),
    ]  # fmt: skip
    assert steps(state, []) == [("start-daemon", "backup")]


def test_stop_leaves_the_backup_listening() -> None:
    assert steps("STOP", [running("master"), running("backup")]) == [("stop-daemon", "master")]
    assert steps("STOP", [running("backup")]) == []


def test_nothing_to_do_when_the_role_runs_already_with_these_settings() -> None:
    assert steps("MASTER", [running("master")]) == []
    assert steps("BACKUP", [running("backup")]) == []


def test_a_daemon_with_other_settings_is_started_again() -> None:
    assert steps("MASTER", [running("master", syncid=8)]) == [
        ("stop-daemon", "master"), ("start-daemon", "master"),
    ]  # fmt: skip
    assert steps("BACKUP", [running("backup", mcast_ifn="eth1")]) == [
        ("stop-daemon", "backup"), ("start-daemon", "backup"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("words", "state"),
    [
        (["master"], "MASTER"),
        (["BACKUP"], "BACKUP"),
        # keepalived's `notify` script arguments: GROUP|INSTANCE NAME STATE PRIORITY
        (["GROUP", "DIRECTOR", "MASTER"], "MASTER"),
        (["INSTANCE", "VI_OUT", "FAULT", "150"], "FAULT"),
    ],
)
def test_notify_arguments(words: list[str], state: str) -> None:
    assert vrrp_state(words) == state


@pytest.mark.parametrize(
    ("words", "reason"),
    [
        (["primary"], "VRRP state must be"),
        (["GROUP", "G", "DELETED"], "VRRP state must be"),
        (["master", "backup"], "expected a VRRP state"),
    ],
)
def test_bad_notify_arguments(words: list[str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        vrrp_state(words)


def test_a_directord_that_does_not_answer_is_waited_for_then_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from director.cli.dirctl import run

    sock = tmp_path / "control.sock"
    start = time.monotonic()
    argv = ["--socket", str(sock), "vrrp-notify", "master", "--mcast-interface", "int0",
            "--wait", "0.6"]  # fmt: skip
    assert run(argv) == 3
    assert time.monotonic() - start >= 0.6
    assert "cannot reach directord" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no lock file where there is no socket

"""systemd/: `systemd-analyze verify` accepts the units, they are least privilege, and
a restart keeps the connections while a stop takes the hooks out.

verify checks that the Exec lines' binary exists.  The units name the install path
/usr/local/bin/directord, which a test machine does not have, so they are verified as
copies whose Exec lines point at this virtualenv's directord: the same files but for
that one path.  tests/netns/test_netns_units.py runs the units' command lines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.skips import unavailable

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "directord.service"
HOOKS_UNIT = UNIT.with_name("director-hooks.service")
INSTALLED = "/usr/local/bin/directord"


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_declares_notify_watchdog_and_least_privilege() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["all"]  # the supervisor is the main PID, the daemon its child
    assert d["Restart"] == ["on-failure"]
    assert "WatchdogSec" in d
    assert d["ExecStart"][0].split()[0] == INSTALLED
    assert set(d["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(d["AmbientCapabilities"][0].split()) <= {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert "AF_NETLINK" in d["RestrictAddressFamilies"][0].split()
    writable = " ".join(d["ReadWritePaths"]).split()
    assert "/var/lib/director" in writable and "/etc/director" in writable
    assert d["RuntimeDirectory"] == ["director"]
    assert d["RuntimeDirectoryMode"] == ["0700"]


def test_a_restart_keeps_the_hooks_and_a_stop_removes_them() -> None:
    """How systemd 252 tells `restart` from `stop` for the hooks.

    src/core/unit.c, unit_is_unneeded: a StopWhenUnneeded= unit is stopped once every
    unit that Requires= (or Wants=, BindsTo=) it is inactive, has no job and will not
    be restarted; `systemctl restart` keeps directord's job (JOB_RESTART, turned into
    JOB_START after the stop) until it is up again, so the hooks unit stays, and after
    `systemctl stop` nothing keeps it.  src/core/transaction.c,
    transaction_add_job_and_dependencies: along PartOf=/BindsTo= (UNIT_ATOM_PROPAGATE_STOP)
    and PropagatesStopTo= a restart is passed on (as try-restart, or as a stop), so
    none of those may tie the hooks unit to directord."""
    d, hooks = _directives(UNIT.read_text()), _directives(HOOKS_UNIT.read_text())
    argv = d["ExecStart"][0].split()
    assert argv[argv.index("--on-stop") + 1] == "keep"
    assert "director-hooks.service" in " ".join(d["Requires"]).split()
    assert "director-hooks.service" in " ".join(d["After"]).split()
    assert hooks["StopWhenUnneeded"] == ["yes"]
    assert "directord.service" in " ".join(hooks["Before"]).split()
    assert (hooks["Type"], hooks["RemainAfterExit"]) == (["oneshot"], ["yes"])
    assert "ExecStart" not in hooks  # the daemon installs its hooks itself
    stop = hooks["ExecStop"][0].split()
    assert stop[:2] == [INSTALLED, "--remove-hooks"]
    socket = argv[argv.index("--control-socket") + 1]
    assert stop[stop.index("--control-socket") + 1] == socket
    for propagates in ("PartOf", "BindsTo", "PropagatesStopTo", "StopPropagatedFrom"):
        assert propagates not in hooks and propagates not in d
    assert "Install" not in HOOKS_UNIT.read_text().split("[Service]")[1]  # pulled in only
    assert set(hooks["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN"}


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    directord = Path(sys.executable).parent / "directord"
    if not directord.exists():
        unavailable(f"{directord} missing: install the project into the venv (make venv)")
    copies = []
    for unit in (UNIT, HOOKS_UNIT):
        text = unit.read_text()
        assert f"{INSTALLED} " in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(f"={INSTALLED} ", f"={directord} "))
        copies.append(str(copy))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    # verify exits 0 on unknown keys, only warning: any complaint about our units fails.
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "directord.service" in line or "director-hooks.service" in line
    ]
    assert done.returncode == 0, done.stderr
    assert complaints == [], "\n".join(complaints)

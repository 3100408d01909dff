"""The daemon's life cycle in a namespace: notify, persistence, bad input, clean stop."""

from __future__ import annotations

import time

import pytest
from labtools import curl, ipset_names, iptables_save, save

from director.lab.daemon import Daemon


def test_notify_ready_watchdog_and_stopping(daemon: Daemon) -> None:
    assert "READY=1" in daemon.notifications
    deadline = time.monotonic() + 5
    while "WATCHDOG=1" not in daemon.notifications and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "WATCHDOG=1" in daemon.notifications
    assert daemon.stop() == 0, daemon.log()
    assert "STOPPING=1" in daemon.notifications


def test_rules_are_kept_across_a_restart(seeded: Daemon) -> None:
    before = save(seeded)
    assert "203.0.113.5:80" in before
    assert seeded.stop() == 0, seeded.log()
    again = Daemon(seeded.lab, seeded.workdir)
    again.start()
    try:
        assert save(again) == before
        got = curl(again.lab, f"http://{again.lab.vip}:21/")
        assert got.body == "rs2 198.18.0.3:21", got
    finally:
        assert again.stop() == 0, again.log()


BAD_COMMANDS = [
    ("add-service", "-t", "203.0.113.5:99999"),
    ("add-service", "-t", "not-an-address:80"),
    ("add-service", "-t", "203.0.113.6:80", "-s", "no-such-scheduler"),
    ("add-service", "-t", "203.0.113.5:80"),  # exists already
    ("add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.9:80", "-m", "-w", "-1"),
    ("add-server", "-t", "203.0.113.7:80", "-r", "198.18.0.9:80", "-m"),  # no such service
    ("edit-server", "-t", "203.0.113.5:80", "-r", "198.18.0.9:80", "-w", "2"),
    ("delete-service", "-t", "203.0.113.7:80"),
    ("set-timeout", "-5", "0", "0"),
]


@pytest.mark.parametrize("argv", BAD_COMMANDS, ids=" ".join)
def test_bad_input_exits_2_and_changes_nothing(seeded: Daemon, argv: tuple[str, ...]) -> None:
    before = save(seeded)
    timeouts = seeded.dirctl("list", "--timeout").stdout
    done = seeded.dirctl(*argv)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert save(seeded) == before
    assert seeded.dirctl("list", "--timeout").stdout == timeouts


def test_restore_with_one_bad_line_applies_nothing(seeded: Daemon) -> None:
    before = save(seeded)
    rules = "-A -t 203.0.113.6:80 -s rr\n-a -t 203.0.113.6:80 -r 198.18.0.2:80 -m\n-Q bogus\n"
    done = seeded.dirctl("restore", input=rules)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "3" in done.stderr  # names the line
    assert save(seeded) == before


def test_sigterm_exits_0_and_leaves_no_hooks(seeded: Daemon) -> None:
    lab = seeded.lab
    assert "NFQUEUE" in iptables_save(lab)
    assert seeded.stop() == 0, seeded.log()
    left = iptables_save(lab)
    assert "NFQUEUE" not in left, left
    assert "DIRECTOR" not in left, left
    assert not [name for name in ipset_names(lab) if name.startswith("director")]
    # With the hooks gone the VIP is the director's own address again: port 80 is refused.
    assert curl(lab, f"http://{lab.vip}/").code == 7

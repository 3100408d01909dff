"""The daemon's life cycle in a namespace: notify, persistence, bad input, clean stop."""

from __future__ import annotations

import time

from labtools import curl, ipset_names, iptables_save, save

from director.lab.daemon import Daemon


def test_notify_ready_watchdog_and_stopping(daemon: Daemon) -> None:
    assert "READY=1" in daemon.notifications
    deadline = time.monotonic() + 30  # one a second when the machine keeps up
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

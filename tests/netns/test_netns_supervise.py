"""Issue 6: a daemon that dies anyway is started again by its supervisor, and the
virtual services work again; SIGTERM still ends everything with status 0."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labtools import SEED_RULES_FILE, children, curl

from director.lab.daemon import Daemon
from director.lab.topology import Lab

METRICS = "127.0.0.1:9631"


def child_of(pid: int) -> int | None:
    pids = children(pid)
    return pids[0] if pids else None


def wait_for(what: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_killed_daemon_is_started_again(lab: Lab, tmp_path: Path) -> None:
    d = Daemon(lab, tmp_path / "d", ["--metrics-listen", METRICS])
    d.start()
    try:
        assert d.dirctl("restore", str(SEED_RULES_FILE)).returncode == 0
        assert curl(lab, f"http://{lab.vip}/").code == 0
        assert d.proc is not None
        first = wait_for(lambda: child_of(d.proc.pid))
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (c := child_of(d.proc.pid)) and c != first and c)
        wait_for(lambda: d.dirctl("list", "-n").returncode == 0)
        assert "203.0.113.5:80" in d.dirctl("list", "-n").stdout  # rules reloaded
        assert wait_for(lambda: curl(lab, f"http://{lab.vip}/").code == 0)
        scrape = lab.run(lab.director, ["curl", "-s", f"http://{METRICS}/metrics"]).stdout
        assert "director_worker_restarts_total 1.0" in scrape, scrape[-2000:]
        assert second != first
    finally:
        assert d.stop() == 0, d.log()
        d.kill()
    saved = lab.run(lab.director, ["iptables-save"]).stdout
    assert "NFQUEUE" not in saved and "DIRECTOR" not in saved

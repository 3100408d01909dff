"""Every iptables run of the hooks is bounded: ``-w`` waits a bounded time for the
xtables lock and the run itself is killed after IPTABLES_TIMEOUT (a wedged lock or
program fails the change, which the daemon undoes, instead of hanging its loop)."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from director.shell import netfilter
from director.shell.netfilter import HookError


def test_a_run_that_does_not_end_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netfilter, "IPTABLES_TIMEOUT", 0.3)
    started = time.monotonic()
    with pytest.raises(HookError, match="no result in"):
        netfilter._run(["sleep", "30"])
    assert time.monotonic() - started < 10  # wide: the point is that it ends


def test_every_iptables_program_is_asked_to_wait_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        seen.append(argv)
        assert kwargs.get("timeout") == netfilter.IPTABLES_TIMEOUT
        return subprocess.CompletedProcess(argv, 1, b"", b"iptables-restore: line 2 failed\n")

    monkeypatch.setattr(subprocess, "run", run)
    assert netfilter._iptables("-t", "filter", "-C", "INPUT", "-j", "ACCEPT") is False
    with pytest.raises(HookError, match="line 2 failed"):
        netfilter._restore("*filter\nCOMMIT\n")
    for argv in seen:
        wait = argv.index("-w")
        assert argv[wait + 1] == str(netfilter.IPTABLES_WAIT), argv


def test_a_timed_out_check_is_a_failed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", run)
    assert netfilter._iptables("-t", "filter", "-D", "INPUT", "-j", "X") is False

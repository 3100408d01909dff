"""Fixtures for the integration tests: the NAT lab in namespaces and the real daemon.

Every test here is marked ``netns``.  They need root, ``ip netns``, iptables with
NFQUEUE, curl and ab; where the machine lacks one, they are skipped and say which
(under CI=true they fail instead: tests/skips.py).
The lab is built once per module (its namespaces carry a per-run prefix, so parallel
runs do not collide); each test gets a daemon of its own with fresh files.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import METRICS, SEED_RULES_FILE, running

from director.lab import topology
from director.lab.daemon import Daemon, venv_program
from tests.skips import unavailable

REQUIRED_PROGRAMS = ("ip", "iptables", "iptables-save", "ipset", "curl", "ab", "ss")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.netns)


@functools.cache
def _missing() -> str | None:
    """Why the netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for program in REQUIRED_PROGRAMS:
        if shutil.which(program) is None:
            return f"{program} is not installed (make deps)"
    for program in ("directord", "dirctl"):
        try:
            venv_program(program)
        except FileNotFoundError as err:
            return str(err)
    probe = f"{topology.new_prefix('dprobe')}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        queued = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-A", "INPUT", "-p", "udp",
             "--dport", "9", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if queued.returncode:
            return f"iptables cannot add an NFQUEUE rule: {queued.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="session", autouse=True)
def _netns_capable() -> None:
    reason = _missing()
    if reason:
        unavailable(f"netns integration tests: {reason}")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[topology.Lab]:
    """The module's lab, its backends started: the NAT lab, or the kind the module's
    LAB_KIND names."""
    built = topology.build(kind=getattr(request.module, "LAB_KIND", "nat"))
    try:
        topology.start_backends(built)
        yield built
    finally:
        topology.teardown(built)


@pytest.fixture
def daemon(lab: topology.Lab, tmp_path: Path) -> Iterator[Daemon]:
    """A running directord in the lab's director namespace, stopped after the test."""
    with running(Daemon(lab, tmp_path / "director")) as d:
        yield d


@pytest.fixture
def metrics_daemon(lab: topology.Lab, tmp_path: Path) -> Iterator[Daemon]:
    """The same, serving its metrics at ``METRICS`` in the director's namespace."""
    with running(Daemon(lab, tmp_path / "director", ["--metrics-listen", METRICS])) as d:
        yield d


@pytest.fixture(scope="module")
def shared_seeded(lab: topology.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One seeded daemon for a whole module, for tests that must change nothing."""
    d = Daemon(lab, tmp_path_factory.mktemp("shared") / "director")
    d.start()
    try:
        done = d.dirctl("restore", str(SEED_RULES_FILE))
        assert done.returncode == 0, done.stderr
        yield d
    finally:
        code = d.stop()
        d.kill()
        assert code == 0, f"directord exited {code} on SIGTERM:\n{d.log()}"


@pytest.fixture
def seeded(daemon: Daemon) -> Daemon:
    """The daemon with SPEC §4's example restored from rules/seed-nat.rules."""
    done = daemon.dirctl("restore", str(SEED_RULES_FILE))
    assert done.returncode == 0, done.stderr
    return daemon

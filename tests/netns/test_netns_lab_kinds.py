"""The DR, TUN and mixed labs: built with their real servers prepared, and removed
entirely by name alone (as `dirctl lab down --name` does), decapsulators included."""

from __future__ import annotations

import subprocess

import pytest

from director.lab import topology
from director.realserver import host


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("kind", ["dr", "tun", "mixed"])
def test_lab_kind_builds_and_teardown_by_name_removes_everything(kind: str) -> None:
    lab = topology.build(kind=kind)
    try:
        assert set(lab.namespaces) <= _namespaces()
        assert (lab.router is not None) == (kind != "dr")
        for rs in lab.real_servers:
            status = topology.realserver(lab, rs, "status").stdout
            if rs.method == "nat":
                assert status.strip() == "realserver: down", status
            else:
                assert f"method {rs.method}" in status and "MISSING" not in status, status
            if rs.remote:
                route = lab.run(rs.netns, ["ip", "route", "show", "default"]).stdout
                assert topology.ROUTER_REMOTE in route, route
        pids = [
            pid
            for ns in lab.namespaces
            for pid in subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True
            ).stdout.split()
        ]
        expected = sum(rs.method == "tun" for rs in lab.real_servers)
        assert len(pids) == expected, pids  # one decapsulator per TUN real server
    finally:
        topology.teardown(topology.Lab.named(lab.prefix))  # by name: kind unknown
    assert not [n for n in _namespaces() if n.startswith(f"{lab.prefix}-")]
    # Gone, or a zombie for whoever reaps orphans here.
    assert not [pid for pid in pids if host.decap_running(int(pid))]

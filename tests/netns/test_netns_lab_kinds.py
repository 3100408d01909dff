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


@pytest.mark.parametrize("kind", ["nat6", "dr6", "tun6"])
def test_ipv6_lab_is_the_same_shape_dual_stack(kind: str) -> None:
    """nat6, dr6 and tun6: every real server answers the client over IPv6 and IPv4
    through the director's (and the router's) forwarding, which is on for IPv6 in the
    lab's routing namespaces only; the lab's VIP is the IPv6 one."""
    lab = topology.build(kind=kind)
    try:
        topology.start_backends(lab)
        assert (lab.vip, lab.client_addr, lab.family) == (topology.VIP6, topology.CLIENT_ADDR6, 6)
        assert (lab.router is not None) == (kind == "tun6")
        routers = {lab.director, *([lab.router] if lab.router else [])}
        for ns in lab.namespaces:
            forwarding = topology.get_sysctl(ns, "net.ipv6.conf.all.forwarding")
            assert forwarding == ("1" if ns in routers else "0"), ns
        for rs in lab.real_servers:
            for addr in (rs.addr, rs.addr4):
                url = f"http://{topology.addr_port(addr, 8000)}/"
                done = lab.run(lab.client, ["curl", "-sSg", "--max-time", "5", url], check=False)
                assert done.stdout.split() == [rs.name, f"{addr}:8000"], (
                    url, done.stderr)  # fmt: skip
            if rs.method != "nat":
                status = topology.realserver(lab, rs, "status").stdout
                assert f"method {rs.method}" in status and lab.vip in status, status
    finally:
        topology.teardown(lab)
    assert not [n for n in _namespaces() if n.startswith(f"{lab.prefix}-")]

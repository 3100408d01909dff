"""Issue 3 end to end on the labs: all three methods in one service, TUN to real
servers two routed hops away, and the local node.

The mixed lab has rs1 198.18.0.2 (NAT), rs2 198.18.0.3 (DR, VIP on lo) and rs3
198.19.0.2 (TUN behind the router, userspace decapsulator); each backend answers
with its name and the address:port it was reached at, so a DR or TUN answer names the
VIP (the packet arrived unchanged) and a NAT one the real server's own address.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from labtools import ab, curl
from socat32 import PORT, need_socat, transfer

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP


LAB_KIND = "mixed"  # conftest's lab fixture builds this kind


def _restore(d: Daemon, rules: str) -> None:
    done = d.dirctl("restore", input=rules)
    assert done.returncode == 0, done.stderr


def test_one_service_mixing_nat_dr_and_tun_reaches_every_real_server(daemon: Daemon) -> None:
    lab = daemon.lab
    _restore(daemon, lab.rules(port=80, scheduler="rr"))
    answers = collections.Counter(curl(lab, f"http://{VIP}/").body for _ in range(18))
    assert answers == {
        "rs1 198.18.0.2:80": 6,  # NAT: the destination was rewritten to the real server
        f"rs2 {VIP}:80": 6,  # DR: the packet arrived unchanged, on the VIP
        f"rs3 {VIP}:80": 6,  # TUN: decapsulated, on the VIP
    }, answers
    listing = daemon.dirctl("list", "-n").stdout
    for rs, word in (("198.18.0.2:80", "Masq"), ("198.18.0.3:80", "Route"),
                     ("198.19.0.2:80", "Tunnel")):  # fmt: skip
        assert any(line.split()[1:3] == [rs, word] for line in listing.splitlines()), listing


def test_mixed_service_under_load_with_keepalive(daemon: Daemon) -> None:
    lab = daemon.lab
    _restore(daemon, lab.rules(port=80, scheduler="rr"))
    for keepalive in (False, True):
        result = ab(lab, f"http://{VIP}/", n=600, c=6, keepalive=keepalive)
        assert result["exit"] == "0", result
        assert result["Complete requests"] == "600", result
        assert result["failures"] == "0", result


@pytest.mark.parametrize("rs_name", ["rs2", "rs3"])
def test_32_random_bytes_over_dr_and_over_tun_two_routed_hops_away(
    daemon: Daemon, rs_name: str, tmp_path: Path
) -> None:
    need_socat()
    lab = daemon.lab
    rs = next(r for r in lab.real_servers if r.name == rs_name)
    flag = topology.IPVSADM_FLAG[rs.method]
    _restore(daemon, f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {rs.addr}:{PORT} {flag}\n")
    if rs.remote:  # two hops: director -> router -> real server
        hops = lab.run(lab.director, ["ip", "route", "get", rs.addr]).stdout
        assert f"via {topology.ROUTER_INSIDE}" in hops, hops
    sent, got, client = transfer(lab.client, rs.netns, VIP, tmp_path)
    assert got == sent, f"{rs.method} to {rs.addr}: got {got.hex() or 'nothing'} ({client})"


def test_tun_keepalive_load_all_decapsulated_and_answered(
    daemon: Daemon,
) -> None:
    lab = daemon.lab
    rs3 = next(r for r in lab.real_servers if r.name == "rs3")
    _restore(daemon, f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {rs3.addr}:80 -i\n")
    result = ab(lab, f"http://{VIP}/", n=300, c=3, keepalive=True)
    assert (result["exit"], result["Complete requests"], result["failures"]) == ("0", "300", "0")
    status = topology.realserver(lab, rs3, "status").stdout
    assert "running" in status and "NOT RUNNING" not in status, status


def test_local_node_is_served_by_the_directors_own_stack(daemon: Daemon, tmp_path: Path) -> None:
    """A real server whose address is the director's own (198.18.0.1): a socat
    listening in the director namespace receives the client's bytes, and the daemon
    counted the connection for that real server (it, not plain routing, handled it)."""
    need_socat()
    lab = daemon.lab
    local = topology.DIRECTOR_INSIDE
    _restore(daemon, f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {local}:{PORT} -g\n")
    sent, got, client = transfer(lab.client, lab.director, VIP, tmp_path)
    assert got == sent, f"local node: got {got.hex() or 'nothing'} ({client})"
    stats = daemon.dirctl("list", "-n", "--stats", "-t", f"{VIP}:{PORT}").stdout
    row = next(line.split() for line in stats.splitlines() if f"{local}:{PORT}" in line)
    assert int(row[2]) == 1, stats  # Conns


def test_local_node_is_listed_as_local_like_ipvsadm(daemon: Daemon) -> None:
    local = topology.DIRECTOR_INSIDE
    _restore(daemon, f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {local}:{PORT} -g\n")
    listing = daemon.dirctl("list", "-n").stdout
    rows = [line.split()[1:3] for line in listing.splitlines() if line.startswith("  ->")]
    assert [f"{local}:{PORT}", "Local"] in rows, listing

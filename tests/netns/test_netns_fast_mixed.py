"""Issue 12: one service mixing NAT, DR and TUN real servers on the kernel fast path.
The NAT server's connections are conntrack's ([kernel] in `list -c`), the DR and TUN
servers' keep the every-packet path (the worker sends their packets itself)."""

from __future__ import annotations

import collections
from pathlib import Path

from labtools import ab, curl, running

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP


LAB_KIND = "mixed"  # conftest's lab fixture builds this kind


def test_nat_on_the_fast_path_dr_and_tun_on_the_every_packet_path(
    lab: topology.Lab, tmp_path: Path
) -> None:
    with running(Daemon(lab, tmp_path / "d", ["--fast-path", "kernel"])) as d:
        assert d.dirctl("restore", input=lab.rules(port=80, scheduler="rr")).returncode == 0
        answers = collections.Counter(curl(lab, f"http://{VIP}/").body for _ in range(18))
        assert answers == {"rs1 198.18.0.2:80": 6, f"rs2 {VIP}:80": 6, f"rs3 {VIP}:80": 6}
        rows = [line for line in d.dirctl("list", "-n", "-c").stdout.splitlines()
                if line.startswith("TCP")]  # fmt: skip
        kernel = {line.split()[5] for line in rows if line.endswith("[kernel]")}
        other = {line.split()[5] for line in rows if not line.endswith("[kernel]")}
        assert kernel == {"198.18.0.2:80"} and other == {"198.18.0.3:80", "198.19.0.2:80"}
        for keepalive in (False, True):
            result = ab(lab, f"http://{VIP}/", n=600, c=6, keepalive=keepalive)
            assert (result["exit"], result["Complete requests"], result["failures"]) == (
                "0", "600", "0"), result  # fmt: skip

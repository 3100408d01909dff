"""A missing route never stops the director (issue 10).

The DR lab with the director's LAN (br0) down before the daemon starts: no route leads
to either real server.  IPVS takes real servers whatever the routes say
(net/netfilter/ipvs/ip_vs_ctl.c, ip_vs_new_dest) and their packets fail later
(ip_vs_xmit.c, __ip_vs_get_out_rt); the daemon must start on such a rules file, list
the servers as unreachable, count them in the metrics and, once the link is up again,
carry traffic without a restart (the route comes back as a netlink announcement).
"""

from __future__ import annotations

import time
from pathlib import Path

from labtools import curl

from director.lab import topology
from director.lab.daemon import Daemon

METRICS = "127.0.0.1:9109"  # inside the director's namespace


LAB_KIND = "dr"  # conftest's lab fixture builds this kind


def _rows(d: Daemon) -> dict[str, str]:
    listing = d.dirctl("list", "-n")
    assert listing.returncode == 0, listing.stderr
    return {
        line.split()[1]: line for line in listing.stdout.splitlines() if line.startswith("  ->")
    }


def _gauges(d: Daemon) -> dict[str, float]:
    text = d.lab.run(d.lab.director, ["curl", "-sS", f"http://{METRICS}/metrics"]).stdout
    found = {}
    for line in text.splitlines():
        if line.startswith("director_backend_unreachable{"):
            labels, value = line.rsplit(" ", 1)
            addr = labels.split('remote_address="')[1].split('"')[0]
            found[addr] = float(value)
    return found


def _until(what: str, check: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what}"
        time.sleep(0.1)


def test_daemon_starts_with_dr_servers_unreachable_and_serves_once_the_link_is_up(
    lab: topology.Lab, tmp_path: Path
) -> None:
    lab.run(lab.director, ["ip", "link", "set", "br0", "down"])
    try:
        gone = lab.run(lab.director, ["ip", "route", "get", "198.18.0.2"], check=False)
        assert gone.returncode != 0, gone.stdout  # really no route to the real servers
        d = Daemon(lab, tmp_path / "director", extra_args=("--metrics-listen", METRICS))
        d.workdir.mkdir(parents=True)
        d.rules_path.write_text(lab.rules(port=80))
        d.start()  # before the fix: exit 2, "no route to real server 198.18.0.2"
    except BaseException:
        lab.run(lab.director, ["ip", "link", "set", "br0", "up"])
        raise
    try:
        rows = _rows(d)
        for rs in lab.real_servers:
            row = rows[f"{rs.addr}:80"]
            assert row.split()[2] == "Route" and row.endswith("[unreachable]"), row
        _until("gauges at 1", lambda: _gauges(d) == {"198.18.0.2": 1.0, "198.18.0.3": 1.0})
        # A real ipvsadm-save file restores as ipvsadm would take it, link down or not.
        assert d.dirctl("clear").returncode == 0
        restored = d.dirctl("restore", input=lab.rules(port=80, scheduler="wlc"))
        assert restored.returncode == 0, restored.stderr

        lab.run(lab.director, ["ip", "link", "set", "br0", "up"])
        _until("listed reachable", lambda: "[unreachable]" not in "".join(_rows(d).values()))
        answers = set()
        for _ in range(4):
            got = curl(lab, f"http://{lab.vip}/")
            assert got.code == 0, (got, d.log())
            answers.add(got.body)
        # DR: the packets reached the real servers unchanged, on the VIP.
        assert answers <= {f"rs1 {lab.vip}:80", f"rs2 {lab.vip}:80"} and answers, answers
        _until("gauges at 0", lambda: _gauges(d) == {"198.18.0.2": 0.0, "198.18.0.3": 0.0})
        assert "unreachable: no route" in d.log()
    finally:
        lab.run(lab.director, ["ip", "link", "set", "br0", "up"])
        code = d.stop()
        d.kill()
    assert code == 0, d.log()

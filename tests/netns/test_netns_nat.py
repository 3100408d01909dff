"""Issue 2 end to end: SPEC §4's seed example through the real daemon, real iptables
and NFQUEUE, real curl and ab, and real servers in their own namespaces."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from labtools import CURL_REFUSED, SEED_RULES_FILE, ab, connections, curl

from director.lab.daemon import Daemon
from director.lab.topology import Lab

RS1_80 = "rs1 198.18.0.2:80"
RS2_8000 = "rs2 198.18.0.3:8000"  # port 80 -> 8000: the translation shows in the answer
RS2_21 = "rs2 198.18.0.3:21"


def test_port_80_is_balanced_over_both_servers_with_port_translation(seeded: Daemon) -> None:
    lab = seeded.lab
    answers = collections.Counter(curl(lab, f"http://{lab.vip}/").body for _ in range(20))
    assert set(answers) == {RS1_80, RS2_8000}, answers
    assert min(answers.values()) >= 5, answers


def test_port_21_goes_to_the_second_server(seeded: Daemon) -> None:
    lab = seeded.lab
    for _ in range(3):
        got = curl(lab, f"http://{lab.vip}:21/")
        assert (got.code, got.body) == (0, RS2_21), got


def test_other_vip_ports_are_refused_at_once(seeded: Daemon) -> None:
    lab = seeded.lab
    for port in (23, 8000, 443):
        got = curl(lab, f"http://{lab.vip}:{port}/", max_time=5)
        assert got.code == CURL_REFUSED, got
        assert got.seconds < 1.5, f"port {port}: refused only after {got.seconds:.2f} s"


def test_list_shows_the_seed_services(seeded: Daemon) -> None:
    text = seeded.dirctl("list", "-n").stdout
    services = [line.split()[:2] for line in text.splitlines() if line.startswith("TCP ")]
    assert ["TCP", "203.0.113.5:80"] in services, text
    assert ["TCP", "203.0.113.5:21"] in services, text
    for rs in ("198.18.0.2:80", "198.18.0.3:8000", "198.18.0.3:21"):
        assert any(line.split()[:3] == ["->", rs, "Masq"] for line in text.splitlines()), text


def test_2000_short_connections_then_the_table_empties(lab: Lab, tmp_path: Path) -> None:
    # As in IPVS, `set-timeout` sets only ESTABLISHED, FIN_WAIT and UDP; TIME_WAIT (120 s)
    # and CLOSE (10 s) are the daemon's --tcp-timeout settings, shortened here so that
    # the test need not wait two minutes for the table to empty.
    d = Daemon(lab, tmp_path / "short", ["--tcp-timeout", "time_wait=3",
                                         "--tcp-timeout", "close=3"])  # fmt: skip
    d.start()
    try:
        assert d.dirctl("restore", str(SEED_RULES_FILE)).returncode == 0
        result = ab(lab, f"http://{lab.vip}/", n=2000, c=10)
        assert result["exit"] == "0", result
        assert result["Complete requests"] == "2000", result
        assert result["failures"] == "0", result
        assert "Non-2xx responses" not in result, result
        assert len(connections(d)) > 0

        done = d.dirctl("set-timeout", "2", "2", "2")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 30
        left = connections(d)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = connections(d)
        assert left == [], f"{len(left)} connections still listed, e.g. {left[:3]}"
    finally:
        assert d.stop() == 0, d.log()

"""IPv6 end to end in the nat6 lab (issue 14): SPEC §4's seed example over IPv6
(rules/seed-nat6.rules), persistence with ``-M 64`` (two clients of one /64 get one
real server, as ip_vs_sched_persist masks the client with ipv6_addr_prefix), and a
save/restore round trip of IPv6 rules through the daemon and its restart."""

from __future__ import annotations

import collections
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import CURL_REFUSED, SEED6_RULES_FILE, curl, running

from director.lab import topology
from director.lab.daemon import Daemon
from director.lab.topology import Lab

LAB_KIND = "nat6"
RS1_80 = "rs1 2001:db8:2::2:80"
RS2_8000 = "rs2 2001:db8:2::3:8000"  # port 80 -> 8000: the translation shows in the answer
RS2_21 = "rs2 2001:db8:2::3:21"
# A second client address in the client's /64 (SPEC §3: clients of 2001:db8:1::/64).
NEIGHBOUR = "2001:db8:1::11"


@pytest.fixture
def seeded6(daemon: Daemon) -> Daemon:
    done = daemon.dirctl("restore", str(SEED6_RULES_FILE))
    assert done.returncode == 0, done.stderr
    return daemon


def test_seed_example_over_ipv6(seeded6: Daemon) -> None:
    """Port 80 balanced over both servers with port translation, 21 to rs2, every other
    port of the VIP refused at once (the client sees a reset, not a timeout)."""
    lab = seeded6.lab
    answers = collections.Counter(curl(lab, lab.url()).body for _ in range(10))
    assert set(answers) == {RS1_80, RS2_8000}, answers
    assert min(answers.values()) >= 3, answers
    got = curl(lab, lab.url(21))
    assert (got.code, got.body) == (0, RS2_21), got
    for port in (23, 8000):
        got = curl(lab, lab.url(port), max_time=5)
        assert got.code == CURL_REFUSED, got
        assert got.seconds < 1.5, f"port {port}: refused only after {got.seconds:.2f} s"
    listed = seeded6.dirctl("list", "-n").stdout
    assert "TCP  [2001:db8:1::100]:80 rr\n" in listed, listed
    assert "  -> [2001:db8:2::3]:8000         Masq    1      " in listed, listed


@pytest.fixture
def neighbour(lab: Lab) -> Iterator[str]:
    """A second address of the client, in its /64."""
    lab.run(lab.client, ["ip", "addr", "add", f"{NEIGHBOUR}/64", "dev", "eth0", "nodad"])
    try:
        yield NEIGHBOUR
    finally:
        lab.run(lab.client, ["ip", "addr", "del", f"{NEIGHBOUR}/64", "dev", "eth0"], check=False)


def _from(lab: Lab, source: str, url: str) -> str:
    done = lab.run(lab.client, ["curl", "-sSg", "--max-time", "5", "--interface", source, url],
                   check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


def test_persistence_with_a_64_bit_mask_keeps_a_slash_64_on_one_server(
    daemon: Daemon, neighbour: str
) -> None:
    """-p 300 -M 64 with rr over two servers: both clients of 2001:db8:1::/64 get the
    server the first was given, and the one template is the masked client's."""
    lab = daemon.lab
    vip = topology.addr_port(lab.vip, 80)
    done = daemon.dirctl("restore", input=textwrap.dedent(f"""\
        -A -t {vip} -s rr -p 300 -M 64
        -a -t {vip} -r [2001:db8:2::2]:80 -m
        -a -t {vip} -r [2001:db8:2::3]:80 -m
        """))  # fmt: skip
    assert done.returncode == 0, done.stderr
    served = {_from(lab, source, lab.url()) for source in
              (lab.client_addr, neighbour, lab.client_addr, neighbour)}  # fmt: skip
    assert len(served) == 1, served  # rr alone would have alternated
    listed = daemon.dirctl("list", "-n", "-c").stdout
    # The template: client port 0 (its state word is the daemon's, see test_netns_persist).
    templates = [line for line in listed.splitlines()[2:] if line.split()[3].endswith("]:0")]
    assert len(templates) == 1, listed
    assert templates[0].split()[3:5] == ["[2001:db8:1::]:0", vip], listed
    assert "TCP  [2001:db8:1::100]:80 rr persistent 300 mask 64\n" in daemon.dirctl(
        "list", "-n").stdout  # fmt: skip


def test_lab_demo_nat6_balances_the_ipv6_seed() -> None:
    """``dirctl lab demo --method nat6``: its own lab, SPEC §4's example over IPv6
    through the real daemon, then nothing left behind."""
    from director.lab.daemon import venv_program

    argv = [venv_program("dirctl"), "lab", "demo", "--method", "nat6", "--requests", "4"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "dirctl restore rules/seed-nat6.rules" in done.stdout, done.stdout
    assert "TCP  [2001:db8:1::100]:80 rr" in done.stdout, done.stdout
    assert "     rs1: 2, rs2: 2\n" in done.stdout, done.stdout
    assert f"$ curl -g http://[{topology.VIP6}]:21/  ->  {RS2_21}\n" in done.stdout


RULES6 = """\
-A -t [2001:db8:1::100]:80 -s rr
-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:8080 -m -w 1
-a -t [2001:db8:1::100]:80 -r [2001:db8:2::3]:80 -m -w 2
-A -u [2001:db8:1::100]:53 -s sh -p 600 -M 64
-a -u [2001:db8:1::100]:53 -r [2001:db8:2::2]:53 -g -w 1
-A -f 1 -6 -s wlc -p 360
-a -f 1 -6 -r [2001:db8:2::2]:0 -g -w 1
-A -f 1 -s rr
-A -t 203.0.113.5:8080 -s rr
-a -t 203.0.113.5:8080 -r [2001:db8:2::3]:8080 -i -w 1 --tun-type ipip
"""


def test_save_and_restore_of_ipv6_rules_through_the_daemon(lab: Lab, tmp_path: Path) -> None:
    """IPv6 services of each kind, an IPv6 fwmark service beside an IPv4 one of the
    same mark and a mixed-family tunnel: ``dirctl save`` gives back what was restored,
    and so does a new daemon started on the rules file the first one wrote."""
    work = tmp_path / "director"
    with running(Daemon(lab, work)) as d:
        done = d.dirctl("restore", input=RULES6)
        assert done.returncode == 0, done.stderr
        assert d.dirctl("save").stdout == RULES6
        listed = d.dirctl("list", "-n").stdout
    assert "FWM  1 IPv6 wlc persistent 360\n" in listed, listed
    with running(Daemon(lab, work)) as again:
        assert again.dirctl("save").stdout == RULES6
        assert again.dirctl("list", "-n").stdout == listed


def test_ipv6_fwmark_service_spans_two_ports_apart_from_the_ipv4_one(daemon: Daemon) -> None:
    """-f 7 -6 over both IPv6 servers beside an IPv4 -f 7 over rs1's IPv4 address: the
    client's IPv6 packets marked 7 by ip6tables go to the IPv6 service only
    (ip_vs_svc_fwm_find matches the family), on each port they were sent to."""
    lab = daemon.lab
    mark = ["-t", "mangle", "-A", "PREROUTING", "-d", f"{lab.vip}/128", "-p", "tcp",
            "-m", "multiport", "--dports", "80,21", "-j", "MARK", "--set-mark", "7"]  # fmt: skip
    lab.run(lab.director, ["ip6tables", *mark])
    try:
        done = daemon.dirctl("restore", input=textwrap.dedent("""\
            -A -f 7 -s rr
            -a -f 7 -r 198.18.0.2 -m
            -A -f 7 -6 -s rr
            -a -f 7 -6 -r [2001:db8:2::2]:0 -m
            -a -f 7 -6 -r [2001:db8:2::3]:0 -m
            """))  # fmt: skip
        assert done.returncode == 0, done.stderr
        answers = collections.Counter(curl(lab, lab.url(port)).body for port in (80, 80, 21, 21))
        assert set(answers) == {
            "rs1 2001:db8:2::2:80", "rs2 2001:db8:2::3:80",
            "rs1 2001:db8:2::2:21", "rs2 2001:db8:2::3:21",
        }, answers  # fmt: skip
        stats = daemon.dirctl("list", "-n", "--stats").stdout
        lines = stats.splitlines()
        six = next(line for line in lines if line.startswith("FWM  7 IPv6 "))
        four = next(line for line in lines if line.startswith("FWM  7 ") and "IPv6" not in line)
        assert (six.split()[3], four.split()[2]) == ("4", "0"), stats  # the Conns column
    finally:
        lab.run(lab.director, ["ip6tables", *["-D" if a == "-A" else a for a in mark]])

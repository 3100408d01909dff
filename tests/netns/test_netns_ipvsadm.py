"""director-ipvsadm against a real directord in the nat6 lab's director namespace,
replaying the transcript captured from ipvsadm 1.31 (kernel 6.1) in the IPVS VM
(tests/ctl/ipvsadm131/vm_ipvsadm_cli.out, job ipvsadm_cli.sh): the manual page's
examples 1 (NAT) and 2 (fwmark), IPv6 services and servers, every list layout, -S and
ipvsadm-save with and without -n, edits and bad command lines, each giving ipvsadm's
stdout, stderr and exit code byte for byte; then -R, which is atomic here.

Every director-ipvsadm runs under ``unshare --net``: a network namespace of its own with
no address and no route, so the lookups of the commands without -n (getservbyport from
/etc/services, gethostbyaddr) send nothing anywhere; the control socket is a Unix
socket, reached from any namespace.  It runs as ``ipvsadm`` (a symlink, as the README
installs it), so its messages name ``ipvsadm`` as the captured ones do.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from labtools import SEED_RULES_FILE, hold

from director.lab import topology
from director.lab.daemon import Daemon, venv_program

LAB_KIND = "nat6"  # conftest's module lab: dual stack, 2001:db8:2::/64 behind it
CAPTURES = Path(__file__).resolve().parents[1] / "ctl" / "ipvsadm131"

pytestmark = pytest.mark.netns


@dataclass(frozen=True)
class Capture:
    program: str
    argv: list[str]
    stdout: str
    stderr: str
    status: int


def _transcript(name: str = "vm_ipvsadm_cli.out") -> list[Capture]:
    found: list[Capture] = []
    text = (CAPTURES / name).read_text()
    for block in text.split("### ")[1:]:
        head, _, rest = block.partition("\n")
        if "--- rc " not in rest:
            continue
        out, _, rest = rest.removeprefix("--- stdout\n").partition("--- stderr\n")
        err, _, rest = rest.partition("--- rc ")
        words = shlex.split(head)
        found.append(Capture(words[0], words[1:], out, err, int(rest.split()[0])))
    return found


class Ipvsadm:
    """director-ipvsadm (and -save, -restore) as ``ipvsadm`` symlinks, talking to
    ``daemon``, each run in a network namespace of its own."""

    def __init__(self, daemon: Daemon, bin_dir: Path) -> None:
        bin_dir.mkdir(exist_ok=True)
        for name, script in (
            ("ipvsadm", "director-ipvsadm"),
            ("ipvsadm-save", "director-ipvsadm-save"),
            ("ipvsadm-restore", "director-ipvsadm-restore"),
        ):
            link = bin_dir / name
            if not link.exists():
                link.symlink_to(venv_program(script))
        self.bin_dir = bin_dir
        self.env = {**os.environ, "DIRECTOR_SOCKET": str(daemon.socket_path)}

    def __call__(
        self, program: str, *argv: str, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "--net", str(self.bin_dir / program), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )


@pytest.fixture
def ipvsadm(daemon: Daemon, tmp_path: Path) -> Ipvsadm:
    return Ipvsadm(daemon, tmp_path / "bin")


def test_the_transcript_byte_for_byte(ipvsadm: Ipvsadm) -> None:
    """Every command of the transcript captured from ipvsadm 1.31 (kernel 6.1) in the
    IPVS VM, in its order, against one daemon: the same stdout, stderr and exit code.
    The difference is director's, said where it is: -R (test_restore_*)."""
    captures = _transcript()
    assert len(captures) >= 100
    replayed = 0
    for capture in captures:
        got = ipvsadm(capture.program, *capture.argv)
        seen = (got.stdout, got.stderr, got.returncode)
        where = f"{capture.program} {' '.join(capture.argv)}"
        assert seen == (capture.stdout, capture.stderr, capture.status), where
        replayed += 1
    assert replayed >= 100


def _saved() -> str:
    return next(c for c in _transcript() if c.argv == ["-Sn"]).stdout


def test_restore_of_a_bad_line_changes_nothing(ipvsadm: Ipvsadm) -> None:
    """ipvsadm -R with "bogus line" as its third line: ipvsadm 1.31 in the IPVS VM
    printed "Try `ipvsadm -h' ..." and exited 255 after applying the two lines before
    it; director-ipvsadm prints the same and exits 255, having applied nothing (the
    house rule: the daemon's restore is all or nothing)."""
    text = "-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m -w 1\nbogus line\n"
    got = ipvsadm("ipvsadm", "-R", stdin=text)
    assert (got.stderr, got.returncode) == (
        "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n",
        255,
    )
    assert ipvsadm("ipvsadm", "-Sn").stdout == ""


def test_restore_round_trip_and_duplicates(ipvsadm: Ipvsadm) -> None:
    """ipvsadm-save -n | ipvsadm-restore | ipvsadm -Sn gives the save back, as it did
    in the IPVS VM (ipvsadm 1.31); restoring it again is refused by its first line,
    "Service already exists" with ipvsadm's 255, and changes nothing (ipvsadm went on
    and printed one refusal per line)."""
    saved = _saved()
    done = ipvsadm("ipvsadm-restore", stdin=saved)
    assert (done.stdout, done.stderr, done.returncode) == ("", "", 0)
    assert ipvsadm("ipvsadm", "-Sn").stdout == saved
    assert ipvsadm("ipvsadm-save", "-n").stdout == saved
    again = ipvsadm("ipvsadm", "-R", stdin=saved)
    assert (again.stderr, again.returncode) == ("Service already exists\n", 255)
    assert ipvsadm("ipvsadm", "-Sn").stdout == saved
    # What the save says and what the combined spellings say is the same table.
    ipvsadm("ipvsadm", "-C")
    spelled = ipvsadm("ipvsadm", "-R", stdin=saved.replace("-A -t ", "-At "))
    assert spelled.returncode == 0, spelled.stderr
    assert ipvsadm("ipvsadm", "-Sn").stdout == saved


def test_a_daemon_that_does_not_answer(tmp_path: Path, daemon: Daemon) -> None:
    """No daemon on the socket is ipvsadm's "Can't initialize ipvs" (status 2); -h and
    --version need none."""
    run = Ipvsadm(daemon, tmp_path / "bin")
    run.env["DIRECTOR_SOCKET"] = str(tmp_path / "nothing.sock")
    got = run("ipvsadm", "-Ln")
    assert got.returncode == 2 and got.stderr.startswith("Can't initialize ipvs: ")
    assert run("ipvsadm", "--version").returncode == 0


def _block(listing: str, service: str) -> list[str]:
    """The lines of one service's block in a -L listing."""
    lines = listing.splitlines()
    start = lines.index(service)
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ->")), len(lines)
    )
    return lines[start:end]


def test_tun_info_nosort_and_edit_server_defaults(ipvsadm: Ipvsadm) -> None:
    """vm_extra.out (job ipvsadm_extra.sh), captured from ipvsadm 1.31 (kernel 6.1) in
    the IPVS VM: --tun-info's column, -e resetting what it is not given (-g, weight 1,
    no thresholds) and -Lcn --persistent-conn's header, byte for byte; --nosort's real
    servers newest first, as the kernel lists them (its service order is its hash
    table's: director lists services in configuration order, so only each service's
    block is compared)."""
    for capture in _transcript("vm_extra.out"):
        got = ipvsadm(capture.program, *capture.argv)
        seen = (got.stdout, got.stderr, got.returncode)
        if "--nosort" in capture.argv:
            assert got.returncode == 0, got.stderr
            for service in ("TCP  203.0.113.5:80 wrr", "TCP  203.0.113.7:80 rr"):
                assert _block(got.stdout, service) == _block(capture.stdout, service)
            continue
        assert seen == (capture.stdout, capture.stderr, capture.status), capture.argv


def test_sync_daemon_commands(ipvsadm: Ipvsadm) -> None:
    """vm_daemon.out (job ipvsadm_daemon.sh), captured from ipvsadm 1.31 (kernel 6.1) in
    the IPVS VM: --start-daemon and --stop-daemon with their options, -L --daemon, and
    their refusals, against director's sync daemon on the director namespace's lo."""
    for capture in _transcript("vm_daemon.out"):
        got = ipvsadm(capture.program, *capture.argv)
        seen = (got.stdout, got.stderr, got.returncode)
        assert seen == (capture.stdout, capture.stderr, capture.status), capture.argv


def test_restore_keeps_directors_check_lines(ipvsadm: Ipvsadm, daemon: Daemon) -> None:
    """A file of dirctl save --checks restored through ipvsadm-restore keeps its health
    checks: the ``# director-check`` lines go to the daemon's restore as they are (to
    ipvsadm they are comments)."""
    for args in (
        ("add-service", "-t", "203.0.113.5:80", "-s", "rr"),
        ("add-server", "-t", "203.0.113.5:80", "-r", "198.18.0.2:80", "-m"),
        ("add-check", "-t", "203.0.113.5:80", "--type", "tcp", "--interval", "30"),
    ):
        assert daemon.dirctl(*args).returncode == 0
    saved = daemon.dirctl("save", "--checks").stdout
    assert "# director-check " in saved
    assert ipvsadm("ipvsadm", "-C").returncode == 0
    done = ipvsadm("ipvsadm-restore", stdin=saved)
    assert (done.stderr, done.returncode) == ("", 0)
    assert daemon.dirctl("save", "--checks").stdout == saved


# print_conn's row: "%-3s %-6s %-11s %-18s %-18s %s" (ipvsadm.c), expiry as mm:ss;
# the nat6 lab's client reaches the IPv6 VIP.
CONN_ROW = re.compile(
    r"TCP (\d\d:\d\d)  ESTABLISHED \[(2001:db8:1::10)\]:(\w+) +\[(2001:db8:1::100)\]:(\w+) +"
    r"\[(2001:db8:2::2)\]:(\w+)"
)
SIX = "-A -t [2001:db8:1::100]:80 -s rr\n-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:80 -m\n"


def _print_conn(expire: str, src: str, vip: str, dest: str) -> str:
    return f"{'TCP':<3} {expire:<6} {'ESTABLISHED':<11} {src:<18} {vip:<18} {dest}"


def _service_name(port: int) -> str:
    try:
        return socket.getservbyport(port, "tcp")
    except OSError:
        return str(port)


def test_connections_numeric_and_named(ipvsadm: Ipvsadm, lab: topology.Lab) -> None:
    """-Lcn and -Lc of a held IPv6 connection, the services restored by ipvsadm-restore
    from rules/seed-nat.rules (its '#' lines comments) and two IPv6 lines: list_conn's
    header as captured from ipvsadm 1.31 in the IPVS VM, each row as print_conn formats
    it, numeric with -n, with /etc/services' names of the ports without (getservbyport,
    as ipvsadm; the addresses have no reverse name)."""
    done = ipvsadm("ipvsadm-restore", stdin=SEED_RULES_FILE.read_text() + SIX)
    assert (done.stderr, done.returncode) == ("", 0)
    header = next(c for c in _transcript() if c.argv == ["-Lcn"]).stdout
    with ExitStack() as held:
        hold(lab, lab.client_addr, held)
        numeric = ipvsadm("ipvsadm", "-Lcn").stdout
        named = ipvsadm("ipvsadm", "-Lc").stdout
    cport = 0
    for text, names in ((numeric, False), (named, True)):
        assert text.startswith(header), text
        rows = text[len(header) :].splitlines()
        assert len(rows) == 1, text
        found = CONN_ROW.fullmatch(rows[0])
        assert found is not None, rows
        expire, caddr, client_port, vaddr, _, daddr, _ = found.groups()
        cport = cport or int(client_port)
        shown = [_service_name(p) if names else str(p) for p in (cport, 80, 80)]
        assert rows[0] == _print_conn(
            expire, f"[{caddr}]:{shown[0]}", f"[{vaddr}]:{shown[1]}", f"[{daddr}]:{shown[2]}"
        )
    assert ":http " in named and ":80 " in numeric

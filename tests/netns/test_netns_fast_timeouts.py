"""Issue 12: ``dirctl set-timeout`` (ipvsadm --set) governs the timeouts conntrack gives
the fast path's connections, through the timeout policies director-tcp and director-udp
(director/shell/cttimeout.py) that the raw table's CT rules attach to them.

The figures are read from the kernel: ``conntrack -L`` inside the director's namespace
(the third column: the seconds the entry has left) and the policies themselves over
nfnetlink_cttimeout.  ESTABLISHED takes tcp, both UDP states take udp
(tcp_timeout_nlattr_to_obj / udp_timeout_nlattr_to_obj put the figures of the states a
policy names; udp_packet keeps a flow answered within 2 s on UNREPLIED); an update in
place reaches a connection attached before it at its next packet (the entry's timeout
extension points at the policy: nf_ct_timeout_lookup).  Conntrack's own defaults here
would be ESTABLISHED 432000 s, UDP 30 s unreplied and 120 s replied.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from labtools import helper_argv, running

from director.lab.daemon import Daemon
from director.lab.topology import Lab

FAST = ["--fast-path", "kernel"]
UDP_PORT = 5300

# A TCP connection to the VIP (argv: VIP, port): "up" once open, then one byte ("G", the
# start of a request the backend waits to see the end of) for each line on stdin, and
# "sent" after it; closed when stdin closes.
TALK = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print("up", s.getsockname()[1], flush=True)
for line in sys.stdin:
    s.sendall(b"G")
    print("sent", flush=True)
"""

# The director namespace's timeout policies (run with the venv's python inside it).
POLICIES = """
from director.shell.cttimeout import CtTimeouts
with CtTimeouts() as ct:
    print({p.name: (dict(p.timeouts), p.use) for p in ct.dump()})
"""


@contextmanager
def talking(lab: Lab) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A connection from the client to VIP:80 and its client port, open until the block
    ends."""
    proc = subprocess.Popen(
        lab.exec_argv(lab.client, [sys.executable, "-c", TALK, lab.vip, "80"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        word, port = proc.stdout.readline().split()
        assert word == "up"
        yield proc, int(port)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def poke(proc: subprocess.Popen[str]) -> None:
    """One byte on the connection (a packet each way: the byte and its ACK)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "sent\n"


def entry(lab: Lab, proto: str, sport: int, dport: int) -> tuple[int, str]:
    """Seconds left and (TCP) state of conntrack's entry of the client's flow from
    ``sport`` to VIP:``dport``, from `conntrack -L` in the director's namespace."""
    out = lab.run(lab.director, ["conntrack", "-L", "-p", proto, "--orig-src", lab.client_addr,
                                 "--orig-dst", lab.vip, "--orig-port-src", str(sport),
                                 "--orig-port-dst", str(dport)]).stdout  # fmt: skip
    lines = [line.split() for line in out.splitlines() if line.startswith(proto)]
    assert len(lines) == 1, out
    fields = lines[0]
    return int(fields[2]), fields[3] if proto == "tcp" else ""


def policies(lab: Lab) -> dict[str, tuple[dict[int, int], int]]:
    out = lab.run(lab.director, [sys.executable, "-c", POLICIES]).stdout
    found: dict[str, tuple[dict[int, int], int]] = ast.literal_eval(out)
    return found


@contextmanager
def udp_echo(lab: Lab) -> Iterator[None]:
    rs = lab.real_servers[0]
    serve = ["serve", "--bind", rs.addr, "--port", str(UDP_PORT), "--seconds", "60"]
    echo = subprocess.Popen(lab.exec_argv(rs.netns, helper_argv("udpecho.py", *serve)),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert echo.stderr is not None and echo.stderr.readline().strip() == "ready"
        yield
    finally:
        echo.kill()
        echo.wait()


# One datagram to VIP:UDP_PORT from a given client port (argv: VIP, port, client port).
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[3])))
s.settimeout(5)
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(100)[0].decode())
"""


def ask(lab: Lab, client_port: int) -> None:
    argv = [sys.executable, "-c", ASK, lab.vip, str(UDP_PORT), str(client_port)]
    assert lab.run(lab.client, argv).stdout.strip() == "ping"


def test_set_timeout_governs_the_fast_flows_conntrack_timeouts(lab: Lab, tmp_path: Path) -> None:
    rs = lab.real_servers[0].addr
    udp = f"{lab.vip}:{UDP_PORT}"
    rules = (f"-A -t {lab.vip}:80 -s rr\n-a -t {lab.vip}:80 -r {rs}:80 -m\n"
             f"-A -u {udp} -s rr\n-a -u {udp} -r {rs}:{UDP_PORT} -m\n")  # fmt: skip
    with running(Daemon(lab, tmp_path / "d", FAST)) as d, udp_echo(lab), ExitStack() as held:
        assert d.dirctl("restore", input=rules).returncode == 0
        # The daemon's figures from the start (ipvsadm's defaults 900 120 300), each policy
        # held by its CT rule (a reference of its own, and the rule's template's).
        found = policies(lab)
        assert found == {"director-tcp": (found["director-tcp"][0], 2),
                         "director-udp": ({1: 300, 2: 300}, 2)}, found  # fmt: skip
        assert {k: found["director-tcp"][0][k] for k in (3, 4)} == {3: 900, 4: 120}
        assert d.dirctl("set-timeout", "30", "20", "10").returncode == 0
        tcp = policies(lab)["director-tcp"][0]
        assert (tcp[3], tcp[4], policies(lab)["director-udp"][0]) == (30, 20, {1: 10, 2: 10})

        first, first_port = held.enter_context(talking(lab))
        left, state = entry(lab, "tcp", first_port, 80)
        assert state == "ESTABLISHED" and 20 < left <= 30, (left, state)
        ask(lab, 40001)
        left, _ = entry(lab, "udp", 40001, UDP_PORT)
        assert 0 < left <= 10, left

        # Again: new flows take the new figures, and so does the connection already there
        # at its next packet (the policy is updated in place).
        assert d.dirctl("set-timeout", "300", "20", "100").returncode == 0
        _, second_port = held.enter_context(talking(lab))
        left, state = entry(lab, "tcp", second_port, 80)
        assert state == "ESTABLISHED" and 30 < left <= 300, (left, state)
        poke(first)
        left, state = entry(lab, "tcp", first_port, 80)
        assert state == "ESTABLISHED" and 30 < left <= 300, (left, state)
        ask(lab, 40002)
        left, _ = entry(lab, "udp", 40002, UDP_PORT)
        assert 10 < left <= 100, left
    # The daemon stopped (and removed its hooks): the policies are gone.
    assert policies(lab) == {}


def test_every_packet_mode_makes_no_policy(lab: Lab, tmp_path: Path) -> None:
    """Fast path off: set-timeout is the worker's alone; conntrack gets no policy."""
    with running(Daemon(lab, tmp_path / "d")) as d:
        rs = lab.real_servers[0].addr
        restore = f"-A -t {lab.vip}:80 -s rr\n-a -t {lab.vip}:80 -r {rs}:80 -m\n"
        assert d.dirctl("restore", input=restore).returncode == 0
        assert d.dirctl("set-timeout", "30", "20", "10").returncode == 0
        assert policies(lab) == {}
        save = d.dirctl("save", "-n").stdout
        assert "--set 30 20 10" in save, save

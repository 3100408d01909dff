"""Issue 13: three directors active/active behind ECMP, with the real BIRD and ExaBGP.

The ECMP lab (``director.lab.ecmp``): a router namespace running BIRD 2 with one eBGP
session per director (hold time 3 s) and the VIP's equal routes merged into one
multipath route, hashed by L4 (``fib_multipath_hash_policy = 1`` in the router only);
three directors, each running directord (one DR service, mh with ``mh-port``, the same
two real servers, a TCP check, ``sloppy_tcp`` on) and ExaBGP, whose process is
``dirctl announce``.  The real servers serve a file with ``filesrv.py``.

A director's death here is its directord killed (kill -9 of the supervisor and its
child, as a crash takes them): ExaBGP on that host lives on, its ``dirctl announce``
finds the control socket dead and withdraws the VIP, and the router drops that next
hop well within the hold time.  (A host that dies whole takes its BGP session with it:
the router drops the route when the hold time runs out, or at once if the kernel
closed the session's socket.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import FileServer, connections, random_file

from director.ctl import protocol
from director.lab import ecmp, topology
from director.lab.daemon import Daemon
from tests.skips import unavailable

BLOB_SIZE = 3 << 20  # 3 MiB a download
RATE = "300K"  # curl --limit-rate: some 10 s a download, long enough to kill one mid-way
CLIENT_RMEM = "4096 65536 131072"  # net.ipv4.tcp_rmem in the client's namespace
DOWNLOADS = 8
VICTIM = "dir2"


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    where = tmp_path_factory.mktemp("blob")
    return where, random_file(where / "blob", BLOB_SIZE)


@pytest.fixture(scope="module")
def elab(
    tmp_path_factory: pytest.TempPathFactory, blob_dir: tuple[Path, str]
) -> Iterator[ecmp.EcmpLab]:
    missing = ecmp.missing_program()
    if missing:
        unavailable(f"{missing} is not installed (.ci/install-deps test: bird2, exabgp)")
    built = ecmp.build(workdir=tmp_path_factory.mktemp("ecmp"))
    servers: list[FileServer] = []
    try:
        # A small receive buffer in the client, so that a slow reader (curl
        # --limit-rate) makes a slow transfer on the wire too, and its ACKs go through
        # the directors from start to end (not a file buffered whole in a second).
        topology.set_sysctl(built.client, "net.ipv4.tcp_rmem", CLIENT_RMEM)
        for rs in built.base.real_servers:
            servers.append(FileServer(built.base, rs.netns, 80, blob_dir[0]))
        ecmp.start(built)
        ecmp.wait_nexthops(built, {d.addr for d in built.directors}, timeout=30)
        yield built
    finally:
        for server in servers:
            server.close()
        ecmp.teardown(built)


def director(lab: ecmp.EcmpLab, name: str) -> ecmp.DirectorHost:
    return next(d for d in lab.directors if d.name == name)


def ask(d: Daemon, conns: bool = False) -> dict[str, Any]:
    """The daemon's ``list`` snapshot, straight from its control socket (a file this
    process reaches from any namespace): faster than a dirctl run per poll."""
    result = protocol.request(str(d.socket_path), "list", {"conns": conns}, 5.0)
    assert isinstance(result, dict)
    return result


def service_conns(d: Daemon) -> int:
    """Connections the director scheduled to the VIP's service (``list --stats``)."""
    (svc,) = ask(d)["services"]
    return int(svc["stats"]["conns"])


def holder(lab: ecmp.EcmpLab, port: int, timeout: float = 5.0) -> str:
    """The director whose table has the client's connection from ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, d in lab.daemons.items():
            if any(c["cport"] == port for c in ask(d, conns=True)["conns"]):
                return name
        time.sleep(0.05)
    raise AssertionError(f"no director has the connection from port {port}")


def new_connections(lab: ecmp.EcmpLab, count: int, max_time: float = 1.0) -> list[int]:
    """``count`` new connections to the VIP at once (curl, a GET of /): their exit
    codes."""
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", str(max_time),
            f"http://{lab.vip}/"]  # fmt: skip
    procs = [subprocess.Popen(lab.base.exec_argv(lab.client, argv), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(count)]  # fmt: skip
    return [p.wait(timeout=max_time + 10) for p in procs]


def test_the_router_has_one_multipath_route_and_l4_hashing(elab: ecmp.EcmpLab) -> None:
    """Every director announces the VIP; the router's kernel route to it is one route
    with three next hops, and the hash policy is L4 in the router and untouched (0)
    in the directors' namespaces."""
    assert ecmp.nexthops(elab) == {d.addr for d in elab.directors}
    assert topology.get_sysctl(elab.router, "net.ipv4.fib_multipath_hash_policy") == "1"
    for d in elab.directors:
        assert topology.get_sysctl(d.netns, "net.ipv4.fib_multipath_hash_policy") == "0"
    shown = ecmp.birdc(elab, "show protocols").stdout
    assert shown.count("Established") == len(elab.directors), shown
    # A packet without a hash of its own (one from a wire) is hashed by its ports:
    # the flows of one client to one VIP spread over all three.
    hops = {ecmp.director_for(elab, port) for port in range(42000, 42030)}
    assert hops == {d.addr for d in elab.directors}


def test_a_director_without_a_healthy_real_server_withdraws_the_vip(
    elab: ecmp.EcmpLab,
) -> None:
    """Both real servers quiesced on dir3 (weight 0, as a failed check leaves them):
    it serves nothing, so its ExaBGP withdraws the VIP; weights back, announced again."""
    d3 = director(elab, "dir3")
    daemon = elab.daemons[d3.name]
    all_hops = {d.addr for d in elab.directors}
    try:
        for rs in elab.base.real_servers:
            done = daemon.dirctl("edit-server", "-t", f"{elab.vip}:80", "-r", f"{rs.addr}:80",
                                 "-w", "0")  # fmt: skip
            assert done.returncode == 0, done.stderr
        ecmp.wait_nexthops(elab, all_hops - {d3.addr})
    finally:
        for rs in elab.base.real_servers:
            daemon.dirctl("edit-server", "-t", f"{elab.vip}:80", "-r", f"{rs.addr}:80", "-w", "1")
    ecmp.wait_nexthops(elab, all_hops)


def test_a_frozen_director_is_dropped_when_the_hold_time_runs_out(elab: ecmp.EcmpLab) -> None:
    """A host that hangs (every process of dir3 stopped: no withdrawal, no BGP
    keepalive, its kernel still holding the session open) is dropped by the router when
    the hold time runs out, not before; new connections all succeed then.  Its processes
    continued, it announces the VIP again."""
    d3 = director(elab, "dir3")
    all_hops = {d.addr for d in elab.directors}
    pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", d3.netns], capture_output=True,
                                           text=True, check=True).stdout.split()]  # fmt: skip
    assert pids
    frozen_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        dropped = ecmp.wait_nexthops(elab, all_hops - {d3.addr}, timeout=ecmp.HOLD_TIME + 10)
        # BIRD's hold timer: no sooner than the hold time less a keepalive's second.
        assert dropped >= ecmp.HOLD_TIME - 1.5, f"dropped after {dropped:.2f} s"
        assert new_connections(elab, 6) == [0] * 6
        took = time.monotonic() - frozen_at
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    ecmp.wait_nexthops(elab, all_hops, timeout=30)
    print(
        f"\nfrozen director dropped {dropped:.2f} s after it stopped (hold time "
        f"{ecmp.HOLD_TIME} s); new connections all answered {took:.2f} s after"
    )


def download(lab: ecmp.EcmpLab, port: int, out: Path) -> subprocess.Popen[bytes]:
    """A slow GET of the blob through the VIP, from the client's ``port``."""
    argv = ["curl", "-sS", "--local-port", str(port), "--limit-rate", RATE,
            "--max-time", "60", "-o", str(out), f"http://{lab.vip}/blob"]  # fmt: skip
    return subprocess.Popen(lab.base.exec_argv(lab.client, argv), stderr=subprocess.PIPE)


def test_downloads_over_three_directors_survive_the_death_of_one(
    elab: ecmp.EcmpLab, blob_dir: tuple[Path, str], tmp_path: Path
) -> None:
    """Eight slow DR downloads, three through each of dir1 and dir2 and two through
    dir3 (each director's statistics count its own); dir2's directord is killed with
    SIGKILL mid-way.  Its ExaBGP withdraws the VIP, the router rehashes the flows over
    the others, which take them mid-way (sloppy_tcp) to the same real server (mh over
    identical real servers): every download ends whole (SHA-256), and new connections
    succeed within the hold time of the kill.

    Which director a flow reaches is the router's hash of it; in namespaces that is the
    client socket's own random hash, which the packet carries over the veth (the L4
    policy uses a hash the skb has: net/ipv4/route.c fib_multipath_hash), not one of its
    ports.  So the downloads are started one by one and one that lands on a director
    with its share already is dropped and started again from another port."""
    _, digest = blob_dir
    victim = director(elab, VICTIM)
    survivors = [d for d in elab.directors if d is not victim]
    share = {"dir1": 3, VICTIM: 3, "dir3": 2}
    before = {name: service_conns(d) for name, d in elab.daemons.items()}
    plan: dict[int, str] = {}  # client port -> the director that took the download
    downloads: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for port in range(43000, 43060):
            if len(plan) == DOWNLOADS:
                break
            out = tmp_path / f"got-{port}"
            proc = download(elab, port, out)
            name = holder(elab, port)
            if sum(1 for n in plan.values() if n == name) < share[name]:
                plan[port] = name
                downloads[port] = (proc, out)
            else:
                proc.kill()
                proc.wait()
                if proc.stderr:
                    proc.stderr.close()
        assert Counter(plan.values()) == Counter(share), f"downloads per director: {plan}"
        # Each director's statistics saw (at least) its own downloads' connections.
        seen = {n: service_conns(d) - before[n] for n, d in elab.daemons.items()}
        assert all(seen[n] >= share[n] for n in share), f"connections per director {seen}"
        # Under way: some of every file arrived, none is complete.
        deadline = time.monotonic() + 10
        while not all(out.exists() and out.stat().st_size > 256 << 10
                      for _, out in downloads.values()):  # fmt: skip
            assert time.monotonic() < deadline, "the downloads did not get going"
            time.sleep(0.1)
        ended = {port: (proc.returncode, proc.stderr.read().decode() if proc.stderr else "")
                 for port, (proc, _) in downloads.items() if proc.poll() is not None}  # fmt: skip
        assert not ended, f"downloads ended before the kill: {ended}"

        killed_at = time.monotonic()
        ecmp.crash_director(elab, victim)
        withdrawn = ecmp.wait_nexthops(elab, {d.addr for d in survivors}, timeout=15)
        # New connections: all of a batch succeed, within the hold time of the kill.
        while True:
            codes = new_connections(elab, 6)
            after = time.monotonic() - killed_at
            if codes == [0] * 6 or after > 15:
                break
        assert codes == [0] * 6, f"new connections {after:.1f} s after the kill: {codes}"
        assert after <= ecmp.HOLD_TIME, f"new connections only {after:.1f} s after the kill"

        for port, (proc, out) in downloads.items():
            proc.wait(timeout=60)
            err = proc.stderr.read().decode().strip() if proc.stderr else ""
            assert proc.returncode == 0, f"download from port {port} ({plan[port]}): {err}"
            assert out.stat().st_size == BLOB_SIZE
            assert hashlib.sha256(out.read_bytes()).hexdigest() == digest, f"port {port}"
    finally:
        for proc, _ in downloads.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    # The victim's flows went on through the survivors, which made entries for them
    # from their mid-flow packets.
    taken = {c["cport"] for d in survivors for c in connections(elab.daemons[d.name])}
    moved = {port for port, name in plan.items() if name == VICTIM}
    assert moved <= taken, f"dir2's flows {sorted(moved)}, entries on the others {sorted(taken)}"
    print(
        f"\nVIP withdrawn from the router {withdrawn:.2f} s after the kill; "
        f"new connections all succeeded {after:.2f} s after it"
    )

    # The director back (a newcomer with the same rules): announced again.
    elab.daemons[VICTIM].start()
    ecmp.wait_nexthops(elab, {d.addr for d in elab.directors}, timeout=20)

"""Issue 11, workers on every core: ``directord --workers 2`` in the NAT lab.

The clients are eight addresses of the client namespace (203.0.113.10-17).  Without a
persistent service the shards are cut by the address's lowest bit (director/core/shard.py),
so .10, .12, .14, .16 are worker 0's and the odd ones worker 1's: requests reach queue 0
or 2, replies queue 1 or 3.  Every test drives real curl, real TCP, the real daemon.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from labtools import METRICS, ask, by_reason, hold, running, scrape, transfer

from director.lab.daemon import Daemon
from director.lab.topology import Lab

CLIENTS = [f"203.0.113.{i}" for i in range(10, 18)]  # .10 is the lab's own address
RS = ("198.18.0.2", "198.18.0.3")
TWO = ["--workers", "2"]


@pytest.fixture(scope="module")
def clients(lab: Lab) -> list[str]:
    """The client namespace with the addresses .11-.17 beside its own .10."""
    for addr in CLIENTS[1:]:
        lab.run(lab.client, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
    return CLIENTS


def restore(d: Daemon, text: str) -> None:
    done = d.dirctl("restore", input=textwrap.dedent(text))
    assert done.returncode == 0, done.stderr


def nat_service(lab: Lab, scheduler: str, extra: str = "") -> str:
    return f"-A -t {lab.vip}:80 -s {scheduler} {extra}\n" + "".join(
        f"-a -t {lab.vip}:80 -r {rs}:80 -m\n" for rs in RS
    )


def fetch(lab: Lab, source: str) -> str:
    """The real server that answered a request from ``source`` (its page names it)."""
    done = lab.run(lab.client, ["curl", "-sS", "--max-time", "5", "--interface", source,
                                f"http://{lab.vip}/"], check=False)  # fmt: skip
    assert done.returncode == 0, f"from {source}: {done.stderr}"
    found = re.search(r"198\.18\.0\.\d+", done.stdout)
    assert found, done.stdout
    return found.group(0)


def listed_conns(d: Daemon) -> list[tuple[str, str, str]]:
    """(state, client address, real server address) of every entry `list -c` shows."""
    rows = []
    for line in d.dirctl("list", "-n", "-c").stdout.splitlines():
        fields = line.split()
        if fields[:1] in (["TCP"], ["UDP"]) and fields[6:] in ([], ["[kernel]"]):
            rows.append((fields[2], fields[3].rsplit(":", 1)[0], fields[5].rsplit(":", 1)[0]))
    return rows


def service_row(d: Daemon, *flags: str) -> list[str]:
    for line in d.dirctl("list", "-n", *flags).stdout.splitlines():
        if line.startswith("TCP"):
            return line.split()
    raise AssertionError("no TCP service listed")


def test_clients_spread_over_both_workers_and_each_connection_stays_on_one(
    lab: Lab, clients: list[str], tmp_path: Path
) -> None:
    with running(Daemon(lab, tmp_path / "d", [*TWO, "--metrics-listen", METRICS])) as d:
        restore(d, nat_service(lab, "rr"))
        for source in clients:
            for _ in range(2):
                fetch(lab, source)
        # Every connection is in a table, and the listing has all of them.
        conns = listed_conns(d)
        assert sorted(c for _, c, _ in conns) == sorted(clients * 2), conns
        # The board sums both workers' counters: 16 connections in the stats.
        assert service_row(d, "--stats")[2] == "16"
        time.sleep(1.5)  # a tick: the metrics sample is taken once a second
        families = scrape(lab, METRICS)
        packets = by_reason(families, "director_nfqueue_packets_total")
        # Requests reached both workers' queues (0 and 2), replies both reply queues.
        assert all(packets.get(q, 0) > 0 for q in ("0", "1", "2", "3")), packets
        # No packet met a worker that did not know its connection: nothing passed on
        # to the host's stack, nothing dropped.
        assert sum(by_reason(families, "director_passed_total").values()) == 0, families
        assert sum(by_reason(families, "director_drops_total").values()) == 0, families
        assert families["director_connection_entries"][""] == 16


def test_lc_sees_the_connections_of_both_workers(
    lab: Lab, clients: list[str], tmp_path: Path
) -> None:
    """A connection held open from worker 0's client, then one from worker 1's: lc
    must send the second to the other real server.  With one table per worker and no
    shared counts, worker 1 would see both servers idle and take the newest, the same
    one (ip_vs_lc.c: the first of equal overheads from the head of the list)."""
    with running(Daemon(lab, tmp_path / "d", TWO)) as d, ExitStack() as held:
        restore(d, nat_service(lab, "lc"))
        for source in clients[:4]:
            hold(lab, source, held)
            time.sleep(0.2)  # a pause between two connections, nothing more
        dests = {client: dest for state, client, dest in listed_conns(d)}
        assert len(dests) == 4, dests
        # 0 and 1 alternate, as 2 and 3 do: each new one goes to the server with fewer.
        assert dests[clients[0]] != dests[clients[1]], dests
        assert dests[clients[2]] != dests[clients[3]], dests
        active = [row.split()[4] for row in d.dirctl("list", "-n").stdout.splitlines()
                  if "->" in row and "198.18" in row]  # fmt: skip
        assert active == ["2", "2"], d.dirctl("list", "-n").stdout


def test_persistence_keeps_a_client_network_on_one_worker_and_one_server(
    lab: Lab, clients: list[str], tmp_path: Path
) -> None:
    """With -M 255.255.255.0 in the rules file at start, the shards are cut inside the
    /24: the whole client network is one worker's, which holds its template, so every
    client of it reaches the same real server."""
    d = Daemon(lab, tmp_path / "d", TWO)
    d.workdir.mkdir(parents=True)
    d.rules_path.write_text(nat_service(lab, "rr", "-p 60 -M 255.255.255.0"))
    with running(d):
        assert re.search(r"sharded by the address bits 0\.0\.1\.0", d.log()), d.log()
        chosen = {fetch(lab, source) for source in clients for _ in range(2)}
        assert len(chosen) == 1, chosen  # rr alone would alternate


@pytest.mark.parametrize("mode", [[], ["--fast-path", "kernel"]], ids=["every-packet", "fast"])
def test_a_persistent_service_added_later_moves_connections_to_their_new_workers(
    lab: Lab, clients: list[str], tmp_path: Path, mode: list[str]
) -> None:
    """Started without persistence, the shards are cut by the last bit; a service with
    -M 255.255.255.0 added at run time needs them inside the /24.  The entries whose
    clients change hands are moved: connections held open from both old shards carry
    on, each is listed once, and the new service's persistence holds for the network.
    On the fast path each worker then follows conntrack for its new clients: the held
    connections' ends reach the entries where they are now (none stays ESTABLISHED)."""
    with running(Daemon(lab, tmp_path / "d", [*TWO, *mode])) as d, ExitStack() as held:
        restore(d, nat_service(lab, "rr"))
        open_ones = {source: hold(lab, source, held) for source in clients[:2]}
        assert [ask(p) for p in open_ones.values()] == ["HTTP/1.1 200 OK"] * 2
        restore(d, f"""\
            -A -t {lab.vip}:81 -s rr -p 60 -M 255.255.255.0
            -a -t {lab.vip}:81 -r 198.18.0.2:80 -m
            -a -t {lab.vip}:81 -r 198.18.0.3:80 -m
            """)  # fmt: skip
        assert re.search(r"address bits 0\.0\.1\.0 now .*: \d+ entries moved", d.log()), d.log()
        # 203.0.113.x: bit 8 is the third octet's last, 1 (113): worker 1 has them all.
        assert [ask(p) for p in open_ones.values()] == ["HTTP/1.1 200 OK"] * 2
        listed = [client for _, client, _ in listed_conns(d)]
        assert sorted(listed) == sorted(clients[:2]), listed  # once each: the copies went
        chosen = set()
        for source in clients:
            done = lab.run(lab.client, ["curl", "-sS", "--max-time", "5", "--interface", source,
                                        f"http://{lab.vip}:81/"])  # fmt: skip
            chosen.add(re.findall(r"198\.18\.0\.\d+", done.stdout)[0])
        assert len(chosen) == 1, chosen
        held.close()  # the held connections end
        # Their events come within milliseconds; the dumps every 10 s would bring the
        # states too, so a worker deaf to its new clients shows mostly within 3 s.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            states = {state for state, client, _ in listed_conns(d) if client in clients[:2]}
            if states and "ESTABLISHED" not in states:
                break
            time.sleep(0.3)
        assert states and "ESTABLISHED" not in states, listed_conns(d)


def test_sh_chooses_as_with_one_worker(lab: Lab, clients: list[str], tmp_path: Path) -> None:
    """sh picks by the client address's hash over the real servers (ip_vs_sh.c): the
    same choice whichever worker makes it, so two workers choose as one does."""
    chosen: list[dict[str, str]] = []
    for workers in ("1", "2"):
        with running(Daemon(lab, tmp_path / f"d{workers}", ["--workers", workers])) as d:
            restore(d, nat_service(lab, "sh"))
            chosen.append({source: fetch(lab, source) for source in clients})
    assert chosen[0] == chosen[1]
    assert len(set(chosen[0].values())) == 2, chosen[0]  # both servers have clients


def test_a_restart_keeps_the_connections_of_both_workers(
    lab: Lab, clients: list[str], tmp_path: Path
) -> None:
    """Two 20 MB downloads, one from each worker's client, while the daemon is stopped
    (its table, both workers', saved; the hooks hold the traffic) and started again
    (each entry restored to the worker of its client)."""
    size = 20 << 20
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    blob.write_bytes(hashlib.sha256(b"workers").digest() * (size // 32))
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    workdir = tmp_path / "director"
    rules = "".join(
        f"-A -t {lab.vip}:{port} -s rr\n-a -t {lab.vip}:{port} -r {rs.addr}:{port} -m\n"
        for port in (8080, 8081)
    )
    args = [*TWO, "--on-stop", "keep"]
    first = Daemon(lab, workdir, args)
    try:
        first.start()
        restore(first, rules)
        with (
            transfer(lab, rs, blob, 8080, clients[0]) as even,
            transfer(lab, rs, blob, 8081, clients[1]) as odd,
        ):
            assert first.stop() == 0, first.log()
            assert "saved 2 connection entries" in first.log(), first.log()
            with running(Daemon(lab, workdir, args)) as second:
                for client in (even, odd):
                    out, _ = client.communicate(timeout=60)
                    got, digest = out.split()
                    assert (int(got), digest) == (size, expected)
                assert "restored 2 connection entries" in second.log(), second.log()
    finally:
        first.kill()
        cleanup = Daemon(lab, tmp_path / "cleanup")  # the hooks --on-stop keep left
        cleanup.start()
        cleanup.stop()


@pytest.fixture
def two_workers(lab: Lab, tmp_path: Path) -> Iterator[Daemon]:
    with running(Daemon(lab, tmp_path / "d", TWO)) as d:
        yield d


def test_a_worker_that_dies_is_started_again(
    lab: Lab, clients: list[str], two_workers: Daemon
) -> None:
    d = two_workers
    restore(d, nat_service(lab, "rr"))
    pid = d.pid
    assert pid is not None
    peers = [p for p in _children(pid) if "director.shell.peer" in _cmdline(p)]
    assert len(peers) == 1, peers
    os.kill(peers[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = [p for p in _children(pid) if "director.shell.peer" in _cmdline(p)]
        if again and again != peers:
            break
        d.dirctl("list", "-n")  # a request reaches the dead worker's socket
        time.sleep(0.2)
    else:
        raise AssertionError(f"no new worker:\n{d.log()}")
    # Worker 1's clients are served again, with the tables of now.
    for source in clients[:4]:
        fetch(lab, source)
    assert "worker 1 failed; starting it again" in d.log()


def _children(pid: int) -> list[int]:
    from labtools import children

    found = children(pid)
    # Under the supervisor, the daemon is the supervisor's child.
    return found + [grand for child in found for grand in children(child)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""

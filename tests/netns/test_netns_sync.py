"""Issue 13, the connection sync daemon between two real directords.

The NAT lab with a second director (``topology.add_peer_director``: namespace
``<prefix>-director2``, eth1 198.18.0.10 on the inside bridge): the first runs the
master sync daemon on br0, the second the backup on eth1, both with the same rules
and their default worker count.  Hostile datagrams come from rs1's namespace, a host
on the same LAN."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from labtools import (
    CURL_REFUSED,
    METRICS,
    by_reason,
    connections,
    curl,
    random_file,
    running,
    scrape,
    transfer,
)

from director.lab import topology
from director.lab.daemon import Daemon

SYNCID = 7


@pytest.fixture(scope="module")
def backup_lab(lab: topology.Lab) -> topology.Lab:
    return topology.add_peer_director(lab)


@pytest.fixture
def pair(
    lab: topology.Lab, backup_lab: topology.Lab, tmp_path: Path
) -> Iterator[tuple[Daemon, Daemon]]:
    """Master (in the director) and backup (in director2), the same rules, sync on."""
    master = Daemon(lab, tmp_path / "master", ["--metrics-listen", METRICS])
    backup = Daemon(backup_lab, tmp_path / "backup", ["--metrics-listen", METRICS])
    with running(master), running(backup):
        for d in (master, backup):
            assert d.dirctl("restore", input=lab.rules()).returncode == 0
        done = master.dirctl("start-daemon", "master", "--mcast-interface", "br0",
                             "--syncid", str(SYNCID))  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = backup.dirctl("start-daemon", "backup", "--mcast-interface", "eth1",
                             "--syncid", str(SYNCID))  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield master, backup


def client_ports(d: Daemon, lab: topology.Lab) -> set[int]:
    return {c["cport"] for c in connections(d) if c["caddr"] == lab.client_addr}


def test_the_backup_learns_the_masters_connections_within_3_s(
    lab: topology.Lab, pair: tuple[Daemon, Daemon]
) -> None:
    master, backup = pair
    for _ in range(4):
        assert curl(lab, f"http://{lab.vip}/").code == 0
    on_master = client_ports(master, lab)
    assert len(on_master) == 4
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and client_ports(backup, lab) != on_master:
        time.sleep(0.1)
    assert client_ports(backup, lab) == on_master, backup.dirctl("list", "-c", "-n").stdout
    # Each entry bound to the backup's own real server, as the master's.
    master_rs = {(c["cport"], c["daddr"]) for c in connections(master)}
    backup_rs = {(c["cport"], c["daddr"]) for c in connections(backup)}
    assert master_rs <= backup_rs
    text = backup.dirctl("list", "-c", "-n").stdout
    assert lab.client_addr in text
    families = scrape(backup.lab, METRICS)
    assert by_reason(families, "director_sync_entries_total")["received"] >= 4
    sent = scrape(master.lab, METRICS)  # every worker's sender, summed
    assert by_reason(sent, "director_sync_entries_total")["sent"] >= 4
    assert by_reason(sent, "director_sync_messages_total")["sent"] >= 1


# A host on the LAN that joins the group and prints the first sync datagram it hears.
CAPTURE = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("224.0.0.81", 8848))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("=4s4si", socket.inet_aton("224.0.0.81"), bytes(4),
                         socket.if_nametoindex("eth0")))
s.settimeout(10)
print("joined", flush=True)
print(s.recv(65535).hex(), flush=True)
"""


def test_a_captured_datagram_of_ours_reads_with_the_kernels_layout(
    lab: topology.Lab, pair: tuple[Daemon, Daemon]
) -> None:
    """What the master puts on the wire, heard by another host of the LAN and read
    by the offsets of struct ip_vs_sync_mesg and struct ip_vs_sync_v4
    (net/netfilter/ipvs/ip_vs_sync.c; tests/core/test_sync.py writes them out)."""
    listener = subprocess.Popen(
        lab.exec_argv(lab.real_servers[0].netns, [sys.executable, "-c", CAPTURE]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "joined\n"
        assert curl(lab, f"http://{lab.vip}/").code == 0
        data = bytes.fromhex(listener.communicate(timeout=15)[0].strip())
    finally:
        listener.kill()
    u = lambda o, n: int.from_bytes(data[o : o + n], "big")  # noqa: E731
    assert (data[0], data[1], u(2, 2), data[5], u(6, 2)) == (0, SYNCID, len(data), 1, 0)
    assert data[4] >= 1 and len(data) == 8 + 36 * data[4]  # IPv4 entries, no options
    e = 8
    assert (data[e], data[e + 1], u(e + 2, 2)) == (0, 6, 36)  # type IPv4, TCP, v0 size 36
    assert u(e + 12, 2) == 80 and u(e + 14, 2) == 80  # vport, dport
    assert data[e + 24 : e + 28] == socket.inet_aton(lab.client_addr)
    assert data[e + 28 : e + 32] == socket.inet_aton(lab.vip)
    assert socket.inet_ntoa(data[e + 32 : e + 36]) in {rs.addr for rs in lab.real_servers}
    assert u(e + 4, 4) & 0x7 == 0  # IP_VS_CONN_F_MASQ
    assert u(e + 20, 4) > 0  # the timeout, in seconds


def test_list_daemon_prints_as_ipvsadm_and_a_restart_brings_the_daemons_back(
    pair: tuple[Daemon, Daemon],
) -> None:
    """ipvsadm -L --daemon, with the kernel's defaults filled in: maxlen 1500 - 28 for a
    master, a backup's at least 1024.  The lines are ipvsadm 1.31's on Debian 12's
    kernel 6.1 (../shared/ipvs-vm): after `--start-daemon master --mcast-interface
    dummy0` it printed "master sync daemon (mcast=dummy0, syncid=0, maxlen=1472,
    group=224.0.0.81, port=8848, ttl=1)", and after `--start-daemon backup
    --mcast-interface dummy1 --syncid 9 --sync-maxlen 1000 --mcast-port 8850` "backup
    sync daemon (mcast=dummy1, syncid=9, maxlen=1024, group=224.0.0.81, port=8850,
    ttl=1)"."""
    master, _ = pair
    both = master.dirctl("start-daemon", "backup", "--mcast-interface", "br0", "--syncid",
                         "3", "--sync-maxlen", "1000", "--mcast-port", "8850")  # fmt: skip
    assert both.returncode == 0, both.stderr
    listed = master.dirctl("list", "--daemon").stdout
    assert listed == (
        f"master sync daemon (mcast=br0, syncid={SYNCID}, maxlen=1472, group=224.0.0.81, "
        "port=8848, ttl=1)\n"
        "backup sync daemon (mcast=br0, syncid=3, maxlen=1024, group=224.0.0.81, port=8850, "
        "ttl=1)\n"
    )
    again = master.dirctl("start-daemon", "master", "--mcast-interface", "br0")
    assert (again.returncode, again.stderr) == (2, "dirctl: Daemon has already run\n")
    assert master.stop() == 0
    master.start()
    assert master.dirctl("list", "--daemon").stdout == listed
    assert master.dirctl("stop-daemon", "backup").returncode == 0
    gone = master.dirctl("stop-daemon", "backup")
    assert (gone.returncode, gone.stderr) == (2, "dirctl: No daemon is running\n")
    assert master.dirctl("list", "--daemon").stdout == listed.splitlines(keepends=True)[0]


def test_bad_daemon_options_exit_2_with_one_line(pair: tuple[Daemon, Daemon]) -> None:
    master, _ = pair
    for argv, message in (
        (["start-daemon", "master"], "--mcast-interface is required"),
        (["start-daemon", "primary", "--mcast-interface", "br0"], "daemon state must be"),
        (["start-daemon", "backup", "--mcast-interface", "nosuch0"], "nosuch0: No such device"),
        (["start-daemon", "backup", "--mcast-interface", "br0", "--syncid", "256"], "--syncid"),
        (["start-daemon", "backup", "--mcast-interface", "br0", "--mcast-group", "198.51.100.7"],
         "not a multicast address"),
        (["stop-daemon", "both"], "daemon state must be"),
    ):  # fmt: skip
        done = master.dirctl(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert master.dirctl("list", "--daemon").stdout.count("\n") == 1  # the master alone


# Datagrams for the backup, each malformed one way (the layouts of ip_vs_sync.c:
# tests/core/test_sync.py writes them out); (reason, datagram).
def _entry(cport: int, size: int = 36, version: int = 0) -> bytes:
    return (
        bytes((0, 6)) + (version << 12 | size).to_bytes(2, "big") + (0).to_bytes(4, "big")
        + (1).to_bytes(2, "big") + cport.to_bytes(2, "big") + (80).to_bytes(2, "big")
        + (80).to_bytes(2, "big") + bytes(4) + (900).to_bytes(4, "big")
        + socket.inet_aton("203.0.113.77") + socket.inet_aton(topology.VIP)
        + socket.inet_aton("198.18.0.2")
    )  # fmt: skip


def _message(body: bytes, count: int, syncid: int = SYNCID, size: int | None = None) -> bytes:
    size = 8 + len(body) if size is None else size
    return bytes((0, syncid)) + size.to_bytes(2, "big") + bytes((count, 1, 0, 0)) + body


MALFORMED: dict[str, bytes] = {
    "header_short": b"\0\7",
    "size_mismatch": _message(_entry(1), 1, size=100),
    "entry_short": _message(_entry(2), 3),
    "entry_size": _message(_entry(3, size=400), 1),
    "entry_version": _message(_entry(4, version=2), 1),
    "option_length": _message(_entry(5, size=40) + bytes((1, 0, 0, 0)), 1),
    "unknown_option": _message(_entry(6, size=40) + bytes((9, 2, 0, 0)), 1),
}
ROUNDS = 40

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(sys.argv[2]))
if sys.argv[3]:
    s.bind((sys.argv[3], 0))
payloads = [bytes.fromhex(h) for h in sys.argv[4:]]
for _ in range(int(sys.argv[1])):
    for p in payloads:
        s.sendto(p, ("224.0.0.81", 8848))
    time.sleep(0.005)
"""


def send(lab: topology.Lab, ns: str, rounds: int, payloads: list[bytes], loop: bool = False,
         source: str = "") -> None:  # fmt: skip
    argv = [sys.executable, "-c", SENDER, str(rounds), str(int(loop)), source,
            *(p.hex() for p in payloads)]  # fmt: skip
    subprocess.run(lab.exec_argv(ns, argv), check=True, timeout=30)


def errors(backup: Daemon) -> dict[str, float]:
    return by_reason(scrape(backup.lab, METRICS), "director_sync_errors_total")


def test_malformed_datagrams_are_counted_by_reason_and_the_backup_stays_up(
    lab: topology.Lab, pair: tuple[Daemon, Daemon]
) -> None:
    _, backup = pair
    before = errors(backup)
    send(lab, lab.real_servers[0].netns, ROUNDS, list(MALFORMED.values()))
    want = {reason: before.get(reason, 0) + ROUNDS for reason in MALFORMED}
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        got = errors(backup)
        if all(got.get(r, 0) >= n for r, n in want.items()):
            break
        time.sleep(0.2)
    got = errors(backup)
    assert {r: got.get(r, 0) for r in want} == want
    assert backup.proc is not None and backup.proc.poll() is None
    assert backup.dirctl("list").returncode == 0
    # None of them made an entry but the one good entry before entry_short's lie (the
    # kernel takes the entries before the one that fails).
    made = {c["cport"] for c in connections(backup) if c["caddr"] == "203.0.113.77"}
    assert made <= {2}


def test_another_syncid_and_our_own_datagrams_are_not_taken(
    lab: topology.Lab, backup_lab: topology.Lab, pair: tuple[Daemon, Daemon]
) -> None:
    _, backup = pair
    good = _message(_entry(5555), 1)
    other = _message(_entry(6666), 1, syncid=SYNCID + 1)
    before = errors(backup)
    send(lab, lab.real_servers[0].netns, 5, [other])
    # From the backup's own address, looped back to its own socket.
    send(
        backup_lab, backup_lab.director, 5, [good], loop=True, source=topology.PEER_DIRECTOR_INSIDE
    )
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        got = errors(backup)
        if (
            got.get("syncid", 0) >= before.get("syncid", 0) + 5
            and got.get("own", 0) >= before.get("own", 0) + 5
        ):
            break
        time.sleep(0.2)
    got = errors(backup)
    assert got.get("syncid", 0) - before.get("syncid", 0) == 5
    assert got.get("own", 0) - before.get("own", 0) == 5
    assert {c["cport"] for c in connections(backup)}.isdisjoint({5555, 6666})
    # The same datagram from rs1 is taken: the filters above are what kept it out.
    send(lab, lab.real_servers[0].netns, 1, [good])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and 5555 not in {c["cport"] for c in connections(backup)}:
        time.sleep(0.1)
    assert 5555 in {c["cport"] for c in connections(backup)}


# -- failover: the VIP moves to the backup, a DR download goes on there -------------

DR_PORT = 8090
DR_SIZE = 24 << 20  # some 6 s at the transfer client's 4 MB/s


@pytest.fixture(scope="module", params=["dr", "tun"])
def dr_pair_lab(request: pytest.FixtureRequest) -> Iterator[tuple[topology.Lab, topology.Lab]]:
    """A DR (or TUN) lab with a second director that can take the VIP."""
    built = topology.build(kind=request.param)
    try:
        topology.start_backends(built)
        yield built, topology.add_peer_director(built, outside=True)
    finally:
        topology.teardown(built)


def move_vip(lab: topology.Lab, second: topology.Lab) -> None:
    """The VIP on the second director's ext0, the client's way to it through there
    (from its own address still, which the real servers answer through the first)."""
    lab.run(second.director, ["ip", "addr", "replace", f"{lab.vip}/32", "dev", "ext0"])
    lab.run(lab.client, ["ip", "route", "replace", f"{lab.vip}/32", "via",
                         topology.PEER_OUTSIDE, "dev", "eth1", "src", lab.client_addr])  # fmt: skip


CLIENTS = tuple(f"203.0.113.{i}" for i in range(11, 15))  # spread over the workers' shards


def curl_from(lab: topology.Lab, source: str) -> int:
    done = lab.run(lab.client, ["curl", "-sS", "--max-time", "3", "--interface", source,
                                f"http://{lab.vip}/"], check=False)  # fmt: skip
    return done.returncode


def test_a_dr_or_tun_download_continues_on_the_backup_when_the_vip_moves(
    dr_pair_lab: tuple[topology.Lab, topology.Lab], tmp_path: Path
) -> None:
    """The master carries a DR download; the backup learns its connection; the VIP
    moves to the backup by hand (added to its ext0, the client's route to it switched)
    and the master stops: the client's next segments find the synced entry on the
    backup (without it, an ACK that opens nothing: the backup's own stack would reset
    the connection) and the download ends byte for byte.  Then backup_only there."""
    lab, second = dr_pair_lab
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    expected = random_file(blob, DR_SIZE)
    rules = (
        f"-A -t {lab.vip}:{DR_PORT} -s rr\n-a -t {lab.vip}:{DR_PORT} -r {rs.addr}:{DR_PORT} "
        + {"dr": "-g", "tun": "-i"}[rs.method]
        + "\n"
    )
    with synced_pair(lab, second, tmp_path, rules) as (master, backup):
        with transfer(lab, rs, blob, DR_PORT) as client:
            copy = learned(master, backup, DR_PORT)
            assert copy is not None and copy["daddr"] == rs.addr, backup.log()
            move_vip(lab, second)
            assert master.stop() == 0
            out, _ = client.communicate(timeout=60)
            got, digest = out.split()
            assert (int(got), digest) == (DR_SIZE, expected)
        backup_only(lab, backup)


@contextmanager
def synced_pair(
    lab: topology.Lab, second: topology.Lab, workdir: Path, rules: str
) -> Iterator[tuple[Daemon, Daemon]]:
    """A master directord in the first director (sync on br0) and a backup in the
    second (on eth1), both with ``rules``."""
    master = Daemon(lab, workdir / "master")
    backup = Daemon(second, workdir / "backup")
    with running(master), running(backup):
        for d in (master, backup):
            assert d.dirctl("restore", input=rules).returncode == 0
        assert master.dirctl("start-daemon", "master", "--mcast-interface", "br0").returncode == 0
        assert backup.dirctl("start-daemon", "backup", "--mcast-interface", "eth1").returncode == 0
        yield master, backup


def learned(master: Daemon, backup: Daemon, port: int) -> dict[str, Any] | None:
    """The backup's copy of the master's one connection to ``port``, once it has it
    (within 3 s), else None."""
    (conn,) = [c for c in connections(master) if c["vport"] == port]
    deadline = time.monotonic() + 3.0
    while True:
        found = [c for c in connections(backup) if c["cport"] == conn["cport"]]
        if found or time.monotonic() >= deadline:
            return found[0] if found else None
        time.sleep(0.1)


def backup_only(lab: topology.Lab, backup: Daemon) -> None:
    """sysctl_backup_only: with backup_only set and the backup running, every worker
    lets the VIP's packets go on to the local stack (which refuses the connection);
    without the backup daemon the same director balances them.  Clients from four
    addresses, so that every worker's shard has some."""
    for addr in CLIENTS:
        lab.run(lab.client, ["ip", "addr", "replace", f"{addr}/24", "dev", "eth0"])
    assert backup.dirctl("restore", input=lab.rules()).returncode == 0
    assert backup.dirctl("sysctl", "backup_only=1").returncode == 0
    assert [curl_from(lab, a) for a in CLIENTS] == [CURL_REFUSED] * len(CLIENTS)
    assert backup.dirctl("stop-daemon", "backup").returncode == 0
    assert [curl_from(lab, a) for a in CLIENTS] == [0] * len(CLIENTS)


NAT_PORT = 8091


@pytest.fixture(scope="module")
def nat_pair_lab() -> Iterator[tuple[topology.Lab, topology.Lab]]:
    built = topology.build(kind="nat")
    try:
        yield built, topology.add_peer_director(built, outside=True)
    finally:
        topology.teardown(built)


def test_a_nat_download_continues_on_the_backup_when_the_vip_and_gateway_move(
    nat_pair_lab: tuple[topology.Lab, topology.Lab], tmp_path: Path
) -> None:
    """NAT: the real servers' answers come back through their gateway, so it moves
    with the VIP (keepalived would move both, one vrrp_sync_group): 198.18.0.1 from
    the first director's br0 to the second's eth1 (the real server's neighbour entry
    for it flushed, as a gratuitous ARP would update it).  The backup rewrites the
    answers of the synced entry (its out key) and the download ends byte for byte."""
    lab, second = nat_pair_lab
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    expected = random_file(blob, DR_SIZE)
    rules = (
        f"-A -t {lab.vip}:{NAT_PORT} -s rr\n-a -t {lab.vip}:{NAT_PORT} -r {rs.addr}:{NAT_PORT} -m\n"
    )
    with (
        synced_pair(lab, second, tmp_path, rules) as (master, backup),
        transfer(lab, rs, blob, NAT_PORT) as client,
    ):
        assert learned(master, backup, NAT_PORT) is not None, backup.log()
        gateway = f"{topology.DIRECTOR_INSIDE}/24"
        lab.run(lab.director, ["ip", "addr", "del", gateway, "dev", "br0"])
        lab.run(second.director, ["ip", "addr", "add", gateway, "dev", "eth1"])
        lab.run(rs.netns, ["ip", "neigh", "flush", "dev", "eth0"])
        move_vip(lab, second)
        assert master.stop() == 0
        out, _ = client.communicate(timeout=60)
        got, digest = out.split()
        assert (int(got), digest) == (DR_SIZE, expected)

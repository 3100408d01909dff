"""Issue 12, the kernel fast path: ``directord --fast-path kernel`` in the NAT lab.

The worker schedules each NAT flow's first packet and marks it; the hooks' DNAT rule
for that mark and conntrack carry the rest.  Real curl, ab, TCP, iptables, conntrack
and the real daemon; what the director reports is checked against what the kernel
counted (iptables rule counters) and against the clients' own results.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from labtools import (
    METRICS,
    SEED_RULES_FILE,
    ab,
    by_reason,
    counting,
    curl,
    hold,
    iptables_counters,
    running,
    scrape,
    transfer,
)

from director.lab.daemon import Daemon
from director.lab.topology import Lab

FAST = ["--fast-path", "kernel"]
RS = ("198.18.0.2", "198.18.0.3")


def listed(d: Daemon) -> list[str]:
    return [line for line in d.dirctl("list", "-n", "-c").stdout.splitlines()
            if line.startswith(("TCP", "UDP"))]  # fmt: skip


def rows(d: Daemon, *flags: str) -> dict[str, list[str]]:
    """The real servers' rows of `list -n FLAGS`, by address:port."""
    out: dict[str, list[str]] = {}
    for line in d.dirctl("list", "-n", *flags).stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "->" and fields[1][0].isdigit():
            out[fields[1]] = fields[2:]
    return out


def test_the_seed_example_and_2000_connections_on_the_fast_path(lab: Lab, tmp_path: Path) -> None:
    # The kernel's count of the client's packets to the VIP that conntrack tracked (an
    # INVALID packet has no entry and no accounting), to check the director's against.
    sent = ["-s", lab.client_addr, "-d", lab.vip, "-p", "tcp", "--dport", "80",
            "-m", "conntrack", "!", "--ctstate", "INVALID"]  # fmt: skip
    with (
        running(Daemon(lab, tmp_path / "d", FAST)) as d,
        counting(lab, lab.director, "mangle", "PREROUTING", sent, "fast-client"),
    ):
        assert d.dirctl("restore", str(SEED_RULES_FILE)).returncode == 0
        answers = {curl(lab, f"http://{lab.vip}/").body.split()[1] for _ in range(6)}
        assert answers == {"198.18.0.2:80", "198.18.0.3:8000"}, answers  # rr, port mapped
        assert "[kernel]" in "\n".join(listed(d)), listed(d)
        result = ab(lab, f"http://{lab.vip}/", n=2000, c=10)
        assert (result["exit"], result["Complete requests"], result["failures"]) == (
            "0", "2000", "0"), result  # fmt: skip
        # Every one was scheduled here: 2006 connections over the two servers, and the
        # few more ab opens at concurrency 10 and never uses (every-packet mode counts
        # the same).
        conns = sum(int(r[0]) for r in rows(d, "--stats").values())
        assert 2006 <= conns <= 2016, d.dirctl("list", "-n", "--stats").stdout
        # The packets are conntrack's to count (accounting), the worker saw the first of
        # each: once the connections are closed (their last packets seen), InPkts is
        # what the kernel counted.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            inpkts = sum(int(r[1]) for r in rows(d, "--stats").values())
            counted, _ = iptables_counters(lab, lab.director, "mangle", "PREROUTING",
                                           "fast-client")  # fmt: skip
            if inpkts == counted:
                break
            time.sleep(0.5)
        assert inpkts == counted > 4 * 2006, (counted, d.dirctl("list", "-n", "--stats").stdout)


def test_a_download_is_intact_and_its_bytes_are_counted(lab: Lab, tmp_path: Path) -> None:
    """20 MB through conntrack's NAT; the stats follow conntrack's accounting, within a
    few percent of what the kernel's own rule counters saw go to the client."""
    size = 20 << 20
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    blob.write_bytes(hashlib.sha256(b"fast").digest() * (size // 32))
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    reply = ["-p", "tcp", "-s", rs.addr, "--sport", "8080"]
    with (
        counting(lab, lab.director, "mangle", "FORWARD", reply, "fast-reply"),
        running(Daemon(lab, tmp_path / "d", FAST)) as d,
    ):
        restore = f"-A -t {lab.vip}:8080 -s rr\n-a -t {lab.vip}:8080 -r {rs.addr}:8080 -m\n"
        assert d.dirctl("restore", input=restore).returncode == 0
        with transfer(lab, rs, blob, 8080) as client:
            out, _ = client.communicate(timeout=60)
        got, digest = out.split()
        assert (int(got), digest) == (size, expected)
        _, counted = iptables_counters(lab, lab.director, "mangle", "FORWARD", "fast-reply")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            outbytes = int(rows(d, "--stats")[f"{rs.addr}:8080"][4])
            if abs(outbytes - counted) <= counted * 0.03:
                break
            time.sleep(0.5)
        assert abs(outbytes - counted) <= counted * 0.03, (outbytes, counted)


def test_lc_weighs_the_live_connections(lab: Lab, tmp_path: Path) -> None:
    """Connections held open count as active (conntrack ESTABLISHED), so lc alternates;
    once they close they count no more as active."""
    with running(Daemon(lab, tmp_path / "d", FAST)) as d, ExitStack() as held:
        rules = f"-A -t {lab.vip}:80 -s lc\n" + "".join(
            f"-a -t {lab.vip}:80 -r {rs}:80 -m\n" for rs in RS
        )
        assert d.dirctl("restore", input=rules).returncode == 0
        procs = [hold(lab, lab.client_addr, held) for _ in range(4)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            active = {rs: r[2] for rs, r in rows(d).items()}
            if active == {f"{RS[0]}:80": "2", f"{RS[1]}:80": "2"}:
                break
            time.sleep(0.3)
        assert active == {f"{RS[0]}:80": "2", f"{RS[1]}:80": "2"}, d.dirctl("list", "-n").stdout
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(r[2] == "0" for r in rows(d).values()):
                break
            time.sleep(0.3)
        assert all(r[2] == "0" for r in rows(d).values()), d.dirctl("list", "-n").stdout


def test_a_restart_keeps_a_transfer_going(lab: Lab, tmp_path: Path) -> None:
    """conntrack holds the connection while no daemon runs (--on-stop keep leaves the
    hooks); the next daemon finds its entry again."""
    size = 20 << 20
    rs = lab.real_servers[0]
    blob = tmp_path / "blob"
    blob.write_bytes(hashlib.sha256(b"again").digest() * (size // 32))
    expected = hashlib.sha256(blob.read_bytes()).hexdigest()
    workdir = tmp_path / "director"
    args = [*FAST, "--on-stop", "keep"]
    first = Daemon(lab, workdir, args)
    try:
        first.start()
        restore = f"-A -t {lab.vip}:8080 -s rr\n-a -t {lab.vip}:8080 -r {rs.addr}:8080 -m\n"
        assert first.dirctl("restore", input=restore).returncode == 0
        with transfer(lab, rs, blob, 8080) as client:
            assert first.stop() == 0, first.log()
            with running(Daemon(lab, workdir, args)) as second:
                out, _ = client.communicate(timeout=60)
                got, digest = out.split()
                assert (int(got), digest) == (size, expected)
                assert re.search(r"restored [1-9]\d* connection entries", second.log())
    finally:
        first.kill()
        cleanup = Daemon(lab, tmp_path / "cleanup")
        cleanup.start()
        cleanup.stop()


# Counts the director namespace's ESTABLISHED conntrack entries with director's mark,
# by real server (run with the venv's python inside the namespace; the earlier tests'
# connections linger there in TIME_WAIT).
COUNT_MARKED = """
from collections import Counter
from director.shell.conntrack import CtTable
from director.shell.netfilter import FAST_MASK, FAST_TAG
table = CtTable()
entries = table.dump(FAST_TAG, FAST_MASK)
print(dict(Counter(e.reply.src.hex() for e in entries if e.state == "ESTABLISHED")))
"""


def marked(lab: Lab) -> dict[str, int]:
    """conntrack's fast-path entries in the director namespace, by real server address."""
    import ast
    import socket

    out = lab.run(lab.director, [sys.executable, "-c", COUNT_MARKED]).stdout
    return {socket.inet_ntoa(bytes.fromhex(k)): v for k, v in ast.literal_eval(out).items()}


def test_deleting_a_server_takes_its_connections_out_of_conntrack(lab: Lab, tmp_path: Path) -> None:
    """A deleted real server's connections are dropped, as IPVS drops the packets of
    connections to a removed server: conntrack stops carrying them; the other server's
    stay; quiescing (weight 0) leaves them all and sends new ones elsewhere."""
    with running(Daemon(lab, tmp_path / "d", FAST)) as d, ExitStack() as held:
        rules = f"-A -t {lab.vip}:80 -s rr\n" + "".join(
            f"-a -t {lab.vip}:80 -r {rs}:80 -m\n" for rs in RS
        )
        assert d.dirctl("restore", input=rules).returncode == 0
        for _ in range(4):
            hold(lab, lab.client_addr, held)
        assert marked(lab) == {RS[0]: 2, RS[1]: 2}
        assert d.dirctl("edit-server", "-t", f"{lab.vip}:80", "-r", f"{RS[0]}:80", "-m",
                        "-w", "0").returncode == 0  # fmt: skip
        assert marked(lab) == {RS[0]: 2, RS[1]: 2}  # quiesced: its connections go on
        assert {curl(lab, f"http://{lab.vip}/").body.split()[1] for _ in range(3)} == {
            f"{RS[1]}:80"}  # fmt: skip
        assert d.dirctl("delete-server", "-t", f"{lab.vip}:80", "-r", f"{RS[0]}:80"
                        ).returncode == 0  # fmt: skip
        left = marked(lab)
        assert RS[0] not in left and left.get(RS[1], 0) >= 2, left


def test_two_workers_share_the_new_flows_of_the_fast_path(lab: Lab, tmp_path: Path) -> None:
    """With --workers 2 each worker schedules the new flows of its shard of clients
    (the mangle shard chain) and follows conntrack for its own entries."""
    clients = [f"203.0.113.{i}" for i in range(30, 38)]
    for addr in clients:
        lab.run(lab.client, ["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
    try:
        args = [*FAST, "--workers", "2", "--metrics-listen", METRICS]
        with running(Daemon(lab, tmp_path / "d", args)) as d:
            rules = f"-A -t {lab.vip}:80 -s rr\n" + "".join(
                f"-a -t {lab.vip}:80 -r {rs}:80 -m\n" for rs in RS
            )
            assert d.dirctl("restore", input=rules).returncode == 0
            for source in clients:
                done = lab.run(lab.client, ["curl", "-sS", "--max-time", "5", "--interface",
                                            source, f"http://{lab.vip}/"])  # fmt: skip
                assert re.search(r"198\.18\.0\.\d", done.stdout), done.stdout
            entries = [line for line in listed(d) if line.endswith("[kernel]")]
            assert sorted(line.split()[3].rsplit(":", 1)[0] for line in entries) == clients
            chain = lab.run(lab.director, ["iptables", "-w", "-t", "mangle", "-nvxL",
                                           "DIRECTOR_SHARD_NEW"]).stdout  # fmt: skip
            queued: dict[int, int] = {}
            for words in (line.split() for line in chain.splitlines()):
                if "num" in words:
                    queue = int(words[words.index("num") + 1])
                    queued[queue] = queued.get(queue, 0) + int(words[0])
            assert queued.get(0, 0) > 0 and queued.get(2, 0) > 0, chain
            # Both workers' entries follow conntrack: all of them end up inactive.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if all(r[2] == "0" for r in rows(d).values()):
                    break
                time.sleep(0.3)
            assert all(r[2] == "0" for r in rows(d).values()), d.dirctl("list", "-n").stdout
            assert sum(int(r[3]) for r in rows(d).values()) == len(clients)
            # Of each connection, both workers together applied its move to ESTABLISHED
            # and its leaving it (the kernel passes them on, and no other update).
            families = scrape(lab, METRICS)
            events = by_reason(families, "director_fast_path_events_total")
            assert events.get("update", 0) >= 2 * len(clients), events
            assert families["director_fast_path_dumps_total"][""] >= 1
    finally:
        for addr in clients:
            lab.run(lab.client, ["ip", "addr", "del", f"{addr}/24", "dev", "eth0"], check=False)

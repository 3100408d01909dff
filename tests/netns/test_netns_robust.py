"""Issue 6: malformed and random packets at the VIP while a client downloads a file.

A fuzzer in the client namespace sends 30,000 hand-built packets in about 10 s from
203.0.113.20 (an address of the client's, inside the clients' range): truncated TCP
and UDP headers, bad TCP data offsets, zero ports, IP options, random protocols, random
bytes after a sound IP header, ICMP junk (short quotes, quotes that are not IPv4 or not
TCP/UDP, errors about conversations nobody had, echoes), fragments complete and not;
and, through a packet socket, IP headers broken in themselves (version, header length,
total length, checksum, short), which the director's kernel drops before any hook.

Meanwhile the legitimate client (203.0.113.10) downloads a 6 MB file through a NAT
service at a limited rate, so the download spans the whole flood.  The daemon must stay
up, the file must arrive intact, the worker must raise on no packet, and the drop and
pass counters must account for every junk packet that reached the director's LOCAL_IN
(counted independently by an iptables rule in the director's mangle INPUT chain).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import (
    METRICS,
    FileServer,
    by_reason,
    helper_argv,
    iptables_packets,
    link_mac,
    random_file,
    scrape,
    sha256_file,
)

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
JUNK_SRC = "203.0.113.20"
PORT = 8088
FILE_SIZE = 6 << 20
RATE = "1M"  # bytes per second: the download lasts about as long as the flood
JUNK_COUNT = 30_000
JUNK_SECONDS = 10.0
SEED = 20240606

# What the junk must have been counted as, at the least (see rawpkt.RAW_KINDS).
EXPECTED_DROPS = {"truncated", "bad_header_length", "zero_port", "icmp_truncated"}
EXPECTED_PASSES = {"unhandled_protocol", "no_service", "icmp_other", "icmp_no_conn"}


@pytest.fixture
def junk_source(lab: topology.Lab) -> Iterator[None]:
    """The fuzzer's address on the client, and counters for its packets: sent (client
    raw OUTPUT), arrived past the director's IP input checks (raw PREROUTING) and
    delivered to LOCAL_IN, where the worker's queue is (mangle INPUT)."""
    rules = [
        (lab.client, "raw", "OUTPUT", ["-s", JUNK_SRC], "junk-sent"),
        (lab.director, "raw", "PREROUTING", ["-s", JUNK_SRC, "-d", VIP], "junk-arrived"),
        (lab.director, "mangle", "INPUT", ["-s", JUNK_SRC, "-d", VIP], "junk-local-in"),
    ]
    lab.run(lab.client, ["ip", "addr", "add", f"{JUNK_SRC}/24", "dev", "eth0"])
    for ns, table, chain, match, comment in rules:
        lab.run(ns, ["iptables", "-w", "-t", table, "-A", chain, *match,
                     "-m", "comment", "--comment", comment])  # fmt: skip
    try:
        yield
    finally:
        for ns, table, chain, match, comment in rules:
            lab.run(ns, ["iptables", "-w", "-t", table, "-D", chain, *match,
                         "-m", "comment", "--comment", comment], check=False)  # fmt: skip
        lab.run(lab.client, ["ip", "addr", "del", f"{JUNK_SRC}/24", "dev", "eth0"], check=False)


def _queue_losses(lab: topology.Lab) -> int:
    """Packets the kernel's NFQUEUE dropped in the director (queue full, or failed to
    reach the worker): /proc/net/netfilter/nfnetlink_queue, per network namespace."""
    text = lab.run(lab.director, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    return sum(int(f[5]) + int(f[6]) for f in (line.split() for line in text.splitlines()))


def _settled(lab: topology.Lab) -> dict[str, dict[str, float]]:
    """The metrics once the daemon has published a sample taken after the traffic: the
    verdict counts no longer move across more than one tick (the daemon publishes a
    sample a second; two scrapes within one tick are equal whatever is still to come)."""
    last, last_at = scrape(lab, METRICS), time.monotonic()
    deadline = last_at + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = scrape(lab, METRICS)
        if now.get("director_verdicts_total") != last.get("director_verdicts_total"):
            last, last_at = now, time.monotonic()
        elif time.monotonic() - last_at > 2.5:
            return now
    return last


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_fuzzer_while_a_download_goes_through(
    metrics_daemon: Daemon, junk_source: None, tmp_path: Path
) -> None:
    d, lab = metrics_daemon, metrics_daemon.lab
    rs1 = lab.real_servers[0]
    done = d.dirctl("restore", input=f"-A -t {VIP}:{PORT} -s rr\n"
                                     f"-a -t {VIP}:{PORT} -r {rs1.addr}:{PORT} -m\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    served = tmp_path / "served"
    served.mkdir()
    digest = random_file(served / "blob", FILE_SIZE)
    got = tmp_path / "got"

    with FileServer(lab, rs1.netns, PORT, served):
        before = scrape(lab, METRICS)
        lost_before = _queue_losses(lab)
        fuzz_argv = helper_argv(
            "rawpkt.py", "fuzz", "--src", JUNK_SRC, "--dst", VIP, "--count", str(JUNK_COUNT),
            "--seconds", str(JUNK_SECONDS), "--seed", str(SEED), "--avoid-port", str(PORT),
            "--ifname", "eth0", "--dst-mac", link_mac(lab, lab.director, "ext0"),
        )  # fmt: skip
        fuzzer = subprocess.Popen(lab.exec_argv(lab.client, fuzz_argv), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            download = lab.run(
                lab.client,
                ["curl", "-sS", "--max-time", "40", "--limit-rate", RATE, "-o", str(got),
                 f"http://{VIP}:{PORT}/blob"],
                check=False, timeout=60,
            )  # fmt: skip
            out, err = fuzzer.communicate(timeout=3 * JUNK_SECONDS + 10)
        finally:
            if fuzzer.poll() is None:
                fuzzer.kill()
                fuzzer.wait()
        assert fuzzer.returncode == 0, err
        report = json.loads(out)

    # The legitimate client got every byte, the daemon lives and answers.
    assert download.returncode == 0, download.stderr
    assert sha256_file(got) == digest
    assert d.proc is not None and d.proc.poll() is None, d.log()
    assert d.dirctl("list", "-n").returncode == 0

    # The fuzzer did send what it was told to, and the director saw the junk.
    assert report["raw_sent"] + report["link_sent"] >= JUNK_COUNT * 0.99, report
    assert report["link_sent"] > 0, report
    sent = iptables_packets(lab, lab.client, "raw", "OUTPUT", "junk-sent")
    arrived = iptables_packets(lab, lab.director, "raw", "PREROUTING", "junk-arrived")
    local_in = iptables_packets(lab, lab.director, "mangle", "INPUT", "junk-local-in")
    assert sent >= report["raw_sent"], (sent, report)
    assert local_in > JUNK_COUNT * 0.6, (sent, arrived, local_in, report)

    after = _settled(lab)
    drops = _delta(by_reason(after, "director_drops_total"),
                   by_reason(before, "director_drops_total"))  # fmt: skip
    passes = _delta(by_reason(after, "director_passed_total"),
                    by_reason(before, "director_passed_total"))  # fmt: skip
    errors = by_reason(after, "director_worker_errors_total")
    lost = _queue_losses(lab) - lost_before
    summary = (f"sent {sent} (+{report['link_sent']} broken IP headers), arrived {arrived}, "
               f"local-in {local_in}, queue losses {lost}, drops {drops}, passes {passes}, "
               f"worker errors {errors}, fuzzer {report}")  # fmt: skip
    assert errors.get("worker_exception", 0) == 0, summary
    assert set(drops) >= EXPECTED_DROPS, summary
    assert set(passes) >= EXPECTED_PASSES, summary
    # Every junk packet that reached LOCAL_IN got a verdict counted as a drop or a pass
    # (the download's packets are none of these; a late packet of it may be a pass).
    accounted = sum(drops.values()) + sum(passes.values())
    assert local_in - lost <= accounted <= local_in + 100, summary
    assert lost <= JUNK_COUNT * 0.01, summary

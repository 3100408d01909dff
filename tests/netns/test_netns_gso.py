"""NAT replies as GSO super-packets (issue 11): the reply queue takes them whole.

A real server's TCP stack hands the director super-packets of up to 64 KiB (TSO over
the veth links, GRO on real NICs); with NFQA_CFG_F_GSO on the reply queue the kernel
queues each as one message instead of cutting it into MTU-sized segments first
(nfqnl_enqueue_packet), so one verdict carries many segments.  A 20 MB download
through NAT must arrive byte for byte, and need far fewer verdicts than the packets
its bytes fill at the links' MTU: each packet on a 1,500-byte link carries at most
1,500 bytes, so the service's outgoing bytes (from the daemon's metrics) divided by
1,500 is a floor for the packets on the wire.  Before, every reply segment was its own
verdict (NetfilterQueue set no GSO flag, so the kernel segmented before queueing).
"""

from __future__ import annotations

import time
from pathlib import Path

from labtools import METRICS, FileServer, random_file, scrape, sha256_file

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
PORT = 8090
SIZE = 20 << 20
MTU = 1500  # the lab's links
REPLY_QUEUE = 'queue="1"'  # the default queue 0 carries requests, the next replies


def settled(lab: topology.Lab, family: str) -> dict[str, dict[str, float]]:
    """The metrics once ``family`` has stopped moving for more than a tick (the daemon
    publishes a sample a second)."""
    last, last_at = scrape(lab, METRICS), time.monotonic()
    deadline = last_at + 30
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = scrape(lab, METRICS)
        if now.get(family) != last.get(family):
            last, last_at = now, time.monotonic()
        elif time.monotonic() - last_at > 2.5:
            return now
    return last


def test_20mb_nat_download_with_gso_arrives_intact_in_few_verdicts(
    metrics_daemon: Daemon, tmp_path: Path
) -> None:
    lab = metrics_daemon.lab
    rs1 = lab.real_servers[0]
    rules = f"-A -t {VIP}:{PORT} -s rr\n-a -t {VIP}:{PORT} -r {rs1.addr}:{PORT} -m\n"
    assert metrics_daemon.dirctl("restore", input=rules).returncode == 0
    www = tmp_path / "www"
    www.mkdir()
    want = random_file(www / "blob", SIZE)
    got = tmp_path / "got"
    with FileServer(lab, rs1.netns, PORT, www):
        url = f"http://{VIP}:{PORT}/blob"
        argv = ["curl", "-sS", "--max-time", "60", "-o", str(got), url]
        done = lab.run(lab.client, argv, check=False, timeout=90)
    assert done.returncode == 0, (done.stderr, metrics_daemon.log())
    assert sha256_file(got) == want

    m = settled(lab, "director_nfqueue_packets_total")
    service = next(v for k, v in m["director_outgoing_bytes_total"].items() if f'"{PORT}"' in k)
    verdicts = m["director_nfqueue_verdicts_total"][REPLY_QUEUE]
    gso = m["director_nfqueue_gso_packets_total"][REPLY_QUEUE]
    packets_on_the_wire = service / MTU  # at least this many
    assert service >= SIZE
    assert gso > 0
    assert verdicts * 4 < packets_on_the_wire, (verdicts, gso, packets_on_the_wire)
    assert m["director_nfqueue_packets_total"][REPLY_QUEUE] == verdicts  # one each
    # Nothing was lost in the kernel's queues on the way.
    for family in ("director_nfqueue_kernel_dropped_total",
                   "director_nfqueue_kernel_user_dropped_total"):  # fmt: skip
        assert set(m[family].values()) == {0.0}, m[family]

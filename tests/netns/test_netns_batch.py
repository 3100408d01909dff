"""Fewer system calls per packet (issue 11): the verdicts of the packets that wait
together go to the kernel in one netlink send, and the kernel's own queue counters
(/proc/net/netfilter/nfnetlink_queue) are in the metrics.

A bounded burst of UDP datagrams (BURST, sent as fast as one Python loop can, far
faster than the worker gives verdicts) piles up in the request queue; the worker
takes them in batches, so the sends that carry its verdicts must be far fewer than the
verdicts.  Before, NetfilterQueue sent each verdict with a send of its own and the
metrics had no such counters.
"""

from __future__ import annotations

import sys
import time

from labtools import METRICS, scrape

from director.lab import topology
from director.lab.daemon import Daemon

VIP = topology.VIP
PORT = 5399
BURST = 3000
REQUESTS = 'queue="0"'

SENDER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({BURST}):
    s.sendto(b"x" * 32, ("{VIP}", {PORT}))
"""


def test_a_burst_gets_its_verdicts_in_few_sends(metrics_daemon: Daemon) -> None:
    lab = metrics_daemon.lab
    rs1 = lab.real_servers[0]
    rules = f"-A -u {VIP}:{PORT} -s rr\n-a -u {VIP}:{PORT} -r {rs1.addr}:{PORT} -m\n"
    assert metrics_daemon.dirctl("restore", input=rules).returncode == 0
    lab.run(lab.client, [sys.executable, "-c", SENDER], timeout=60)

    deadline = time.monotonic() + 30
    while True:
        m = scrape(lab, METRICS)
        verdicts = m["director_nfqueue_verdicts_total"][REQUESTS]
        if verdicts >= BURST or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    sends = m["director_nfqueue_verdict_sends_total"][REQUESTS]
    # The kernel's line for the queue: every datagram was queued (id sequence) and each
    # either got its verdict or is counted as dropped by the kernel.
    queued = m["director_nfqueue_kernel_id_sequence_total"][REQUESTS]
    lost = (m["director_nfqueue_kernel_dropped_total"][REQUESTS]
            + m["director_nfqueue_kernel_user_dropped_total"][REQUESTS])  # fmt: skip
    assert queued >= BURST
    assert verdicts + lost >= BURST, (verdicts, lost, queued)
    assert m["director_nfqueue_waiting"][REQUESTS] == 0
    assert sends * 2 < verdicts, (sends, verdicts)

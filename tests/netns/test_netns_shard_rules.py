"""The shard chains as the kernel takes them: ``iptables-restore --noflush`` loads the
rendered hooks (non-contiguous masks, u32 on the quoted packet) for 1, 2 and 4
workers, and real packets land on the queue of the worker that owns their client.

A bare namespace each (no lab, no daemon): the four ipsets made with the ``ipset``
program, the rendered file restored, packets sent from inside.  The NFQUEUE targets
carry --queue-bypass and no program binds the queues, so every packet goes on once
its rule has counted it: the rule counters (``iptables-save -c``) say which queue it
was sent to.  The expected worker is read off the client address's bits by hand
(two workers: the last bit, director/core/shard.py), never from the rules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.lab import topology
from director.shell.netfilter import (
    RS_SET,
    SETS,
    SHARD_CHAINS,
    TUNNEL_SET,
    TUNNEL_SETS,
    VIP_SET,
    render,
    rules_text,
    shard_rules,
)

QUEUE = 20
MARK = 0x1D1
VIP = "203.0.113.5"
OWN = "198.18.0.1"  # the director's own address (TUN's outer source)
RS = "198.18.0.2"  # a NAT real server, in the second namespace
EVEN_CLIENT, ODD_CLIENT = "198.51.100.6", "198.51.100.7"  # workers 0 and 1 of two
EVEN_ROUTER, ODD_ROUTER = "198.19.0.2", "198.19.0.3"  # send ICMP errors


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


class Netns:
    """A bare namespace of this test's own, deleted after it."""

    def __init__(self, name: str) -> None:
        self.name = name
        run("ip", "netns", "add", name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.name, *args)

    def exec(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *argv, stdin=stdin)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=60)


@pytest.fixture
def namespaces() -> Iterator[list[Netns]]:
    """Up to two namespaces (made on demand by ``made(n)``)."""
    made: list[Netns] = []
    yield made
    for ns in made:
        ns.delete()


def new(namespaces: list[Netns]) -> Netns:
    ns = Netns(f"{topology.new_prefix('dsh')}{len(namespaces)}")
    namespaces.append(ns)
    return ns


def hooks(ns: Netns, shards: Shards) -> None:
    """The ipsets, then the rendered hooks (bypass: no worker binds the queues)."""
    for name, stype in SETS.items() | {TUNNEL_SET: TUNNEL_SETS[TUNNEL_SET]}.items():
        ns.exec("ipset", "create", name, stype)
    ns.exec("iptables-restore", "--noflush", stdin=render(rules_text(), QUEUE, MARK, True, shards))


def counters(ns: Netns) -> dict[str, int]:
    """Packets counted per rule of the shard chains ("-A chain ..." -> packets)."""
    got: dict[str, int] = {}
    for line in ns.exec("iptables-save", "-c", "-t", "filter").stdout.splitlines():
        m = re.match(r"\[(\d+):\d+\] (-A (\S+) .*)$", line)
        if m and m.group(3) in SHARD_CHAINS:
            got[m.group(2)] = int(m.group(1))
    return got


def queue_of(before: dict[str, int], after: dict[str, int]) -> tuple[str, int]:
    """The one shard rule that counted a packet since ``before``: its chain and queue."""
    hit = [rule for rule, n in after.items() if n != before.get(rule, 0)]
    assert len(hit) == 1, hit
    (rule,) = hit
    m = re.search(r"--queue-num (\d+)", rule)
    assert m, rule
    return rule.split()[1], int(m.group(1))


@pytest.mark.parametrize(
    ("workers", "netmasks"), [(1, ()), (2, ()), (4, ()), (4, ("255.255.255.0",))]
)
def test_iptables_restore_takes_the_rendered_hooks(
    namespaces: list[Netns], workers: int, netmasks: tuple[str, ...]
) -> None:
    """Every rule of the shard chains is loaded as rendered, u32 ones included."""
    rules = "".join(
        f"-A -t {VIP}:{80 + i} -s rr -p 300 -M {m}\n-a -t {VIP}:{80 + i} -r {RS}:80 -m\n"
        for i, m in enumerate(netmasks)
    )
    shards = Shards.for_config(workers, load_rules(rules))
    ns = new(namespaces)
    hooks(ns, shards)
    loaded = counters(ns)
    wanted = shard_rules(shards, QUEUE, bypass=True)
    assert len(loaded) == len(wanted)
    for chain in SHARD_CHAINS:
        assert sum(rule.startswith(f"-A {chain} ") for rule in loaded) == sum(
            rule.startswith(f"-A {chain} ") for rule in wanted
        )
    # The non-contiguous masks come back as given (iptables-nft keeps them too).
    masks = sorted(" ".join(r.split()[1:4]) for r in wanted if r.split()[2] in ("-s", "-d"))
    assert masks == sorted(" ".join(r.split()[1:4]) for r in loaded if r.split()[2] in ("-s", "-d"))
    queues = {int(q) for rule in loaded for q in re.findall(r"--queue-num (\d+)", rule)}
    assert queues == set(range(QUEUE, QUEUE + 2 * workers))
    assert sum("-m u32" in rule for rule in loaded) == (  # and IPv6 clients tunnelled in IPv4,
        0  # IPv4 ones in GUE, GRE and GRE with its checksum
        if workers == 1
        else (2 << len(shards.bits)) + (1 << len(shards.bits6)) + 3 * (1 << len(shards.bits))
    )
    save = ns.exec("iptables-save", "-t", "filter").stdout
    assert "-A INPUT -j DIRECTOR_IN" in save and "-A FORWARD -j DIRECTOR_FWD" in save


# Run inside a namespace (python3 -c): send one packet of a kind, as JSON in argv[1].
SEND = r"""
import json, socket, struct, sys

def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def iphdr(src, dst, proto, length):
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", csum(head)) + head[12:]

job = json.loads(sys.argv[1])
if job["kind"] == "udp":
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((job["dst"], job["port"]))
    listener.settimeout(10)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((job["src"], 40000))
    sender.sendto(b"shard", (job["dst"], job["port"]))
    print(listener.recv(100).decode())
else:
    # An ICMP error (RFC 792: type, code, checksum, 4 unused or MTU bytes, then the
    # quoted IP header and at least 8 bytes of what it carried).
    tcp = struct.pack("!HHI", 80, 40000, 1)
    quoted = iphdr(job["qsrc"], job["qdst"], 6, 28) + tcp
    if "inner" in job:  # IPIP: the director's outer header, the client's packet inside
        inner = iphdr(job["inner"], job["qdst"], 6, 28) + tcp
        quoted = iphdr(job["qsrc"], job["qdst"], 4, 20 + len(inner)) + inner
    if "gue" in job:  # GUE: the director's UDP (to the GUE port) and GUE header
        inner = iphdr(job["gue"], job["qdst"], 6, 28) + tcp
        head = struct.pack("!HHHH", 40001, 6080, 12 + len(inner), 0) + bytes((0, 4, 0, 0))
        quoted = iphdr(job["qsrc"], job["qdst"], 17, 20 + len(head) + len(inner)) + head + inner
    if "gre" in job:  # GRE (with its checksum word when "csum")
        inner = iphdr(job["gre"], job["qdst"], 6, 28) + tcp
        head = struct.pack("!HH", 0x8000, 0x0800) + bytes(4) if job.get("csum") else \
            struct.pack("!HH", 0, 0x0800)
        quoted = iphdr(job["qsrc"], job["qdst"], 47, 20 + len(head) + len(inner)) + head + inner
    if "inner6" in job:  # IPv6 in IPv4 (41): an IPv6 client's request, a mixed pool
        six = [socket.inet_pton(socket.AF_INET6, a) for a in (job["inner6"], "2001:db8:1::100")]
        inner = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + six[0] + six[1] + tcp
        quoted = iphdr(job["qsrc"], job["qdst"], 41, 20 + len(inner)) + inner
    body = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + quoted
    icmp = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    raw.bind((job["src"], 0))
    raw.sendto(icmp, (job["dst"], 0))
    print("shard")
"""


def send(ns: Netns, **job: object) -> None:
    assert ns.exec(sys.executable, "-c", SEND, json.dumps(job)).stdout.strip() == "shard"


@pytest.fixture
def director(namespaces: list[Netns]) -> Netns:
    """A namespace with two workers' hooks (the last address bit), the VIP, clients
    and routers as local addresses, so that what they send crosses LOCAL_IN."""
    ns = new(namespaces)
    for addr in (VIP, OWN, EVEN_CLIENT, ODD_CLIENT, EVEN_ROUTER, ODD_ROUTER):
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
    hooks(ns, Shards(2, (0,)))
    ns.exec("ipset", "add", VIP_SET, VIP)
    ns.exec("ipset", "add", RS_SET, f"{RS},udp:80")
    return ns


def test_requests_go_to_the_worker_of_their_source(director: Netns) -> None:
    for client, queue in ((EVEN_CLIENT, QUEUE), (ODD_CLIENT, QUEUE + 2), (EVEN_CLIENT, QUEUE)):
        before = counters(director)
        send(director, kind="udp", src=client, dst=VIP, port=80)
        assert queue_of(before, counters(director)) == ("DIRECTOR_SHARD_IN", queue)


@pytest.mark.parametrize(
    ("router", "client"), [(EVEN_ROUTER, ODD_CLIENT), (ODD_ROUTER, EVEN_CLIENT)]
)
def test_an_icmp_error_about_a_reply_goes_to_the_worker_of_the_quoted_client(
    director: Netns, router: str, client: str
) -> None:
    """A router on the way to the client says a NAT reply (VIP -> client) was too big
    (ip_vs_in_icmp, net/netfilter/ipvs/ip_vs_core.c, looks the quoted connection up in
    the table of the worker that has it).  The error is addressed to the VIP from
    the router: it must be sharded by the quoted destination, not by its source."""
    before = counters(director)
    send(director, kind="icmp", src=router, dst=VIP, qsrc=VIP, qdst=client)
    worker = int(client.rsplit(".", 1)[1]) & 1
    assert queue_of(before, counters(director)) == ("DIRECTOR_SHARD_ICMP", QUEUE + 2 * worker)


@pytest.mark.parametrize(
    ("router", "client"), [(EVEN_ROUTER, ODD_CLIENT), (ODD_ROUTER, EVEN_CLIENT)]
)
def test_an_icmp_error_about_a_tunnelled_request_goes_to_the_worker_of_the_inner_client(
    director: Netns, router: str, client: str
) -> None:
    """TUN: the error quotes the director's IPIP packet (own address -> real server);
    the client is the inner packet's source (ip_vs_in_icmp's "ICMP for IPIP")."""
    before = counters(director)
    send(director, kind="icmp", src=router, dst=OWN, qsrc=OWN, qdst=RS, inner=client)
    worker = int(client.rsplit(".", 1)[1]) & 1
    assert queue_of(before, counters(director)) == ("DIRECTOR_SHARD_ICMP", QUEUE + 2 * worker)


@pytest.mark.parametrize("tunnel", [{"gue": True}, {"gre": True}, {"gre": True, "csum": True}],
                         ids=["gue", "gre", "gre-csum"])  # fmt: skip
@pytest.mark.parametrize(
    ("router", "client"), [(EVEN_ROUTER, ODD_CLIENT), (ODD_ROUTER, EVEN_CLIENT)]
)
def test_an_icmp_error_about_a_gue_or_gre_request_goes_to_the_worker_of_the_inner_client(
    director: Netns, router: str, client: str, tunnel: dict[str, bool]
) -> None:
    """TUN over GUE or GRE: the error quotes the director's UDP+GUE or GRE packet; the
    client is the source of the packet behind their header (ipvs_udp_decap,
    ipvs_gre_decap), not the real server the quote is addressed to."""
    job = {key: client if key in ("gue", "gre") else True for key in tunnel}
    before = counters(director)
    send(director, kind="icmp", src=router, dst=OWN, qsrc=OWN, qdst=RS, **job)
    worker = int(client.rsplit(".", 1)[1]) & 1
    assert queue_of(before, counters(director)) == ("DIRECTOR_SHARD_ICMP", QUEUE + 2 * worker)


@pytest.mark.parametrize("client", ["2001:db8:1::10", "2001:db8:1::11"])
def test_an_icmp_error_about_a_request_tunnelled_across_families_goes_by_its_client(
    namespaces: list[Netns], client: str
) -> None:
    """A mixed-family pool: the error quotes the director's IPv4 packet carrying an IPv6
    client's request (protocol 41); the worker is the IPv6 client's, by its own bits
    (its last one here), not by the IPv4 addresses around it."""
    ns = new(namespaces)
    for addr in (OWN, EVEN_ROUTER):
        ns.ip("addr", "add", f"{addr}/32", "dev", "lo")
    hooks(ns, Shards(2, (1,), (0,)))  # IPv4 clients by another bit than IPv6 ones
    before = counters(ns)
    send(ns, kind="icmp", src=EVEN_ROUTER, dst=OWN, qsrc=OWN, qdst=RS, inner6=client)
    worker = int(client.rsplit(":", 1)[1], 16) & 1
    assert queue_of(before, counters(ns)) == ("DIRECTOR_SHARD_ICMP", QUEUE + 2 * worker)


def test_nat_replies_go_to_the_worker_of_their_destination(
    director: Netns, namespaces: list[Netns]
) -> None:
    """A NAT real server's replies cross FORWARD: by destination (the client) to the
    reply queue of the client's worker, the same worker as its requests."""
    rs = new(namespaces)
    director.ip("link", "add", "to-rs", "type", "veth", "peer", "name", "eth0", "netns", rs.name)
    director.ip("addr", "add", "198.18.0.254/24", "dev", "to-rs")
    director.ip("link", "set", "to-rs", "up")
    # The clients' side: a veth pair whose far end answers nothing (FORWARD counts a
    # packet before its neighbour is looked up).
    director.ip("link", "add", "clients", "type", "veth", "peer", "name", "far-end")
    director.ip("link", "set", "far-end", "up")
    director.ip("link", "set", "clients", "up")
    director.exec("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")  # no procps
    # The clients live beyond the dummy link: take their addresses off lo.
    for client in (EVEN_CLIENT, ODD_CLIENT):
        director.ip("addr", "del", f"{client}/32", "dev", "lo")
    director.ip("route", "add", "198.51.100.0/24", "dev", "clients")
    rs.ip("addr", "add", f"{RS}/24", "dev", "eth0")
    rs.ip("link", "set", "eth0", "up")
    rs.ip("route", "add", "default", "via", "198.18.0.254")
    reply = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 80))
s.sendto(b"reply", (sys.argv[2], 40000))
"""
    for client, queue in ((ODD_CLIENT, QUEUE + 3), (EVEN_CLIENT, QUEUE + 1)):
        before = counters(director)
        for _ in range(50):  # the first may wait for the neighbour; count all that came
            rs.exec(sys.executable, "-c", reply, RS, client)
            if counters(director) != before:
                break
        assert queue_of(before, counters(director)) == ("DIRECTOR_SHARD_FWD", queue)


# Run inside a namespace: the daemon's own Hooks, installed for one worker, resharded
# for two, saved, removed (argv: queue).
HOOKS = r"""
import subprocess, sys
from director.core.shard import Shards
from director.shell.netfilter import Hooks
hooks = Hooks(queue=int(sys.argv[1]), mark=0x1D1, bypass=False)
hooks.install()
print(subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout)
print(subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout)
print("----")
hooks.reshard(Shards(2, (0,)))
print(subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout)
print("----")
hooks.remove()
print(subprocess.run(["iptables-save"], capture_output=True, text=True).stdout)
print(subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout)
"""


def test_hooks_reshard_rewrites_only_the_shard_chains(namespaces: list[Netns]) -> None:
    """Hooks.install (pyroute2's ipsets, the jumps) for one worker, then reshard: the
    shard chains hold two workers' rules in place of one's, the rest is untouched, and
    remove leaves nothing of director's."""
    ns = new(namespaces)
    one, two, gone = ns.exec(sys.executable, "-c", HOOKS, str(QUEUE)).stdout.split("----\n")

    shard = tuple(f"-A {chain} " for chain in SHARD_CHAINS)

    def shard_lines(save: str) -> list[str]:
        return [line for line in save.splitlines() if line.startswith(shard)]

    def other_lines(save: str) -> list[str]:
        return [
            line for line in save.splitlines() if line[:1] == "-" and not line.startswith(shard)
        ]

    assert sorted(shard_lines(one)) == [
        f"-A DIRECTOR_SHARD_FWD -j NFQUEUE --queue-num {QUEUE + 1}",
        f"-A DIRECTOR_SHARD_ICMP -j NFQUEUE --queue-num {QUEUE}",
        f"-A DIRECTOR_SHARD_IN -j NFQUEUE --queue-num {QUEUE}",
    ]
    resharded = shard_lines(two)
    assert f"-A DIRECTOR_SHARD_IN -s 0.0.0.1/0.0.0.1 -j NFQUEUE --queue-num {QUEUE + 2}" in (
        resharded
    )
    assert f"-A DIRECTOR_SHARD_FWD -d 0.0.0.1/0.0.0.1 -j NFQUEUE --queue-num {QUEUE + 3}" in (
        resharded
    )
    assert len(resharded) == len(shard_rules(Shards(2, (0,)), QUEUE))
    assert other_lines(two) == other_lines(one)
    assert "-j DIRECTOR_IN" in one and set(SETS) <= set(one.split())
    assert "DIRECTOR" not in gone and "director-" not in gone

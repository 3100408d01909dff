"""The IPv6 shells, each on its own in bare namespaces (no lab, no daemon):

- the hooks (Hooks.install/sync/reshard/remove): ip6tables' beside iptables', the
  inet6 ipsets filled from the service table, twice installed is once, and removing
  leaves nothing of director's in either family;
- an IPv6 packet to a VIP reaches the worker's queue (the ip6tables hooks, the same
  queue as IPv4's), is rewritten and sent from the worker's IPv6 raw socket, and a
  socket in the real server's namespace receives it;
- a DR frame to an IPv6 real server not yet in the neighbour table: Neighbours
  resolves it by NDP and hands the frame to its MAC, and the real server's socket on
  the VIP (held on lo) receives the packet.

The worker's packet is rewritten by the core's IPv6 NAT (director/core/xmit/nat.py);
what is tested here is the shell around it, the queue and the raw socket.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from pkt6 import udp6

from director.lab import topology

QUEUE = 24
MARK = 0x1D1
VIP = "2001:db8:1::100"
CLIENT = "2001:db8:1::10"
OWN = "2001:db8:2::1"
RS = "2001:db8:2::2"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert not check or done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        run("ip", "netns", "add", name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.name, *args)

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *argv)

    def python(self, script: str, *args: str) -> str:
        return self.exec(sys.executable, "-c", script, *args).stdout

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=60)


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    """The director's namespace and the real server's (which also holds the client),
    one veth between them, IPv6 forwarding on in the director's."""
    prefix = topology.new_prefix("ds6")
    made = [Netns(f"{prefix}d"), Netns(f"{prefix}r")]
    d, r = made
    try:
        d.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", r.name)
        for ns in made:
            ns.exec("sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad")
            ns.ip("link", "set", "eth0", "up")
        d.exec("sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")
        d.ip("addr", "add", f"{OWN}/64", "dev", "eth0", "nodad")
        d.ip("addr", "add", "2001:db8:1::1/64", "dev", "eth0", "nodad")
        d.ip("addr", "add", f"{VIP}/128", "dev", "lo", "nodad")
        r.ip("addr", "add", f"{RS}/64", "dev", "eth0", "nodad")
        r.ip("addr", "add", f"{CLIENT}/64", "dev", "eth0", "nodad")
        r.ip("route", "add", f"{VIP}/128", "via", "2001:db8:1::1")
        yield d, r
    finally:
        for ns in made:
            ns.delete()


HOOKS = r"""
import subprocess, sys
from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.shell.netfilter import Hooks
rules = '''-A -t [2001:db8:1::100]:80 -s rr
-a -t [2001:db8:1::100]:80 -r [2001:db8:2::2]:8080 -m
-a -t [2001:db8:1::100]:80 -r [2001:db8:2::3]:80 -g
-A -u [2001:db8:1::100]:0 -s rr -p 300
-a -u [2001:db8:1::100]:0 -r 2001:db8:2::4 -m
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m
'''
def save():
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        out.append(subprocess.run([tool], capture_output=True, text=True).stdout)
    out.append(subprocess.run(["ipset", "list"], capture_output=True, text=True).stdout)
    return "\n@@@\n".join(out)
hooks = Hooks(queue=int(sys.argv[1]), mark=0x1D1, ipv6=sys.argv[2] == "ipv6")
hooks.install()
hooks.install()
hooks.sync(load_rules(rules))
hooks.reshard(Shards(2, (0,), (0,)))
print(save())
print("----")
hooks.remove()
print(save())
"""


def test_hooks_of_both_families_installed_once_and_removed_whole(
    pair: tuple[Netns, Netns],
) -> None:
    d, _ = pair
    up, gone = d.python(HOOKS, str(QUEUE), "ipv6").split("----\n")
    v4, v6, sets = up.split("\n@@@\n")
    # Installed twice, jumped into once, in each family.
    for jump in ("-A INPUT -j DIRECTOR_IN", "-A FORWARD -j DIRECTOR_FWD",
                 "-A PREROUTING -j DIRECTOR_PRE", "-A OUTPUT -j DIRECTOR_OUT"):  # fmt: skip
        assert up.count(jump) == 2, jump  # one in iptables, one in ip6tables
    assert "-m set --match-set director-vip dst -j DIRECTOR_SHARD_IN" in v4
    assert "-m set --match-set director-vip6 dst -j DIRECTOR_SHARD_IN" in v6
    assert "director-vip6" not in v4
    assert f"-A DIRECTOR_SHARD_IN -j NFQUEUE --queue-num {QUEUE}" in v6
    # Two workers by the IPv6 clients' last bit: requests by source, replies by
    # destination, ICMPv6 errors by the quoted packet (u32 compiled by the kernel).
    assert f"-A DIRECTOR_SHARD_IN -s ::1/::1 -j NFQUEUE --queue-num {QUEUE + 2}" in v6
    assert f"-A DIRECTOR_SHARD_FWD -d ::1/::1 -j NFQUEUE --queue-num {QUEUE + 3}" in v6
    assert f'--u32 "0x54&0x1=0x1" -j NFQUEUE --queue-num {QUEUE + 2}' in v6
    assert f'--u32 "0x36>>0x18=0x4&&0x64&0x1=0x1" -j NFQUEUE --queue-num {QUEUE + 2}' in v6
    assert f"-A DIRECTOR_SHARD_FWD -j NFQUEUE --queue-num {QUEUE + 1}" in v6
    # The inet6 sets hold the IPv6 VIP and NAT real servers (not the DR one), the
    # IPv4 ones the IPv4 ones only.
    members = _members(sets)
    assert members["director-vip6"] == {VIP}
    assert members["director-rs6"] == {"2001:db8:2::2,tcp:8080"}
    assert members["director-rs-any6"] == {"2001:db8:2::4"}
    assert members["director-rs-addr6"] == {"2001:db8:2::2", "2001:db8:2::4"}
    assert members["director-vip"] == {"203.0.113.5"}
    assert members["director-rs"] == {"198.18.0.2,tcp:80"}
    assert "family inet6" in sets
    assert "DIRECTOR" not in gone and "director-" not in gone


# In the director's namespace: the hooks for two workers, --queue-bypass (no worker
# binds the queues: packets go on once counted); prints the shard rules' counters
# after the clients sent (argv: queue; it waits for a line on stdin meanwhile).
SHARDS = r"""
import subprocess, sys
from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.shell.netfilter import Hooks
hooks = Hooks(queue=int(sys.argv[1]), mark=0x1D1, bypass=True, shards=Shards(2, (0,), (0,)))
hooks.install()
hooks.sync(load_rules("-A -u [2001:db8:1::100]:53 -s rr\n"))
print("ready", flush=True)
sys.stdin.readline()
print(subprocess.run(["ip6tables-save", "-c", "-t", "filter"], capture_output=True,
                     text=True).stdout)
hooks.remove()
"""

SEND = r"""
import socket, sys, time
for client in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((client, 0))
    for _ in range(3):  # the first ones wait for the neighbour (3 are held: unres_qlen)
        s.sendto(b"x", ("2001:db8:1::100", 53))
time.sleep(0.5)  # on the wire and counted
"""


def test_ipv6_clients_go_to_their_workers_queues(pair: tuple[Netns, Netns]) -> None:
    """Client ...::10 (last bit 0) to worker 0's queue, ...::11 (1) to worker 1's: the
    IPv6 shard rules counted them so (ip6tables-save -c)."""
    d, r = pair
    r.ip("addr", "add", "2001:db8:1::11/64", "dev", "eth0", "nodad")
    hooks = subprocess.Popen(
        ["ip", "netns", "exec", d.name, sys.executable, "-c", SHARDS, str(QUEUE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert hooks.stdout is not None
        assert hooks.stdout.readline().strip() == "ready"
        r.python(SEND, CLIENT, "2001:db8:1::11")
        out, err = hooks.communicate("go\n", timeout=30)
    finally:
        if hooks.poll() is None:
            hooks.kill()
            hooks.wait()
    counted = {}
    for line in out.splitlines():
        if line.startswith("[") and "-A DIRECTOR_SHARD_IN" in line:
            packets = int(line[1:].split(":")[0])
            counted[line.split("] ", 1)[1]] = packets
    even = f"-A DIRECTOR_SHARD_IN -s ::/::1 -j NFQUEUE --queue-num {QUEUE} --queue-bypass"
    odd = f"-A DIRECTOR_SHARD_IN -s ::1/::1 -j NFQUEUE --queue-num {QUEUE + 2} --queue-bypass"
    assert counted.get(even) == 3 and counted.get(odd) == 3, (out, err)


def test_a_host_without_ipv6_gets_the_ipv4_hooks_alone(pair: tuple[Netns, Netns]) -> None:
    """Hooks(ipv6=False), as on a host booted with ipv6.disable=1: the IPv4 hooks and
    sets as always, nothing of ip6tables', no inet6 set; the IPv6 services change
    nothing; removing leaves nothing."""
    d, _ = pair
    up, gone = d.python(HOOKS, str(QUEUE), "no").split("----\n")
    v4, v6, sets = up.split("\n@@@\n")
    assert "-A INPUT -j DIRECTOR_IN" in v4 and "DIRECTOR" not in v6
    members = _members(sets)
    assert members["director-vip"] == {"203.0.113.5"} and "director-vip6" not in members
    assert "DIRECTOR" not in gone and "director-" not in gone


def _members(listing: str) -> dict[str, set[str]]:
    """``ipset list``'s members by set name."""
    found: dict[str, set[str]] = {}
    name, inside = "", False
    for line in listing.splitlines():
        if line.startswith("Name: "):
            name, inside = line[6:], False
            found[name] = set()
        elif line.startswith("Members:"):
            inside = True
        elif inside and line.strip():
            found[name].add(line.strip())
        elif not line.strip():
            inside = False
    return found


# In the director's namespace: the hooks for an IPv6 UDP NAT service, a worker on
# their queue with the core (Director) behind it; it prints the IP version of each
# packet it was given, once one came or after 10 s.
WORKER = r"""
import select, sys, time
from director.core.engine import Director
from director.ctl.ipvsadm import load_rules
from director.shell.netfilter import Hooks
from director.shell.netlink import Neighbours, Routes
from director.shell.worker import Worker

queue, rs = int(sys.argv[1]), sys.argv[2]
config = load_rules("-A -u [2001:db8:1::100]:53 -s rr\n"
                    f"-a -u [2001:db8:1::100]:53 -r [{rs}]:5353 -m\n")
director = Director()
director.configure(config)
routes = Routes()
routes.annotate([d for svc in director.services for d in svc.dests])

class Seen:
    def __init__(self, core):
        self.core, self.versions = core, []
    def hook_in(self, buf, now, mark=0):
        self.versions.append(buf[0] >> 4)
        return self.core.hook_in(buf, now, mark)
    def hook_out(self, buf, now, skb_info=0):
        return self.core.hook_out(buf, now, skb_info)

seen = Seen(director)
hooks = Hooks(queue=queue, mark=0x1D1)
hooks.install()
hooks.sync(config)
worker = Worker(seen, queue, 0x1D1, Neighbours())
worker.bind()
print("ready", flush=True)
deadline = time.monotonic() + 10
try:
    while not seen.versions and time.monotonic() < deadline:
        if select.select([worker], [], [], 0.1)[0]:
            worker.run_once()
    time.sleep(0.2)
finally:
    worker.close()
    hooks.remove()
    routes.close()
print("versions", *seen.versions, "errors", dict(worker.errors), flush=True)
"""

# In the real server's namespace: a socket on RS:5353 (or the VIP's), a client that
# sends to the VIP until the socket hears from it (10 s at most); prints what came.
RECEIVE = r"""
import socket, sys, time
listen, port, vip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
rx.bind((listen, port))
rx.settimeout(0.2)
print("ready", flush=True)
tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
tx.bind(("2001:db8:1::10", 40001))
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    if vip:
        tx.sendto(b"hello6", (vip, 53))
    try:
        data, peer = rx.recvfrom(100)
    except TimeoutError:
        continue
    print(data.decode(), peer[0], peer[1])
    break
"""


def test_an_ipv6_packet_is_queued_rewritten_and_sent(pair: tuple[Netns, Netns]) -> None:
    d, r = pair
    worker = subprocess.Popen(
        ["ip", "netns", "exec", d.name, sys.executable, "-c", WORKER, str(QUEUE), RS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        got = r.python(RECEIVE, RS, "5353", VIP)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert got.split() == ["ready", "hello6", CLIENT, "40001"], (got, err)
    versions = out.split("versions", 1)[1].split("errors")[0].split()
    assert versions and set(versions) == {"6"}, out


# In the director's namespace: a DR frame (the client's packet to the VIP, unchanged)
# for RS, whose MAC is not known yet; the neighbour table is read until it went out.
FRAME = r"""
import select, socket, sys, time
from director.core.route import Frame
from director.shell.netlink import Neighbours
rs, packet = sys.argv[1], bytearray.fromhex(sys.argv[2])
neighbours = Neighbours()
rs_packed = socket.inet_pton(socket.AF_INET6, rs)
assert not any(key[1] == rs_packed for key in neighbours.macs)
index = socket.if_nametoindex("eth0")
neighbours.send(Frame(packet, rs_packed, index), time.monotonic())
deadline = time.monotonic() + 5
while neighbours.pending and time.monotonic() < deadline:
    if select.select([neighbours], [], [], 0.1)[0]:
        neighbours.on_readable()
print("resolved", (index, rs_packed) in neighbours.macs, "errors", dict(neighbours.errors))
neighbours.close()
"""


def test_a_dr_frame_finds_its_ipv6_neighbour_by_ndp(pair: tuple[Netns, Netns]) -> None:
    d, r = pair
    r.ip("addr", "add", f"{VIP}/128", "dev", "lo", "nodad")  # DR: the VIP, not answered
    packet = udp6(CLIENT, VIP, 40002, 53, b"direct6")
    listener = subprocess.Popen(
        ["ip", "netns", "exec", r.name, sys.executable, "-c", RECEIVE, VIP, "53", ""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        sent = d.python(FRAME, RS, packet.hex())
        got, err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert sent.startswith("resolved True"), sent
    assert got.split() == ["direct6", CLIENT, "40002"], (got, err, sent)


ROUTES = r"""
import socket, sys
from director.shell.netlink import Routes
routes = Routes()
for addr in sys.argv[1:]:
    r = routes.lookup(addr)
    print(socket.if_indextoname(r.ifindex), socket.inet_ntop(socket.AF_INET6, r.source),
          r.mtu, r.onlink, r.local)
routes.close()
"""


def test_routes_to_ipv6_real_servers(pair: tuple[Netns, Netns]) -> None:
    """What the kernel's route says (as __ip_vs_get_out_rt_v6 asks it): the device,
    the source the kernel picks, the MTU (the route's when it has one, else the
    device's), on-link or through a gateway, the director's own address."""
    d, _ = pair
    d.ip("-6", "route", "add", "2001:db8:3::/64", "via", RS, "mtu", "1400")
    got = d.python(ROUTES, RS, "2001:db8:3::5", VIP).splitlines()
    assert got[0].split() == ["eth0", OWN, "1500", "True", "False"]
    assert got[1].split() == ["eth0", OWN, "1400", "False", "False"]
    assert got[2].split()[1:] == [VIP, "65536", "True", "True"]  # lo's MTU: local

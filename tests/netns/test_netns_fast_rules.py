"""The fast path's hooks as the kernel takes them (iptables/director-fast.rules), with no
daemon: ``iptables-restore --noflush`` loads them for one and two workers; the daemon's
own ``Hooks(fast=True)`` installs, syncs, reshards and removes them (leaving nothing, and
every-packet hooks after a fast run leaving none of the fast ones); and a TCP connection
and a UDP flow go through them end to end.

End to end, three bare namespaces (client, director, real server): the director's hooks
are installed and synced by ``Hooks`` with the slots ``board.Slots`` gives, and the
worker's part (accept the opening packet with the mark ``fast_mark(slot)``) is played by a
MARK and an ACCEPT rule put first in the mangle shard chain.  Then the client's flow to
VIP:80 must reach the real server on its own port, the answers come from VIP:80,
conntrack hold the flow with the connmark, and only the first packet be NEW: the MARK
rule counts one packet however many followed, and no worker queue counts any.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_netns_shard_rules import Netns, new

from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.shell.board import Slots
from director.shell.netfilter import (
    FAST_SETS,
    SETS,
    SHARD_CHAINS,
    SHARD_NEW,
    TUNNEL_SET,
    TUNNEL_SETS,
    _fast_dnat_chain,
    fast_dnat_rules,
    fast_mark,
    fast_rules_text,
    fast_shard_rules,
    render,
    rules_text,
)
from tests.skips import unavailable

QUEUE = 20
MARK = 0x4C56
VIP = "203.0.113.5"
CLIENT = "198.51.100.6"
RS = "198.18.0.2"
RULES = f"""\
-A -t {VIP}:80 -s rr
-a -t {VIP}:80 -r {RS}:8080 -m
-a -t {VIP}:80 -r 198.18.0.3:80 -g
-A -u {VIP}:80 -s rr
-a -u {VIP}:80 -r {RS}:5353 -m
-A -f 7 -s rr
-a -f 7 -r 198.18.0.4 -m
"""


@pytest.fixture
def namespaces() -> Iterator[list[Netns]]:
    made: list[Netns] = []
    yield made
    for ns in made:
        ns.delete()


def rule_lines(save: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith("-")]


# Run inside a namespace: the fast path's timeout policies, as the hooks make them.
MAKE_POLICIES = """
from director.model.config import Timeouts
from director.shell.cttimeout import CtTimeouts, policies
with CtTimeouts() as ct:
    for policy in policies(Timeouts()):
        ct.set(policy)
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_iptables_restore_takes_the_fast_hooks(namespaces: list[Netns], workers: int) -> None:
    """Every rule as rendered, the DNAT chain's too, in the four tables (the timeout
    policies the CT rules name made first: nf_ct_set_timeout refuses a name it does
    not find, ENOENT)."""
    config = load_rules(RULES)
    shards = Shards.for_config(workers, config)
    ns = new(namespaces)
    for name, stype in (SETS | FAST_SETS | {TUNNEL_SET: TUNNEL_SETS[TUNNEL_SET]}).items():
        ns.exec("ipset", "create", name, stype)
    ns.exec(sys.executable, "-c", MAKE_POLICIES)
    text = render(rules_text(), QUEUE, MARK, True, shards, fast_rules_text())
    ns.exec("iptables-restore", "--noflush", stdin=text)
    dnat = fast_dnat_rules(config, Slots().assign(config))
    assert len(dnat) == 2
    ns.exec("iptables-restore", "--noflush", stdin=_fast_dnat_chain(dnat))
    save = ns.exec("iptables-save").stdout
    for table in ("raw", "filter", "mangle", "nat"):
        assert f"*{table}" in save
    wanted = [line for line in text.splitlines() if line.startswith(("-A ", "-I "))] + dnat
    loaded = rule_lines(save)
    assert len([line for line in loaded if line.startswith("-A ")]) == len(wanted)
    new_rules = [line for line in loaded if line.startswith(f"-A {SHARD_NEW} ")]
    assert new_rules == fast_shard_rules(shards, QUEUE, bypass=True)
    queues = {int(q) for rule in new_rules for q in re.findall(r"--queue-num (\d+)", rule)}
    assert queues == {QUEUE + 2 * w for w in range(workers)}
    for jump in ("-A PREROUTING -j DIRECTOR_FAST", "-A PREROUTING -j DIRECTOR_FAST_NAT"):
        assert jump in loaded
    marks = [re.search(r"--mark (0x[0-9a-f]+)/0xff00ffff", rule) for rule in dnat]
    assert all(m and m.group(1) in save for m in marks)


# Run inside a namespace (argv: queue, rules): the daemon's own Hooks, iptables-save and
# the ipsets after each step, between "----" lines.
HOOKS = r"""
import subprocess, sys
from director.core.shard import Shards
from director.ctl.ipvsadm import load_rules
from director.shell.board import Slots
from director.shell.cttimeout import CtTimeouts
from director.shell.netfilter import Hooks

def show():
    print(subprocess.run(["iptables-save"], capture_output=True, text=True).stdout)
    print(subprocess.run(["ipset", "save"], capture_output=True, text=True).stdout)
    with CtTimeouts() as ct:
        print("".join(f"policy {p.name} {p.use}\n" for p in ct.dump()))
    print(subprocess.run(["nft", "list", "table", "ip", "director_acct"], capture_output=True,
                         text=True).stdout)
    print("----")

config = load_rules(sys.argv[2])
slots = Slots().assign(config)
fast = Hooks(queue=int(sys.argv[1]), mark=0x4C56, bypass=False, fast=True)
fast.install(); fast.sync(config, slots); show()                             # 0
fast.install(); fast.sync(config, slots); show()                             # 1: again
fast.reshard(Shards(2, (0,))); show()                                        # 2
fast.sync(load_rules(sys.argv[2].split("-A -u")[0]), slots); show()          # 3: no UDP
off = Hooks(queue=int(sys.argv[1]), mark=0x4C56, bypass=False)
off.install(); off.sync(config); show()                                      # 4: every-packet
off.remove(); show()                                                         # 5
off.remove(); show()                                                         # 6: again
off.install(); off.remove(); show()                                          # 7: off only
fast.install(); fast.sync(config, slots); off.remove(); show()               # 8: fast, removed
"""


def stripped(save: str) -> list[str]:
    """iptables-save and ipset save without their counters, comments and hash seeds;
    the sets' members in order."""
    lines = [re.sub(r" initval \S+", "", line) for line in save.splitlines()]
    return sorted(line for line in lines if not line.startswith(("#", ":")) and line.strip())


def members(save: str, name: str) -> set[str]:
    return {line.split()[2] for line in save.splitlines() if line.startswith(f"add {name} ")}


def test_hooks_install_sync_reshard_remove_in_fast_mode(namespaces: list[Netns]) -> None:
    ns = new(namespaces)
    steps = ns.exec(sys.executable, "-c", HOOKS, str(QUEUE), RULES).stdout.split("----\n")
    fast, again, resharded, no_udp, off, gone, gone_again, off_only, fast_gone = steps[:9]
    assert stripped(again) == stripped(fast)  # install and sync are idempotent
    # Installed: the four tables' chains and jumps, the six sets, two DNAT rules.
    for table in ("*mangle", "*nat"):
        assert table in fast
    for name in (*SETS, *FAST_SETS):
        assert f"create {name} " in fast
    dnat = [line for line in rule_lines(fast) if line.startswith("-A DIRECTOR_FAST_DNAT")]
    assert [line.split("--to-destination ")[1] for line in dnat] == [f"{RS}:8080", f"{RS}:5353"]
    assert rule_lines(fast).count("-A PREROUTING -j DIRECTOR_FAST") == 1
    # The sets: the fast services, their NAT server, the fwmark one still in director-rs.
    assert members(fast, "director-fast") == {f"{VIP},tcp:80", f"{VIP},udp:80"}
    assert members(fast, "director-fast-rs") == {f"{RS},tcp:8080", f"{RS},udp:5353"}
    assert members(fast, "director-rs") == set()
    assert members(fast, "director-rs-any") == {"198.18.0.4"}
    # Reshard: both shard chains, the mangle one too, for two workers.
    assert f"-A {SHARD_NEW} -s 0.0.0.1/0.0.0.1 -j NFQUEUE --queue-num {QUEUE + 2}" in resharded
    assert "-A DIRECTOR_SHARD_IN -s 0.0.0.1/0.0.0.1" in resharded
    # The UDP service gone: its DNAT rule goes, the TCP one stays.
    dnat = [line for line in rule_lines(no_udp) if line.startswith("-A DIRECTOR_FAST_DNAT")]
    assert [line.split("--to-destination ")[1] for line in dnat] == [f"{RS}:8080"]
    # Every-packet hooks after the fast ones: nothing of the fast path is left.
    for word in ("DIRECTOR_FAST", SHARD_NEW, "director-fast", "connmark", "DNAT"):
        assert word not in off
    assert members(off, "director-rs") == {f"{RS},tcp:8080", f"{RS},udp:5353"}
    # The timeout policies: each held by its CT rule while the fast hooks are in; none
    # once they are out (every-packet hooks after the fast ones take them out too).
    held = ["policy director-tcp 2", "policy director-udp 2"]
    for save in (fast, again, resharded, no_udp):
        assert [line for line in save.splitlines() if line.startswith("policy ")] == held
    assert "policy " not in off

    # The counting table (nftables): two counters per NAT real server, and one fewer
    # pair without the UDP service; none in every-packet mode.
    def counters(save: str) -> set[str]:
        return set(re.findall(r"counter (c_[0-9a-f]{8}_(?:in|out)) \{", save))

    assert "table ip director_acct" in fast and len(counters(fast)) == 4
    assert counters(again) == counters(resharded) == counters(fast)
    assert len(counters(no_udp)) == 2 and counters(no_udp) < counters(fast)
    assert "director_acct" not in off
    # Removed (twice: nothing to do the second time), from either mode.
    for save in (gone, gone_again, off_only, fast_gone):
        assert "DIRECTOR" not in save and "director-" not in save
        assert "director_acct" not in save


OFF = r"""
import subprocess
from director.shell.netfilter import Hooks
hooks = Hooks(queue=20, mark=0x4C56)
hooks.install(); hooks.remove(); hooks.install()
print(subprocess.run(["iptables-save"], capture_output=True, text=True).stdout)
"""


def test_every_packet_hooks_name_no_mangle_or_nat_table(namespaces: list[Netns]) -> None:
    """Off, installing (which takes out a fast run's leftovers) and removing (which takes
    out the fast hooks in every mode) make no table of the fast path: an empty nat table
    alone would hook NAT into every tracked flow of the host (iptables-legacy makes a
    table any command names; iptables-nft, this test's usual one, does not)."""
    ns = new(namespaces)
    save = ns.exec(sys.executable, "-c", OFF).stdout
    assert "*raw" in save and "*filter" in save and "-A INPUT -j DIRECTOR_IN" in save
    assert "*mangle" not in save and "*nat" not in save


# Run inside a namespace: a server of one flow (argv: proto, address, port); it prints
# "ready", then answers each message with what it saw: peer, own address, the message.
SERVER = r"""
import json, socket, sys
proto, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.settimeout(20)
if proto == "tcp":
    s.listen(1)
print("ready", flush=True)
if proto == "tcp":
    conn, peer = s.accept()
    conn.settimeout(20)
    for _ in range(3):
        msg = conn.recv(100)
        conn.sendall(json.dumps([peer, conn.getsockname(), msg.decode()]).encode())
    conn.close()
else:
    for _ in range(3):
        msg, peer = s.recvfrom(100)
        s.sendto(json.dumps([peer, [addr, port], msg.decode()]).encode(), peer)
"""

# Run inside a namespace: three messages to VIP:80 and what came back (argv: proto,
# VIP, port), with the address each answer came from.
CLIENT_SCRIPT = r"""
import json, socket, sys
proto, vip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(10)
s.bind(("0.0.0.0", 40000))
answers = []
if proto == "tcp":
    s.connect((vip, port))
for i in range(3):
    if proto == "tcp":
        s.sendall(f"m{i}".encode())
        answers.append([json.loads(s.recv(1000)), list(s.getpeername())])
    else:
        s.sendto(f"m{i}".encode(), (vip, port))
        data, source = s.recvfrom(1000)
        answers.append([json.loads(data), list(source)])
print(json.dumps(answers))
"""


def counts(ns: Netns, table: str) -> dict[str, int]:
    """Packets per rule of ``table`` ("-A chain ..." -> packets)."""
    got: dict[str, int] = {}
    for line in ns.exec("iptables-save", "-c", "-t", table).stdout.splitlines():
        if m := re.match(r"\[(\d+):\d+\] (-A .*)$", line):
            got[m.group(2)] = int(m.group(1))
    return got


INSTALL = r"""
import sys
from director.ctl.ipvsadm import load_rules
from director.shell.board import Slots
from director.shell.netfilter import Hooks
config = load_rules(sys.argv[2])
slots = Slots().assign(config)
hooks = Hooks(queue=int(sys.argv[1]), mark=0x4C56, bypass=True, fast=True)
hooks.install()
hooks.sync(config, slots)
"""


@pytest.fixture
def lab(namespaces: list[Netns]) -> tuple[Netns, Netns, Netns]:
    """Client, director (the fast hooks of RULES, synced), real server."""
    if shutil.which("conntrack") is None:
        unavailable("conntrack (conntrack-tools) is not installed")
    client, director, rs = new(namespaces), new(namespaces), new(namespaces)
    director.ip("link", "add", "to-c", "type", "veth", "peer", "name", "eth0", "netns", client.name)
    director.ip("link", "add", "to-rs", "type", "veth", "peer", "name", "eth0", "netns", rs.name)
    for ns, addr, gateway in ((client, CLIENT, "198.51.100.1"), (rs, RS, "198.18.0.1")):
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", gateway)
    director.ip("addr", "add", "198.51.100.1/24", "dev", "to-c")
    director.ip("addr", "add", "198.18.0.1/24", "dev", "to-rs")
    director.ip("addr", "add", f"{VIP}/32", "dev", "lo")
    for link in ("to-c", "to-rs"):
        director.ip("link", "set", link, "up")
    director.exec("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")  # no procps
    director.exec(sys.executable, "-c", INSTALL, str(QUEUE), RULES)
    return client, director, rs


def test_a_fast_flow_is_dnated_by_its_mark_and_carried_by_conntrack(
    lab: tuple[Netns, Netns, Netns],
) -> None:
    client, director, rs = lab
    config = load_rules(RULES)
    slots = Slots().assign(config)  # the same slots as the director's (the same config)
    for proto, rs_port in (("tcp", 8080), ("udp", 5353)):
        svc = next(s for s in config.services if s.protocol == proto)
        key = next(k for k in slots if k[0][0] == {"tcp": 6, "udp": 17}[proto] and k[1])
        slot = slots[key]
        assert svc.dests[0].port == rs_port and key[2] == rs_port
        # The worker's part: the opening packet accepted with the fast mark.
        marking = f"-A {SHARD_NEW} -p {proto} -j MARK --set-xmark {fast_mark(slot):#x}/0xffffffff"
        director.exec("iptables", "-t", "mangle", "-I", SHARD_NEW, "1", *marking.split()[2:])
        director.exec("iptables", "-t", "mangle", "-I", SHARD_NEW, "2", "-p", proto, "-j", "ACCEPT")
        server = subprocess.Popen(
            ["ip", "netns", "exec", rs.name, sys.executable, "-c", SERVER, proto, RS, str(rs_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            out = client.exec(sys.executable, "-c", CLIENT_SCRIPT, proto, VIP, "80").stdout
            assert server.wait(timeout=20) == 0
        finally:
            server.kill()
            server.wait()
        answers = json.loads(out)
        for i, (seen, source) in enumerate(answers):
            peer, own, msg = seen
            assert msg == f"m{i}"
            assert peer == [CLIENT, 40000]  # the client's own address: DNAT only
            assert own == [RS, rs_port]  # the real server on its port
            assert source == [VIP, 80]  # the answers from the VIP
        entries = director.exec("conntrack", "-L", "-p", proto, "--orig-dst", VIP).stdout
        (entry,) = [line for line in entries.splitlines() if f"sport={rs_port} " in line]
        assert f"src={RS} dst={CLIENT} sport={rs_port} dport=40000" in entry
        assert f"mark={fast_mark(slot)} " in entry
        mangle, nat, filt = (
            counts(director, "mangle"),
            counts(director, "nat"),
            counts(director, "filter"),
        )
        assert mangle[marking] == 1  # only the first packet was NEW
        dnat = next(r for r in nat if r.endswith(f"--to-destination {RS}:{rs_port}"))
        assert nat[dnat] == 1
        accepted = filt["-A DIRECTOR_FWD -m connmark --mark 0x4c000000/0xff000000 -j ACCEPT"]
        assert accepted >= 6  # three each way, at least (TCP's handshake and FIN too)
        for rule, packets in filt.items():
            if rule.split()[1] in SHARD_CHAINS:
                assert packets == 0, rule  # no worker queue saw any of it
        raw = counts(director, "raw")
        assert all(n == 0 for rule, n in raw.items() if "--notrack" in rule)
        director.exec("iptables", "-t", "mangle", "-F", SHARD_NEW)
        director.exec("iptables", "-t", "filter", "-Z")
        director.exec("iptables", "-t", "mangle", "-Z")
        director.exec("iptables", "-t", "nat", "-Z")


# Run inside a namespace: one TCP connection attempt to VIP:80 (argv: VIP), what became
# of it: "connected", "refused" or "timeout".
ATTEMPT = r"""
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], 80))
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


@pytest.mark.parametrize(
    ("verdict", "outcome", "rule"),
    [
        # The worker marked a slot no DNAT rule binds (its server just went): dropped in
        # DIRECTOR_IN, not answered by the local stack; the client's next SYN is new.
        (
            ["-j", "MARK", "--set-xmark", f"{fast_mark(0xFFFF):#x}/0xffffffff"],
            "timeout",
            "-A DIRECTOR_IN -m connmark --mark 0x4c000000/0xff000000 -j DROP",
        ),
        # The worker passed the opening packet on unmarked (as IPVS passes on what it does
        # not schedule): the local stack has it, without a second trip to the worker.
        (
            [],
            "refused",
            "-A DIRECTOR_IN -m conntrack --ctstate NEW -m set --match-set director-fast "
            "dst,dst -j RETURN",
        ),
    ],
)
def test_an_opening_packet_no_dnat_rule_bound(
    lab: tuple[Netns, Netns, Netns], verdict: list[str], outcome: str, rule: str
) -> None:
    client, director, _ = lab
    if verdict:
        director.exec("iptables", "-t", "mangle", "-I", SHARD_NEW, "1", "-p", "tcp", *verdict)
    director.exec("iptables", "-t", "mangle", "-I", SHARD_NEW, "2" if verdict else "1",
                  "-p", "tcp", "-j", "ACCEPT")  # fmt: skip
    assert client.exec(sys.executable, "-c", ATTEMPT, VIP).stdout.strip() == outcome
    filt = counts(director, "filter")
    assert filt[rule] >= 1
    for chain_rule, packets in filt.items():
        if chain_rule.split()[1] in SHARD_CHAINS:
            assert packets == 0, chain_rule
    if verdict:  # never confirmed: conntrack holds nothing of it
        entries = director.exec("conntrack", "-L", "-p", "tcp", "--orig-dst", VIP).stdout
        assert "dport=80" not in entries

"""Installing and removing director's netfilter hooks, and keeping its ipsets.

The rules live in ``iptables/director.rules`` (iptables-restore syntax).  Installing is
remove-then-load, removing deletes only the jumps that file inserts and the chains it
declares, so both are idempotent and touch nothing else of the host's firewall.  The
ipsets that select virtual-service traffic are kept over netlink with pyroute2.

Every iptables program run has a time limit: ``-w`` waits at most IPTABLES_WAIT for
the xtables lock, and the run itself at most IPTABLES_TIMEOUT, so a wedged lock or
program fails a change (which ``sync``'s caller undoes) instead of hanging the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2.ipset import IPSet, PortEntry

from director.core.service import IPPROTO_TCP, IPPROTO_UDP, PROTO_NUMBERS
from director.core.shard import Shards, dotted
from director.model.config import Config

log = logging.getLogger(__name__)

VIP_SET = "director-vip"
RS_SET = "director-rs"
RS_ANY_SET = "director-rs-any"
RS_ADDR_SET = "director-rs-addr"
# The ipsets director keeps, by name: their type (see iptables/director.rules).
SETS: dict[str, str] = {
    VIP_SET: "hash:ip",
    RS_SET: "hash:ip,port",
    RS_ANY_SET: "hash:ip",
    RS_ADDR_SET: "hash:ip",
}
FWM_CHAIN = "DIRECTOR_FWM"
Entry = tuple[str, int, int]  # address, protocol number, port


RULES_FILE = "director.rules"


def rules_text() -> str:
    """The hook rules: from the source tree (a checkout, an editable install), else
    where an install puts them (``<prefix>/share/director/iptables``)."""
    for folder in (
        Path(__file__).resolve().parents[2] / "iptables",
        Path(sys.prefix) / "share" / "director" / "iptables",
    ):
        if (folder / RULES_FILE).is_file():
            return (folder / RULES_FILE).read_text()
    raise FileNotFoundError(f"{RULES_FILE} is neither in the source tree nor installed")


def reply_queue(queue: int) -> int:
    """The queue of NAT replies (FORWARD): the one after the requests' (LOCAL_IN)."""
    return queue + 1


def worker_queue(queue: int, worker: int) -> int:
    """The request queue of worker ``worker`` (its replies: the next one)."""
    return queue + 2 * worker


SHARD_IN = "DIRECTOR_SHARD_IN"
SHARD_FWD = "DIRECTOR_SHARD_FWD"
SHARD_ICMP = "DIRECTOR_SHARD_ICMP"
SHARD_CHAINS = (SHARD_IN, SHARD_FWD, SHARD_ICMP)

# u32 tests on an ICMP error's quoted packet ("0>>22&0x3C@" steps over the outer IP
# header to the ICMP header, whose quoted IP header starts 8 bytes in): the quoted
# protocol (byte 9 of it), its destination (bytes 16-19: the client of a reply the
# director sent from a VIP) and, when it is IPIP (a TUN request), the source of the
# packet inside (the client; the director's outer header has no options: 20 bytes).
_QUOTED_IPIP = "0>>22&0x3C@16>>16&0xFF=4"
_QUOTED_DST = "0>>22&0x3C@24"
_QUOTED_INNER_SRC = "0>>22&0x3C@40"


def shard_rules(shards: Shards, queue: int, bypass: bool = False) -> list[str]:
    """The shard chains' rules: each shard's requests (by source), NAT replies (by
    destination) and ICMP errors (by the quoted client) to its worker's queues."""
    tail = " --queue-bypass" if bypass else ""

    def to(worker: int, reply: bool = False) -> str:
        number = worker_queue(queue, worker) + (1 if reply else 0)
        return f"-j NFQUEUE --queue-num {number}{tail}"

    rules: list[str] = []
    for addr, mask, worker in shards.patterns():
        if not mask:
            break  # one shard: everything goes to worker 0 (below)
        where = f"{dotted(addr)}/{dotted(mask)}"
        rules.append(f"-A {SHARD_IN} -s {where} {to(worker)}")
        rules.append(f"-A {SHARD_FWD} -d {where} {to(worker, reply=True)}")
        rules.append(
            f"-A {SHARD_ICMP} -m u32 --u32 {_QUOTED_IPIP}&&{_QUOTED_INNER_SRC}"
            f"&{mask:#x}={addr:#x} {to(worker)}"
        )
        rules.append(
            f"-A {SHARD_ICMP} -m u32 ! --u32 {_QUOTED_IPIP} "
            f"-m u32 --u32 {_QUOTED_DST}&{mask:#x}={addr:#x} {to(worker)}"
        )
    # What no pattern took (one worker; an ICMP error quoting too little to tell):
    # worker 0, which passes on what it does not know.
    rules += [f"-A {SHARD_IN} {to(0)}", f"-A {SHARD_FWD} {to(0, reply=True)}",
              f"-A {SHARD_ICMP} {to(0)}"]  # fmt: skip
    return rules


def render(text: str, queue: int, mark: int, bypass: bool = False,
           shards: Shards | None = None) -> str:  # fmt: skip
    rules = shard_rules(shards or Shards(), queue, bypass)
    return text.replace("@SHARD_RULES@", "\n".join(rules)).replace("@MARK@", hex(mark))


_TABLE = re.compile(r"^\*(\w+)")
_CHAIN = re.compile(r"^:(\S+)")
_JUMP = re.compile(r"^-I (\S+) \d+ (.*)$")


def declared(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """Our chains as (table, chain) and our jumps as (table, builtin chain, rule)."""
    chains: list[tuple[str, str]] = []
    jumps: list[tuple[str, str, str]] = []
    table = ""
    for line in text.splitlines():
        if m := _TABLE.match(line):
            table = m.group(1)
        elif m := _CHAIN.match(line):
            chains.append((table, m.group(1)))
        elif m := _JUMP.match(line):
            jumps.append((table, m.group(1), m.group(2)))
    return chains, jumps


IPTABLES_WAIT = 5  # seconds iptables waits for the xtables lock (-w)
IPTABLES_TIMEOUT = 15.0  # seconds one iptables run may take in all


class HookError(OSError):
    """An iptables program failed or ran out of time: the hooks did not change."""


def _run(argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, check=False, timeout=IPTABLES_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise HookError(f"{argv[0]}: no result in {IPTABLES_TIMEOUT:.0f} s") from None


def _iptables(*args: str) -> bool:
    try:
        done = _run(["iptables", "-w", str(IPTABLES_WAIT), *args])
    except HookError as err:
        log.error("iptables %s: %s", " ".join(args), err)
        return False
    return done.returncode == 0


@dataclass
class Hooks:
    """The hooks of one running daemon."""

    queue: int
    mark: int
    bypass: bool = False
    shards: Shards = field(default_factory=Shards)
    text: str = field(default_factory=rules_text)
    _entries: dict[str, set[Entry]] = field(default_factory=dict)
    _marks: set[int] | None = None  # None: the chain's contents are not known

    def install(self) -> None:
        """Load the hooks.  Hooks a previous run left in place (on_stop = keep) are
        taken over without a gap: the sets keep their contents until the first sync
        swaps new ones in, the chains are reloaded in one iptables-restore
        transaction, and a jump is added only where it is missing."""
        with IPSet() as ipset:
            for name, stype in SETS.items():
                ipset.create(name, stype=stype, exclusive=False)
        self._entries = {}  # contents unknown: the first sync replaces them whole
        self._marks = None
        _, jumps = declared(self.text)
        text = render(self.text, self.queue, self.mark, self.bypass, self.shards)
        _restore("\n".join(line for line in text.splitlines() if not _JUMP.match(line)) + "\n")
        for table, chain, rule in jumps:
            if not _iptables("-t", table, "-C", chain, *rule.split()):
                _iptables("-t", table, "-I", chain, "1", *rule.split())
        log.info("netfilter hooks installed (NFQUEUE %d, replies %d; %d worker%s)",
                 self.queue, reply_queue(self.queue), self.shards.workers,
                 "" if self.shards.workers == 1 else "s")  # fmt: skip

    def reshard(self, shards: Shards) -> None:
        """Send the clients to their workers by ``shards`` from now on: the shard
        chains rewritten in one iptables-restore transaction."""
        rules = shard_rules(shards, self.queue, self.bypass)
        declared_chains = [f":{chain} - [0:0]" for chain in SHARD_CHAINS]
        _restore("\n".join(["*filter", *declared_chains, *rules, "COMMIT", ""]))
        self.shards = shards

    def remove(self) -> None:
        chains, jumps = declared(self.text)
        for table, chain, rule in jumps:
            while _iptables("-t", table, "-D", chain, *rule.split()):
                pass
        for table, chain in chains:  # flush all before deleting: they jump to each other
            _iptables("-t", table, "-F", chain)
        for table, chain in chains:
            _iptables("-t", table, "-X", chain)
        with IPSet() as ipset:
            for name in SETS:
                for spare in (name, f"{name}-new"):
                    with contextlib.suppress(Exception):
                        ipset.destroy(spare)
        self._entries.clear()

    def sync(self, config: Config) -> None:
        """Make the ipsets and the fwmark chain select exactly the services of
        ``config`` and the NAT real servers whose replies must be rewritten.

        A failure raises and leaves what it could not finish marked unknown, so the
        next sync (the caller's undo, or a retry) replaces it whole."""
        wanted, marks = selection(config)
        with IPSet() as ipset:
            for name, entries in wanted.items():
                have = self._entries.pop(name, None)
                if have is None:
                    _replace_set(ipset, name, entries)
                else:
                    for entry in have - entries:
                        value, etype = _ipset_entry(entry)
                        ipset.delete(name, value, etype=etype)
                    for entry in entries - have:
                        value, etype = _ipset_entry(entry)
                        ipset.add(name, value, etype=etype, exclusive=False)
                self._entries[name] = entries
        if marks != self._marks:
            self._marks = None
            _restore(_fwmark_chain(marks))
            self._marks = marks


def selection(config: Config) -> tuple[dict[str, set[Entry]], set[int]]:
    """What the hooks must select for ``config`` (the table the core runs): each
    ipset's entries (the VIPs, the NAT real servers whose replies come back through
    FORWARD) and the firewall marks of the fwmark services."""
    wanted: dict[str, set[Entry]] = {name: set() for name in SETS}
    marks: set[int] = set()
    for svc in config.services:
        proto = PROTO_NUMBERS.get(svc.protocol, 0)
        if proto:
            wanted[VIP_SET].add((svc.addr, 0, 0))
        else:
            marks.add(svc.fwmark)
        for dest in svc.dests:
            if dest.method != "masq":
                continue
            wanted[RS_ADDR_SET].add((dest.addr, 0, 0))
            port = (dest.port or svc.port) if proto else dest.port
            if not port:
                wanted[RS_ANY_SET].add((dest.addr, 0, 0))
            for protocol in (proto,) if proto else (IPPROTO_TCP, IPPROTO_UDP):
                if port:
                    wanted[RS_SET].add((dest.addr, protocol, port))
    return wanted, marks


def _replace_set(ipset: IPSet, name: str, entries: set[Entry]) -> None:
    """Fill a new set and swap it in: the old contents go in one step."""
    spare = f"{name}-new"
    ipset.create(spare, stype=SETS[name], exclusive=False)
    ipset.flush(spare)
    for entry in entries:
        value, etype = _ipset_entry(entry)
        ipset.add(spare, value, etype=etype, exclusive=False)
    ipset.swap(name, spare)
    ipset.destroy(spare)


def _ipset_entry(entry: Entry) -> tuple[object, str]:
    """The entry and its type as pyroute2 takes them."""
    addr, proto, port = entry
    if proto:
        return (addr, PortEntry(port, proto)), "ip,port"
    return addr, "ip"


def _fwmark_chain(marks: set[int]) -> str:
    """DIRECTOR_FWM, rewritten whole: one rule per firewall-mark service, to the shard
    chain of requests."""
    rules = [f"-A {FWM_CHAIN} -m mark --mark {mark:#x} -j {SHARD_IN}" for mark in sorted(marks)]
    return "\n".join(["*filter", f":{FWM_CHAIN} - [0:0]", *rules, "COMMIT", ""])


def _restore(text: str) -> None:
    done = _run(["iptables-restore", "-w", str(IPTABLES_WAIT), "--noflush"], text.encode())
    if done.returncode:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise HookError(f"iptables-restore failed: {reason[-1] if reason else done.returncode}")

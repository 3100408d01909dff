"""Installing and removing director's netfilter hooks, and keeping its ipsets.

The rules live in ``iptables/director.rules`` (iptables-restore syntax).  Installing is
remove-then-load, removing deletes only the jumps that file inserts and the chains it
declares, so both are idempotent and touch nothing else of the host's firewall.  The
ipsets that select virtual-service traffic are kept over netlink with pyroute2.

IPv6 has its twin: ``iptables/director6.rules``, loaded with ``ip6tables-restore`` (the
same backend as iptables': the alternatives pick both), with family inet6 ipsets
(``SETS6``), installed, resharded, synced and removed together with the IPv4 hooks.
The kernel fast path is IPv4 only: IPv6 services always take the every-packet path.

``--fast-path kernel`` (``Hooks(fast=True)``) adds ``iptables/director-fast.rules``: the
first packet of a fast service's flow is queued from mangle PREROUTING, the worker answers
with the mark ``fast_mark(slot)``, and a DNAT rule per NAT real server binds the flow,
which conntrack carries from then on (the file's comments say how), with the timeouts of
the conntrack timeout policies ipvsadm --set's figures make (director/shell/cttimeout.py:
made before the rules that name them, updated in place by each sync, deleted after the
rules).  Off, the default, loads exactly the every-packet hooks; removing removes both
in every mode.

Every iptables program run has a time limit: ``-w`` waits at most IPTABLES_WAIT for
the xtables lock, and the run itself at most IPTABLES_TIMEOUT, so a wedged lock or
program fails a change (which ``sync``'s caller undoes) instead of hanging the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2.ipset import IPSet, PortEntry

from director.core.service import IPPROTO_TCP, IPPROTO_UDP, PROTO_NUMBERS, pack_addr, service_key
from director.core.shard import Shards, dotted, hex6
from director.model.config import Config, ServiceConf, Timeouts
from director.shell import cttimeout

if TYPE_CHECKING:
    from director.shell.board import SlotKey

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
VIP6_SET = "director-vip6"
RS6_SET = "director-rs6"
RS_ANY6_SET = "director-rs-any6"
RS_ADDR6_SET = "director-rs-addr6"
# The IPv6 twin of each IPv4 set (family inet6; see iptables/director6.rules).
TWIN6: dict[str, str] = {VIP_SET: VIP6_SET, RS_SET: RS6_SET, RS_ANY_SET: RS_ANY6_SET,
                         RS_ADDR_SET: RS_ADDR6_SET}  # fmt: skip
SETS6: dict[str, str] = {TWIN6[name]: stype for name, stype in SETS.items()}
FAST_SET = "director-fast"
FAST_RS_SET = "director-fast-rs"
# The ipsets of --fast-path kernel (iptables/director-fast.rules), by name: their type.
FAST_SETS: dict[str, str] = {
    FAST_SET: "hash:ip,port",  # VIP,proto:port of every fast service
    FAST_RS_SET: "hash:ip,port",  # RIP,proto:port of their NAT real servers
}
# ignore_tunneled (director.core.tunneled): the devices whose packets no hook queues,
# as net,iface entries of every address (0.0.0.0/0,DEV; ::/0,DEV) matched src,src
# (source address, input device).  Empty while the sysctl is 0.
TUNNEL_SET = "director-tunneled"
TUNNEL6_SET = "director-tunneled6"
TUNNEL_SETS: dict[str, str] = {TUNNEL_SET: "hash:net,iface", TUNNEL6_SET: "hash:net,iface"}
ANY_NET = {TUNNEL_SET: "0.0.0.0/0", TUNNEL6_SET: "::/0"}
FWM_CHAIN = "DIRECTOR_FWM"
FAST_DNAT_CHAIN = "DIRECTOR_FAST_DNAT"
# The fast flows' packet and byte counters: an nftables table of director's own (native
# rules, one lookup of the connection's mark a packet), beside the iptables hooks.
ACCT_TABLE = "director_acct"
ACCT_PRIORITY = -149  # after conntrack (-200) and mangle (-150), before nat (-100)
SHARD_NEW = "DIRECTOR_SHARD_NEW"  # mangle: the fast services' opening packets, by shard
Entry = tuple[str, int, int]  # address, protocol number, port

# The packet mark a worker answers a fast flow's opening packet with: FAST_TAG | slot,
# the slot (director/shell/board.py Slots) of the real server it chose in the low 16
# bits.  The tag is the top byte; bits 16-23 are not director's (neither matched nor
# saved).  No fast mark equals the worker's send mark (--send-mark, matched whole on
# OUTPUT), whose top byte is 0.
FAST_TAG = 0x4C << 24
FAST_MASK = 0xFF000000  # the tag's bits
FAST_SLOT_MASK = 0xFFFF
FAST_BITS = FAST_MASK | FAST_SLOT_MASK  # director's bits of the mark and the connmark


def fast_mark(slot: int) -> int:
    """The mark that binds a fast flow to the real server of board slot ``slot``."""
    if not 0 < slot <= FAST_SLOT_MASK:
        raise ValueError(f"board slot {slot} does not fit a fast-path mark")
    return FAST_TAG | slot


def fast_slot(mark: int) -> int | None:
    """The board slot a fast flow's (conn)mark names, or None for a mark not director's."""
    if mark & FAST_MASK != FAST_TAG:
        return None
    return (mark & FAST_SLOT_MASK) or None


def fast_service(svc: ServiceConf) -> bool:
    """Whether ``svc``'s flows take the fast path in --fast-path kernel: a TCP or UDP
    service of an IPv4 VIP with a port (the hooks are iptables', IPv4; a port-zero
    service's flows have no one port to match).  It stays fast with no NAT real server
    left, so the flows conntrack already carries for it go on (IPVS keeps serving the
    connections of a removed real server)."""
    return svc.protocol in PROTO_NUMBERS and bool(svc.port) and ":" not in svc.addr


RULES_FILE = "director.rules"
RULES6_FILE = "director6.rules"
FAST_RULES_FILE = "director-fast.rules"


def rules_text(name: str = RULES_FILE) -> str:
    """The hook rules: from the source tree (a checkout, an editable install), else
    where an install puts them (``<prefix>/share/director/iptables``)."""
    for folder in (
        Path(__file__).resolve().parents[2] / "iptables",
        Path(sys.prefix) / "share" / "director" / "iptables",
    ):
        if (folder / name).is_file():
            return (folder / name).read_text()
    raise FileNotFoundError(f"{name} is neither in the source tree nor installed")


def fast_rules_text() -> str:
    return rules_text(FAST_RULES_FILE)


def rules6_text() -> str:
    return rules_text(RULES6_FILE)


def ipv6_available() -> bool:
    """Whether this host has IPv6 at all (no /proc/sys/net/ipv6 with ipv6.disable=1):
    without it the IPv6 hooks are left out, and the IPv4 ones work as before."""
    return Path("/proc/sys/net/ipv6").is_dir()


def ipv6_service(svc: ServiceConf) -> bool:
    """Whether ``svc`` is an IPv6 service: its VIP is, or for a firewall-mark service
    (ipvsadm -f MARK -6) its address is FWM6_ADDR ("::", the service's af)."""
    return ":" in svc.addr


@dataclass(frozen=True, slots=True)
class Tables:
    """One family's iptables programs (the alternatives make both the same backend)."""

    tool: str
    restore: str
    save: str


IPV4 = Tables("iptables", "iptables-restore", "iptables-save")
IPV6 = Tables("ip6tables", "ip6tables-restore", "ip6tables-save")


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
# A mixed-family tunnel's (an IPv6 client's request in IPv4, protocol 41): the IPv6
# client's address 8 bytes into the inner header, bytes 36-51 from the ICMP header.
_QUOTED_6IN4 = "0>>22&0x3C@16>>16&0xFF=41"
_ICMP_AT = "0>>22&0x3C@"
_QUOTED_6IN4_SRC = 8 + 20 + 8
# A GUE or GRE tunnel's (an IPv4 client's request): the GUE header 8 bytes into the
# quoted UDP header (version 0, C 0, proto_ctype 4; no option: director sends none for
# a complete checksum), the GRE header right after the quoted IP header (flags 0 or C,
# protocol type IPv4); the client's address 12 bytes into the packet behind them.
_QUOTED_GUE = f"{_ICMP_AT}16>>16&0xFF=17&&{_ICMP_AT}36>>16&0xE0FF=4"
_QUOTED_GRE = f"{_ICMP_AT}16>>16&0xFF=47&&{_ICMP_AT}28=0x800"
_QUOTED_GRE_CSUM = f"{_ICMP_AT}16>>16&0xFF=47&&{_ICMP_AT}28=0x80000800"
_TUNNEL_QUOTES = (
    (_QUOTED_GUE, f"{_ICMP_AT}52"),
    (_QUOTED_GRE, f"{_ICMP_AT}44"),
    (_QUOTED_GRE_CSUM, f"{_ICMP_AT}48"),
)


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
        others = "".join(f"-m u32 ! --u32 {quote} " for quote, _ in _TUNNEL_QUOTES)
        rules.append(
            f"-A {SHARD_ICMP} -m u32 ! --u32 {_QUOTED_IPIP} -m u32 ! --u32 {_QUOTED_6IN4} "
            f"{others}-m u32 --u32 {_QUOTED_DST}&{mask:#x}={addr:#x} {to(worker)}"
        )
    # A GUE or GRE tunnel's error (VS/TUN --tun-type gue|gre): by the client inside.
    for addr, mask, worker in shards.patterns():
        if not mask:
            break
        for quote, src in _TUNNEL_QUOTES:
            rules.append(
                f"-A {SHARD_ICMP} -m u32 --u32 {quote}&&{src}&{mask:#x}={addr:#x} {to(worker)}"
            )
    # An IPv6 client's request the director tunnelled in IPv4 (a mixed-family pool):
    # by the IPv6 client's bits (Shards.patterns6).
    for addr, mask, worker in shards.patterns6():
        if not mask:
            break
        rules.append(
            f"-A {SHARD_ICMP} -m u32 --u32 {_QUOTED_6IN4}&&"
            f"{_u32_words(_QUOTED_6IN4_SRC, addr, mask, _ICMP_AT)} {to(worker)}"
        )
    # What no pattern took (one worker; an ICMP error quoting too little to tell):
    # worker 0, which passes on what it does not know.
    rules += [f"-A {SHARD_IN} {to(0)}", f"-A {SHARD_FWD} {to(0, reply=True)}",
              f"-A {SHARD_ICMP} {to(0)}"]  # fmt: skip
    return rules


# The same for an ICMPv6 error (its fixed header 40 bytes, the quoted packet 8 bytes
# into the ICMPv6 header, at 48): the quoted next header (byte 6 of it), its
# destination (bytes 24-39), and when it is IPv6-in-IPv6 (41: a TUN request) the source
# of the packet inside (its bytes 8-23, after the director's 40-byte outer header);
# an IPv4 client's request in IPv6 (next header 4, a mixed-family pool): its source,
# bytes 12-15 of the inner IPv4 header.
_QUOTED6_NEXT = 48 + 6
_QUOTED6_DST = 48 + 24
_QUOTED6_INNER_SRC = 48 + 40 + 8
_QUOTED6_INNER_SRC4 = 48 + 40 + 12
IPPROTO_IPV6 = 41
IPPROTO_IPIP = 4
Pattern6 = tuple[int, int, int]  # IPv6 address, mask (128-bit integers), worker


def _u32_words(at: int, addr: int, mask: int, base: str = "") -> str:
    """u32 tests that the 16 bytes at ``at`` (after ``base``, a u32 location) ANDed
    with ``mask`` equal ``addr``: one per 32-bit word of the mask that has bits set."""
    tests = []
    for word in range(4):
        shift = 96 - 32 * word
        part = mask >> shift & 0xFFFFFFFF
        if part:
            tests.append(f"{base}{at + 4 * word}&{part:#x}={addr >> shift & part:#x}")
    return "&&".join(tests)


def shard_rules6(patterns: Iterable[Pattern6], queue: int, bypass: bool = False,
                 patterns4: Iterable[Pattern6] = ()) -> list[str]:  # fmt: skip
    """The IPv6 shard chains' rules (ip6tables): as ``shard_rules``, with the IPv6
    clients' patterns (address, mask, worker; director/core/shard.py), requests by
    source, NAT replies by destination, ICMPv6 errors by the client they quote; an
    error quoting an IPv4 client's request tunnelled in IPv6 by the IPv4 clients'
    patterns (``patterns4``, Shards.patterns)."""
    tail = " --queue-bypass" if bypass else ""

    def to(worker: int, reply: bool = False) -> str:
        number = worker_queue(queue, worker) + (1 if reply else 0)
        return f"-j NFQUEUE --queue-num {number}{tail}"

    tunnelled = f"{_QUOTED6_NEXT}>>24={IPPROTO_IPV6}"
    mixed = f"{_QUOTED6_NEXT}>>24={IPPROTO_IPIP}"
    rules: list[str] = []
    for addr, mask, worker in patterns:
        if not mask:
            break
        where = f"{hex6(addr)}/{hex6(mask)}"
        rules.append(f"-A {SHARD_IN} -s {where} {to(worker)}")
        rules.append(f"-A {SHARD_FWD} -d {where} {to(worker, reply=True)}")
        rules.append(
            f"-A {SHARD_ICMP} -m u32 --u32 {tunnelled}&&"
            f"{_u32_words(_QUOTED6_INNER_SRC, addr, mask)} {to(worker)}"
        )
        rules.append(
            f"-A {SHARD_ICMP} -m u32 ! --u32 {tunnelled} -m u32 ! --u32 {mixed} "
            f"-m u32 --u32 {_u32_words(_QUOTED6_DST, addr, mask)} {to(worker)}"
        )
    for addr, mask, worker in patterns4:
        if not mask:
            break
        rules.append(
            f"-A {SHARD_ICMP} -m u32 --u32 {mixed}&&{_QUOTED6_INNER_SRC4}&{mask:#x}={addr:#x} "
            f"{to(worker)}"
        )
    rules += [f"-A {SHARD_IN} {to(0)}", f"-A {SHARD_FWD} {to(0, reply=True)}",
              f"-A {SHARD_ICMP} {to(0)}"]  # fmt: skip
    return rules


def fast_shard_rules(shards: Shards, queue: int, bypass: bool = False) -> list[str]:
    """DIRECTOR_SHARD_NEW (mangle): DIRECTOR_SHARD_IN's rules, the same queues."""
    head = f"-A {SHARD_IN} "
    return [
        f"-A {SHARD_NEW} {rule[len(head) :]}"
        for rule in shard_rules(shards, queue, bypass)
        if rule.startswith(head)
    ]


# Where director.rules takes the fast rules of its own chains: placeholder -> chain.
FAST_SPLICES = {"@FAST_PRE@": "DIRECTOR_PRE", "@FAST_IN@": "DIRECTOR_IN",
                "@FAST_FWD@": "DIRECTOR_FWD"}  # fmt: skip


# The timeout policies the fast flows' CT rules name (director/shell/cttimeout.py).
FAST_POLICIES = {"TCP_TIMEOUT_POLICY": cttimeout.TCP_POLICY,
                 "UDP_TIMEOUT_POLICY": cttimeout.UDP_POLICY}  # fmt: skip


def _fast_values(text: str) -> str:
    for name, value in (("FAST_TAG", FAST_TAG), ("FAST_MASK", FAST_MASK), ("FAST_BITS", FAST_BITS)):
        text = text.replace(f"@{name}@", hex(value))
    for name, policy in FAST_POLICIES.items():
        text = text.replace(f"@{name}@", policy)
    return text


def render_fast(fast_text: str, queue: int, bypass: bool = False,
                shards: Shards | None = None) -> tuple[dict[str, list[str]], str]:  # fmt: skip
    """director-fast.rules, filled in: the rules it adds to director.rules's chains (by
    placeholder, in order) and its own tables (mangle, nat) for iptables-restore."""
    text = _fast_values(fast_text).replace(
        "@FAST_SHARD_RULES@", "\n".join(fast_shard_rules(shards or Shards(), queue, bypass))
    )
    spliced: dict[str, list[str]] = {place: [] for place in FAST_SPLICES}
    by_chain = {chain: place for place, chain in FAST_SPLICES.items()}
    own: list[str] = []
    table: list[str] = []
    for line in text.splitlines():
        if _TABLE.match(line):
            table = [line]
            continue
        if not table:
            continue  # the head comments
        table.append(line)
        words = line.split()
        if words[:1] == ["-A"] and words[1] in by_chain:
            spliced[by_chain[words[1]]].append(line)
        elif line == "COMMIT":
            if any(_CHAIN.match(kept) for kept in table):
                own += table
            table = []
    return spliced, "\n".join(own) + "\n"


def render6(
    text: str,
    queue: int,
    mark: int,
    bypass: bool = False,
    patterns: Iterable[Pattern6] = (),
    patterns4: Iterable[Pattern6] = (),
) -> str:
    """director6.rules filled in (no fast path: IPv6 services take the every-packet
    path)."""
    rules = shard_rules6(patterns, queue, bypass, patterns4)
    return text.replace("@SHARD_RULES@", "\n".join(rules)).replace("@MARK@", hex(mark))


def render(text: str, queue: int, mark: int, bypass: bool = False,
           shards: Shards | None = None, fast: str | None = None) -> str:  # fmt: skip
    """director.rules filled in; with ``fast`` (director-fast.rules' text) the fast
    rules in its chains, followed by the fast file's own tables."""
    rules = shard_rules(shards or Shards(), queue, bypass)
    text = text.replace("@SHARD_RULES@", "\n".join(rules)).replace("@MARK@", hex(mark))
    spliced, own = render_fast(fast, queue, bypass, shards) if fast is not None else ({}, "")
    for place in FAST_SPLICES:
        lines = spliced.get(place, [])
        text = text.replace(f"{place}\n", "".join(f"{line}\n" for line in lines))
    return text + own


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


def _iptables(*args: str, tables: Tables = IPV4) -> bool:
    try:
        done = _run([tables.tool, "-w", str(IPTABLES_WAIT), *args])
    except HookError as err:
        log.error("%s %s: %s", tables.tool, " ".join(args), err)
        return False
    return done.returncode == 0


def shard_patterns6(shards: Shards) -> list[Pattern6]:
    """The IPv6 clients' shard patterns (address, mask, worker) for the ip6tables
    rules: Shards.patterns6, the bits Shards.owner reads off an IPv6 client."""
    return list(shards.patterns6())


@dataclass
class Hooks:
    """The hooks of one running daemon (``fast``: --fast-path kernel's as well)."""

    queue: int
    mark: int
    bypass: bool = False
    shards: Shards = field(default_factory=Shards)
    fast: bool = False
    text: str = field(default_factory=rules_text)
    fast_text: str = field(default_factory=fast_rules_text)
    text6: str = field(default_factory=rules6_text)
    ipv6: bool = field(default_factory=ipv6_available)  # the IPv6 hooks too
    # ipvsadm --set's figures the fast path's timeout policies get at install (the
    # daemon gives its rules file's); each sync gives its config's.
    timeouts: Timeouts = field(default_factory=Timeouts)
    # The application helpers' TCP ports (the FTP helper's): their NAT real servers'
    # every port is queued (director-rs-any), for the data connections.
    app_ports: frozenset[int] = frozenset()
    _entries: dict[str, set[Entry]] = field(default_factory=dict)
    _marks: set[int] | None = None  # None: the chain's contents are not known
    _marks6: set[int] | None = None  # the same of the IPv6 chain
    _dnat: list[str] | None = None  # DIRECTOR_FAST_DNAT's rules; None: not known
    _acct: set[int] | None = None  # the marks the counting table counts; None: not known
    _timeouts: Timeouts | None = None  # the policies' figures; None: not known
    _tunneled: frozenset[str] | None = None  # the tunnel sets' devices; None: not known

    @property
    def sets(self) -> dict[str, str]:
        """The ipsets of this mode, by name: their type (the IPv6 ones: SETS6)."""
        sets = SETS | SETS6 if self.ipv6 else dict(SETS)
        sets |= TUNNEL_SETS if self.ipv6 else {TUNNEL_SET: TUNNEL_SETS[TUNNEL_SET]}
        return sets | FAST_SETS if self.fast else sets

    def install(self) -> None:
        """Load the hooks.  Hooks a previous run left in place (on_stop = keep) are
        taken over without a gap: the sets keep their contents until the first sync
        swaps new ones in, the chains are reloaded in one iptables-restore
        transaction, and a jump is added only where it is missing.  A previous run's
        fast-path hooks go when this one has none."""
        with IPSet() as ipset:
            for name, stype in self.sets.items():
                ipset.create(name, stype=stype, family=_set_family(name), exclusive=False)
        self._entries = {}  # contents unknown: the first sync replaces them whole
        self._marks = self._marks6 = None
        self._dnat = None
        self._acct = None
        self._timeouts = None
        self._tunneled = None
        if self.fast:  # before the CT rules that name them
            _set_policies(self.timeouts)
            self._timeouts = self.timeouts
            _nft(acct_script(set(), None))
            self._acct = set()
        fast = self.fast_text if self.fast else None
        text = render(self.text, self.queue, self.mark, self.bypass, self.shards, fast)
        _, jumps = declared(text)
        _restore("\n".join(line for line in text.splitlines() if not _JUMP.match(line)) + "\n")
        for table, chain, rule in jumps:
            if not _iptables("-t", table, "-C", chain, *rule.split()):
                _iptables("-t", table, "-I", chain, "1", *rule.split())
        if self.ipv6:
            text6 = render6(self.text6, self.queue, self.mark, self.bypass,
                            shard_patterns6(self.shards), list(self.shards.patterns()))  # fmt: skip
            _, jumps6 = declared(text6)
            _restore("\n".join(line for line in text6.splitlines() if not _JUMP.match(line))
                     + "\n", IPV6)  # fmt: skip
            for table, chain, rule in jumps6:
                if not _iptables("-t", table, "-C", chain, *rule.split(), tables=IPV6):
                    _iptables("-t", table, "-I", chain, "1", *rule.split(), tables=IPV6)
        else:
            log.warning("this host has no IPv6: IPv6 services get no hooks")
        if not self.fast:
            _, own = render_fast(self.fast_text, self.queue)
            _remove_declared(own)
            _destroy_sets(FAST_SETS)
            _delete_policies()  # after the CT rules (the restore above dropped them)
            _delete_acct_table()
        log.info("netfilter hooks installed (NFQUEUE %d, replies %d; %d worker%s%s)",
                 self.queue, reply_queue(self.queue), self.shards.workers,
                 "" if self.shards.workers == 1 else "s",
                 "; fast path: kernel" if self.fast else "")  # fmt: skip

    def reshard(self, shards: Shards) -> None:
        """Send the clients to their workers by ``shards`` from now on: the shard
        chains rewritten in one iptables-restore transaction (and, on the fast path,
        the mangle table's in one more)."""
        rules = shard_rules(shards, self.queue, self.bypass)
        declared_chains = [f":{chain} - [0:0]" for chain in SHARD_CHAINS]
        text = ["*filter", *declared_chains, *rules, "COMMIT"]
        if self.fast:
            new = fast_shard_rules(shards, self.queue, self.bypass)
            text += ["*mangle", f":{SHARD_NEW} - [0:0]", *new, "COMMIT"]
        _restore("\n".join([*text, ""]))
        if self.ipv6:
            rules6 = shard_rules6(shard_patterns6(shards), self.queue, self.bypass,
                                  list(shards.patterns()))  # fmt: skip
            _restore("\n".join(["*filter", *declared_chains, *rules6, "COMMIT", ""]), IPV6)
        self.shards = shards

    def remove(self) -> None:
        """Take out every hook of director's, the fast path's in every mode."""
        _, own = render_fast(self.fast_text, self.queue)
        _remove_declared(own)  # first: its rules name sets and chains of both files
        _remove_declared(self.text)
        if self.ipv6:
            _remove_declared(self.text6, IPV6)
        _destroy_sets(SETS | SETS6 | FAST_SETS | TUNNEL_SETS)
        _delete_policies()  # last: the CT rules that held them are gone
        _delete_acct_table()
        self._entries.clear()
        self._timeouts = None
        self._tunneled = None

    def tunneled(self, devices: frozenset[str]) -> None:
        """Let the packets that come in from ``devices`` (ignore_tunneled's: the
        tunnel devices, director.core.tunneled) through every hook unqueued, from raw
        PREROUTING on (conntrack tracks them as the host's own traffic): the tunnel
        sets hold exactly these devices (none: the sysctl is 0).  A failure raises and
        leaves them unknown, for the next call to replace whole."""
        if devices == self._tunneled:
            return
        have, self._tunneled = self._tunneled, None
        names = [TUNNEL_SET, TUNNEL6_SET] if self.ipv6 else [TUNNEL_SET]
        with IPSet() as ipset:
            for name in names:
                family = _set_family(name)
                if have is None:
                    spare = f"{name}-new"
                    ipset.create(spare, stype=TUNNEL_SETS[name], family=family, exclusive=False)
                    ipset.flush(spare)
                    for dev in sorted(devices):
                        ipset.add(spare, (ANY_NET[name], dev), etype="net,iface", family=family,
                                  exclusive=False)  # fmt: skip
                    ipset.swap(name, spare)
                    ipset.destroy(spare)
                    continue
                for dev in sorted(have - devices):
                    ipset.delete(name, (ANY_NET[name], dev), etype="net,iface", family=family)
                for dev in sorted(devices - have):
                    ipset.add(name, (ANY_NET[name], dev), etype="net,iface", family=family,
                              exclusive=False)  # fmt: skip
        self._tunneled = devices

    def sync(self, config: Config, slots: dict[SlotKey, int] | None = None) -> None:
        """Make the ipsets and the fwmark chain select exactly the services of
        ``config`` and the NAT real servers whose replies must be rewritten; on the
        fast path, the DNAT chain hold a rule per NAT real server of a fast service
        that has a slot in ``slots`` (board.Slots.assign's; None: no rule).

        On the fast path, the conntrack timeout policies take ``config``'s ipvsadm
        --set figures (``cttimeout.policies``); in every-packet mode there are none.

        A failure raises and leaves what it could not finish marked unknown, so the
        next sync (the caller's undo, or a retry) replaces it whole."""
        if self.fast and config.timeouts != self._timeouts:
            self._timeouts = None
            _set_policies(config.timeouts)
            self._timeouts = self.timeouts = config.timeouts
        wanted, marks = selection(config, self.fast, self.app_ports)
        marks6 = marks6_of(config)
        marks -= marks6
        if not self.ipv6:
            wanted = {name: entries for name, entries in wanted.items() if name not in SETS6}
            marks6 = set()
            self._marks6 = marks6
        with IPSet() as ipset:
            for name, entries in wanted.items():
                have = self._entries.pop(name, None)
                family = _set_family(name)
                if have is None:
                    _replace_set(ipset, name, entries)
                else:
                    for entry in have - entries:
                        value, etype = _ipset_entry(entry)
                        ipset.delete(name, value, etype=etype, family=family)
                    for entry in entries - have:
                        value, etype = _ipset_entry(entry)
                        ipset.add(name, value, etype=etype, family=family, exclusive=False)
                self._entries[name] = entries
        if marks != self._marks:
            self._marks = None
            _restore(_fwmark_chain(marks))
            self._marks = marks
        if marks6 != self._marks6:
            self._marks6 = None
            _restore(_fwmark_chain(marks6), IPV6)
            self._marks6 = marks6
        if self.fast:
            dnat = fast_dnat_rules(config, slots or {})
            if dnat != self._dnat:
                self._dnat = None
                _restore(_fast_dnat_chain(dnat))
                self._dnat = dnat
            acct = {fast_mark(slot) for slot in fast_servers(config, slots or {})}
            if acct != self._acct:
                counting, self._acct = self._acct, None
                _nft(acct_script(acct, counting))
                self._acct = acct


# What nfnetlink answers for a subsystem the kernel does not have (nfnetlink_rcv_msg).
NO_CTTIMEOUT = (errno.EINVAL, errno.EOPNOTSUPP)


def _set_policies(timeouts: Timeouts) -> None:
    """The fast path's conntrack timeout policies, made or updated in place to
    ``timeouts`` (in this network namespace); HookError if the kernel refuses."""
    with cttimeout.CtTimeouts() as ct:
        for policy in cttimeout.policies(timeouts):
            try:
                ct.set(policy)
            except OSError as err:
                raise HookError(f"conntrack timeout policy {policy.name}: {err}") from None


def _delete_policies() -> None:
    """The fast path's timeout policies deleted where they are (none: nothing to do);
    a failure is logged, as a failed iptables removal is."""
    try:
        with cttimeout.CtTimeouts() as ct:
            for name in FAST_POLICIES.values():
                ct.delete(name)
    except OSError as err:
        if err.errno in NO_CTTIMEOUT:
            return  # a kernel without nfnetlink_cttimeout has no policy to delete
        log.error("conntrack timeout policies not deleted: %s", err)


def _remove_declared(text: str, tables: Tables = IPV4) -> None:
    """Delete the jumps ``text`` inserts and the chains it declares, where they are.
    A table the host does not have is not named to iptables at all: iptables-legacy
    instantiates a table on first use, and an empty nat table alone hooks NAT into
    every tracked flow (iptables-nft makes none for -D, -F or -X)."""
    chains, jumps = declared(text)
    present = _tables(tables)
    if present is not None:
        chains = [(table, chain) for table, chain in chains if chain in present.get(table, ())]
        jumps = [jump for jump in jumps if jump[0] in present]
    for table, chain, rule in jumps:
        while _iptables("-t", table, "-D", chain, *rule.split(), tables=tables):
            pass
    for table, chain in chains:  # flush all before deleting: they jump to each other
        _iptables("-t", table, "-F", chain, tables=tables)
    for table, chain in chains:
        _iptables("-t", table, "-X", chain, tables=tables)


def _tables(family: Tables = IPV4) -> dict[str, set[str]] | None:
    """The host's tables and their chains (iptables-save), None when it cannot say."""
    try:
        done = _run([family.save])
    except HookError:
        return None
    if done.returncode:
        return None
    tables: dict[str, set[str]] = {}
    table = ""
    for line in done.stdout.decode(errors="replace").splitlines():
        if m := _TABLE.match(line):
            table = m.group(1)
            tables[table] = set()
        elif (m := _CHAIN.match(line)) and table:
            tables[table].add(m.group(1))
    return tables


def _destroy_sets(names: dict[str, str]) -> None:
    with IPSet() as ipset:
        for name in names:
            for spare in (name, f"{name}-new"):
                with contextlib.suppress(Exception):
                    ipset.destroy(spare)


def selection(
    config: Config, fast: bool = False, app_ports: frozenset[int] = frozenset()
) -> tuple[dict[str, set[Entry]], set[int]]:
    """What the hooks must select for ``config`` (the table the core runs): each
    ipset's entries (the VIPs, the NAT real servers whose replies come back through
    FORWARD) and the firewall marks of the fwmark services.

    ``fast`` (--fast-path kernel): the fast services (``fast_service``) in director-fast,
    their NAT real servers in director-fast-rs and not in director-rs or
    director-rs-any (their replies are conntrack's, not the worker's).

    ``app_ports``: the TCP ports an application helper watches (the FTP helper's).  The
    NAT real servers of a TCP service on one of them go in director-rs-any: the
    data connections the helper makes leave them from other ports (a passive one's,
    20 for an active one), as ip_vs_out sees every forwarded packet."""
    names = SETS | SETS6 | FAST_SETS if fast else SETS | SETS6
    wanted: dict[str, set[Entry]] = {name: set() for name in names}
    marks: set[int] = set()

    def add(name: str, entry: Entry) -> None:  # an IPv6 address: the set's IPv6 twin
        wanted[TWIN6[name] if ":" in entry[0] else name].add(entry)

    for svc in config.services:
        proto = PROTO_NUMBERS.get(svc.protocol, 0)
        on_fast_path = fast and fast_service(svc)
        if proto:
            add(VIP_SET, (svc.addr, 0, 0))
        else:
            marks.add(svc.fwmark)
        if on_fast_path:
            wanted[FAST_SET].add((svc.addr, proto, svc.port))
        for dest in svc.dests:
            if dest.method != "masq":
                continue
            add(RS_ADDR_SET, (dest.addr, 0, 0))
            port = (dest.port or svc.port) if proto else dest.port
            if on_fast_path:
                wanted[FAST_RS_SET].add((dest.addr, proto, port))
                continue
            if not port or (proto == IPPROTO_TCP and svc.port in app_ports):
                add(RS_ANY_SET, (dest.addr, 0, 0))
            for protocol in (proto,) if proto else (IPPROTO_TCP, IPPROTO_UDP):
                if port:
                    add(RS_SET, (dest.addr, protocol, port))
    return wanted, marks


def marks6_of(config: Config) -> set[int]:
    """The firewall marks of the IPv6 firewall-mark services (ipvsadm -f MARK -6): their
    rules are ip6tables' DIRECTOR_FWM, the others' iptables'."""
    return {svc.fwmark for svc in config.services if svc.protocol == "fwm" and ipv6_service(svc)}


def fast_servers(config: Config, slots: dict[SlotKey, int]) -> dict[int, tuple[ServiceConf, str]]:
    """The NAT real servers of the fast services that have a slot: slot -> (their
    service, RIP:PORT they are DNATed to: the real server's port, or the service's when
    it has none, IPVS's port translation)."""
    found: dict[int, tuple[ServiceConf, str]] = {}
    for svc in config.services:
        if not fast_service(svc):
            continue
        key = service_key(svc)
        for dest in svc.dests:
            if dest.method != "masq" or ":" in dest.addr:
                continue
            slot = slots.get((key, pack_addr(dest.addr), dest.port))
            if slot is not None:
                found[slot] = (svc, f"{dest.addr}:{dest.port or svc.port}")
    return found


def fast_dnat_rules(config: Config, slots: dict[SlotKey, int]) -> list[str]:
    """DIRECTOR_FAST_DNAT's rules: per NAT real server of a fast service, the flows
    whose opening packet the worker marked with its slot are DNATed to it, in slot
    order."""
    servers = fast_servers(config, slots)
    return [
        f"-A {FAST_DNAT_CHAIN} -p {servers[slot][0].protocol} -m mark --mark "
        f"{fast_mark(slot):#x}/{FAST_BITS:#x} -j DNAT --to-destination {servers[slot][1]}"
        for slot in sorted(servers)
    ]


def _fast_dnat_chain(rules: list[str]) -> str:
    """DIRECTOR_FAST_DNAT, rewritten whole in one transaction."""
    return "\n".join(["*nat", f":{FAST_DNAT_CHAIN} - [0:0]", *rules, "COMMIT", ""])


def _counter(mark: int, direction: str) -> str:
    return f"c_{mark:08x}_{direction}"


def acct_script(marks: set[int], have: set[int] | None) -> str:
    """The nft script that makes the counting table count ``marks``: per mark a counter
    of the packets from the clients (conntrack's ORIGINAL direction, map ``in``) and
    one of those to them (REPLY, map ``out``), found by the connection's mark under
    FAST_BITS.  Counters of marks that stay are left as they are (they go on
    counting); the table is made anew, empty of others, when what it holds is not
    known (``have`` None).  A real server on the director itself answers from
    OUTPUT."""
    lines: list[str] = []
    t = f"ip {ACCT_TABLE}"
    if have is None:
        lines += [f"table {t} {{}}", f"delete table {t}", f"table {t} {{",
                  "  map in { type mark : counter; }", "  map out { type mark : counter; }",
                  f"  chain pre {{ type filter hook prerouting priority {ACCT_PRIORITY}; "
                  "policy accept;",
                  f"    ct direction original counter name ct mark and {FAST_BITS:#x} map @in",
                  f"    ct direction reply counter name ct mark and {FAST_BITS:#x} map @out",
                  "  }",
                  f"  chain out {{ type filter hook output priority {ACCT_PRIORITY}; "
                  "policy accept;",
                  f"    ct direction reply counter name ct mark and {FAST_BITS:#x} map @out",
                  "  }", "}"]  # fmt: skip
        have = set()
    for mark in sorted(have - marks):
        for direction in ("in", "out"):
            lines += [f"delete element {t} {direction} {{ {mark:#x} }}",
                      f"delete counter {t} {_counter(mark, direction)}"]  # fmt: skip
    for mark in sorted(marks - have):
        for direction in ("in", "out"):
            name = _counter(mark, direction)
            lines += [f"add counter {t} {name}",
                      f'add element {t} {direction} {{ {mark:#x} : "{name}" }}']  # fmt: skip
    return "\n".join([*lines, ""])


def _nft(script: str) -> None:
    """One nft transaction (``nft -f -``); HookError if it fails."""
    try:
        done = _run(["nft", "-f", "-"], script.encode())
    except FileNotFoundError:
        raise HookError("nft not found: the kernel fast path needs nftables") from None
    if done.returncode:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise HookError(f"nft failed: {reason[-1] if reason else done.returncode}")


def _delete_acct_table() -> None:
    """The counting table deleted where it is (none, or no nft: nothing to do)."""
    with contextlib.suppress(FileNotFoundError, HookError):
        _run(["nft", "delete", "table", "ip", ACCT_TABLE])


def fast_counters() -> dict[int, tuple[int, int, int, int]]:
    """What the counting table counted since its counters were made, by fast mark:
    (packets, bytes) from the clients, then to them.  Empty when nft cannot say
    (logged): the next reading catches up."""
    try:
        done = _run(["nft", "-j", "list", "counters", "table", "ip", ACCT_TABLE])
    except (FileNotFoundError, HookError) as err:
        log.error("fast-path counters not read: %s", err)
        return {}
    if done.returncode:
        log.error("fast-path counters not read: %s", done.stderr.decode(errors="replace").strip())
        return {}
    return parse_fast_counters(done.stdout.decode(errors="replace"))


_COUNTER_NAME = re.compile(r"^c_([0-9a-f]{8})_(in|out)$")


def parse_fast_counters(text: str) -> dict[int, tuple[int, int, int, int]]:
    """``fast_counters`` from `nft -j list counters`' JSON (libnftables' schema: a list
    "nftables" of objects, each counter {"counter": {"name", "packets", "bytes", ...}})."""
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return {}
    counts: dict[int, list[int]] = {}
    for item in items:
        counter = item.get("counter") if isinstance(item, dict) else None
        m = _COUNTER_NAME.match(str(counter.get("name", ""))) if isinstance(counter, dict) else None
        if m is None or not isinstance(counter, dict):
            continue
        at = 0 if m.group(2) == "in" else 2
        row = counts.setdefault(int(m.group(1), 16), [0, 0, 0, 0])
        row[at], row[at + 1] = int(counter.get("packets", 0)), int(counter.get("bytes", 0))
    return {mark: (row[0], row[1], row[2], row[3]) for mark, row in counts.items()}


def _replace_set(ipset: IPSet, name: str, entries: set[Entry]) -> None:
    """Fill a new set and swap it in: the old contents go in one step."""
    spare = f"{name}-new"
    family = _set_family(name)
    ipset.create(spare, stype=(SETS | SETS6 | FAST_SETS)[name], family=family, exclusive=False)
    ipset.flush(spare)
    for entry in entries:
        value, etype = _ipset_entry(entry)
        ipset.add(spare, value, etype=etype, family=family, exclusive=False)
    ipset.swap(name, spare)
    ipset.destroy(spare)


def _set_family(name: str) -> int:
    """The address family of one of director's ipsets (SETS6: inet6)."""
    return socket.AF_INET6 if name in SETS6 or name == TUNNEL6_SET else socket.AF_INET


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


def _restore(text: str, tables: Tables = IPV4) -> None:
    done = _run([tables.restore, "-w", str(IPTABLES_WAIT), "--noflush"], text.encode())
    if done.returncode:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise HookError(f"{tables.restore} failed: {reason[-1] if reason else done.returncode}")

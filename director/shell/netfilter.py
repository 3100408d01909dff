"""Installing and removing director's netfilter hooks, and keeping its ipsets.

The rules live in ``iptables/director.rules`` (iptables-restore syntax).  Installing is
remove-then-load, removing deletes only the jumps that file inserts and the chains it
declares, so both are idempotent and touch nothing else of the host's firewall.  The
ipsets that select virtual-service traffic are kept over netlink with pyroute2.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pyroute2.ipset import IPSet, PortEntry

from director.core.service import ServiceTable, unpack_addr

log = logging.getLogger(__name__)

SVC_SET = "director-svc"
RS_SET = "director-rs"
Entry = tuple[str, int, int]  # address, protocol number, port


def rules_text() -> str:
    """The hook rules: from the installed package data, else from the source tree."""
    packaged = resources.files("director").joinpath("iptables/director.rules")
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "iptables" / "director.rules").read_text()


def render(text: str, queue: int, mark: int) -> str:
    return text.replace("@QUEUE@", str(queue)).replace("@MARK@", hex(mark))


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


def _iptables(*args: str) -> bool:
    done = subprocess.run(["iptables", "-w", *args], capture_output=True, check=False)
    return done.returncode == 0


@dataclass
class Hooks:
    """The hooks of one running daemon."""

    queue: int
    mark: int
    text: str = field(default_factory=rules_text)
    _entries: dict[str, set[Entry]] = field(default_factory=dict)

    def install(self) -> None:
        self.remove()
        with IPSet() as ipset:
            for name in (SVC_SET, RS_SET):
                ipset.create(name, stype="hash:ip,port", exclusive=False)
                ipset.flush(name)
                self._entries[name] = set()
        subprocess.run(
            ["iptables-restore", "-w", "--noflush"],
            input=render(self.text, self.queue, self.mark).encode(),
            capture_output=True,
            check=True,
        )
        log.info("netfilter hooks installed (NFQUEUE %d)", self.queue)

    def remove(self) -> None:
        chains, jumps = declared(self.text)
        for table, chain, rule in jumps:
            while _iptables("-t", table, "-D", chain, *rule.split()):
                pass
        for table, chain in chains:
            _iptables("-t", table, "-F", chain)
            _iptables("-t", table, "-X", chain)
        with IPSet() as ipset:
            for name in (SVC_SET, RS_SET):
                with contextlib.suppress(Exception):
                    ipset.destroy(name)
        self._entries.clear()

    def sync(self, services: ServiceTable) -> None:
        """Make the ipsets select exactly the configured services and NAT real servers."""
        wanted: dict[str, set[Entry]] = {SVC_SET: set(), RS_SET: set()}
        for svc in services:
            proto, vaddr, vport = svc.key
            if not proto:
                continue  # firewall-mark services are selected by mark, not by set
            wanted[SVC_SET].add((unpack_addr(vaddr), proto, vport))
            for dest in svc.dests:
                if dest.method == "masq":
                    wanted[RS_SET].add((unpack_addr(dest.addr), proto, dest.port or vport))
        with IPSet() as ipset:
            for name, entries in wanted.items():
                have = self._entries.setdefault(name, set())
                for addr, proto, port in have - entries:
                    ipset.delete(name, (addr, PortEntry(port, proto)), etype="ip,port")
                for addr, proto, port in entries - have:
                    ipset.add(
                        name, (addr, PortEntry(port, proto)), etype="ip,port", exclusive=False
                    )
                self._entries[name] = entries

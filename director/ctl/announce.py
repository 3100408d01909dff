"""Which VIPs a director may announce over BGP, and the ExaBGP API lines that say so.

Behind ECMP (several directors announcing the same VIP /32 to a router), a director
must announce a VIP only while it can serve it, and withdraw it as soon as it cannot,
so that the router sends the VIP's flows to the directors that can.  "Can serve" is
read from the daemon's own tables (the ``list`` snapshot of ``dirctl list --json``):
the VIP has a TCP or UDP virtual service with at least one real server that a new
connection could be scheduled to: weight above 0 (the effective weight, which health
checks quiesce to 0), not unreachable, and, when it is checked, ``up`` (a check not yet
run, ``unknown``, is not proof enough to draw traffic; a sorry server is not a healthy
real server).  Firewall-mark services name no address and announce nothing.

ExaBGP's API for processes (its ``process`` stanza): one command per line on the
process's standard output, ``announce route PREFIX next-hop self`` and ``withdraw
route PREFIX next-hop self``.  Pure: no socket, no clock; ``director.cli.announce``
runs the loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HEALTHY_STATES = frozenset({"up"})  # a checked real server's state that counts


def dest_serves(dest: Mapping[str, Any]) -> bool:
    """Whether a real server of the snapshot would take a new connection now."""
    if int(dest.get("weight", 0)) <= 0 or "unreachable" in dest:
        return False
    state = dest.get("state")
    return state is None or state in HEALTHY_STATES


def served_vips(snapshot: Mapping[str, Any]) -> frozenset[str]:
    """The addresses of the virtual services that have a real server to serve them."""
    served: set[str] = set()
    for svc in snapshot.get("services", []):
        addr = svc.get("addr", "")
        if addr and any(dest_serves(d) for d in svc.get("dests", [])):
            served.add(str(addr))
    return frozenset(served)


def route_line(verb: str, vip: str, next_hop: str = "self") -> str:
    """ExaBGP's text API command for the VIP's host route (/32; /128 for IPv6)."""
    length = 128 if ":" in vip else 32
    return f"{verb} route {vip}/{length} next-hop {next_hop}"


@dataclass(slots=True)
class Announcer:
    """The state of what is announced, with rise/fall counting as keepalived's
    checkers do: a VIP is announced after ``rise`` checks in a row found it served and
    withdrawn after ``fall`` in a row found it not (an unreachable daemon serves none).
    """

    vips: Sequence[str]
    rise: int = 1
    fall: int = 1
    next_hop: str = "self"
    announced: set[str] = field(default_factory=set)
    _streak: dict[str, int] = field(default_factory=dict)  # + served in a row, - not

    def step(self, served: Iterable[str]) -> list[str]:
        """One check's result (the VIPs found served): the API lines to print."""
        now = frozenset(served)
        lines: list[str] = []
        for vip in self.vips:
            ok = vip in now
            before = self._streak.get(vip, 0)
            streak = (max(before, 0) + 1) if ok else (min(before, 0) - 1)
            self._streak[vip] = streak
            if ok and vip not in self.announced and streak >= self.rise:
                self.announced.add(vip)
                lines.append(route_line("announce", vip, self.next_hop))
            elif not ok and vip in self.announced and -streak >= self.fall:
                self.announced.discard(vip)
                lines.append(route_line("withdraw", vip, self.next_hop))
        return lines

    def withdraw_all(self) -> list[str]:
        """The lines that withdraw everything announced (at exit)."""
        lines = [route_line("withdraw", vip, self.next_hop) for vip in self.vips
                 if vip in self.announced]  # fmt: skip
        self.announced.clear()
        self._streak.clear()
        return lines

"""sed, nq, fo and ovf: the kernel's walks over svc->destinations, newest first
(ip_vs_sed.c, ip_vs_nq.c, ip_vs_fo.c, ip_vs_ovf.c).  Every expected server below is
worked out from those rules in the comment beside it."""

from __future__ import annotations

from typing import Any

from director.core.sched import create_scheduler
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf

PKT: Any = None  # none of these looks at the packet


def _svc(name: str, **dests: dict[str, int]) -> Service:
    """Real servers given oldest first by name (A is 198.18.0.2, B .3, ...); each goes in
    at the head of the list, as ipvsadm -a does, so the walk meets the last one first."""
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler=name)
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler(name)
    )
    for label, spec in dests.items():
        octet = 2 + ord(label) - ord("A")
        svc.dests.insert(0, Dest(addr=pack_addr(f"198.18.0.{octet}"), port=80, method="masq"))
        for field, value in spec.items():
            setattr(svc.dests[0], field, value)
        svc.scheduler.update(svc)
    return svc


def _label(dest: Dest | None) -> str:
    return "-" if dest is None else chr(ord("A") + dest.addr[3] - 2)


def _pick(svc: Service) -> str:
    return _label(svc.scheduler.schedule(svc, PKT))


def _get(svc: Service, label: str) -> Dest:
    return next(d for d in svc.dests if d.addr[3] == 2 + ord(label) - ord("A"))


# --- sed: smallest (activeconns + 1) / weight, first of equals ---


def test_sed_ties_go_to_the_newest() -> None:
    # C: (0+1)/1 = 1, B: (1+1)/2 = 1, A: (2+1)/3 = 1; all equal, C is met first.
    svc = _svc(
        "sed", A={"weight": 3, "activeconns": 2}, B={"weight": 2, "activeconns": 1}, C={"weight": 1}
    )
    assert _pick(svc) == "C"
    # C: 2/1 = 2 now; B and A tie at 1, B is met first.
    _get(svc, "C").activeconns = 1
    assert _pick(svc) == "B"


def test_sed_ignores_inactive_connections_and_counts_the_new_one() -> None:
    # wlc would take A (overhead 0); sed weighs the new job: A (0+1)/1 = 1 against
    # B (1+1)/10 = 0.2, so B.  B's 1000 inactive connections do not count.
    svc = _svc("sed", A={"weight": 1}, B={"weight": 10, "activeconns": 1, "inactconns": 1000})
    assert _pick(svc) == "B"
    wlc = _svc("wlc", A={"weight": 1}, B={"weight": 10, "activeconns": 1, "inactconns": 1000})
    assert _pick(wlc) == "A"


def test_sed_skips_quiesced_and_overloaded() -> None:
    # C (newest, idle) is quiesced and B overloaded: only A is left.
    svc = _svc(
        "sed", A={"weight": 1, "activeconns": 9}, B={"weight": 5, "overloaded": 1}, C={"weight": 0}
    )
    assert _pick(svc) == "A"
    _get(svc, "A").overloaded = True
    assert _pick(svc) == "-"


# --- nq: the first idle server, else sed ---


def test_nq_takes_the_first_idle_server() -> None:
    # List C, B, A: C is busy, B is idle (inactive connections do not count): B, at
    # once, though A is idle and heavier.
    svc = _svc(
        "nq",
        A={"weight": 9},
        B={"weight": 1, "inactconns": 50},
        C={"weight": 100, "activeconns": 1},
    )
    assert _pick(svc) == "B"


def test_nq_without_idle_servers_is_sed() -> None:
    # C: (1+1)/1 = 2, B: (3+1)/4 = 1, A: (1+1)/2 = 1: B and A tie, B first.
    svc = _svc(
        "nq",
        A={"weight": 2, "activeconns": 1},
        B={"weight": 4, "activeconns": 3},
        C={"weight": 1, "activeconns": 1},
    )
    assert _pick(svc) == "B"


def test_nq_never_takes_an_idle_quiesced_or_overloaded_server() -> None:
    svc = _svc(
        "nq", A={"weight": 1, "activeconns": 5}, B={"weight": 0}, C={"weight": 1, "overloaded": 1}
    )
    assert _pick(svc) == "A"
    _get(svc, "A").weight = 0
    assert _pick(svc) == "-"


# --- fo: highest weight, first of equals ---


def test_fo_highest_weight_then_newest() -> None:
    svc = _svc("fo", A={"weight": 5}, B={"weight": 10, "activeconns": 500}, C={"weight": 10})
    assert _pick(svc) == "C"  # B and C share the highest weight; C is met first
    _get(svc, "C").overloaded = True
    assert _pick(svc) == "B"  # connection counts play no part
    _get(svc, "B").weight = 0
    assert _pick(svc) == "A"
    _get(svc, "A").weight = 0
    assert _pick(svc) == "-"


# --- ovf: highest weight with activeconns <= weight ---


def test_ovf_fills_the_heaviest_then_overflows() -> None:
    # List B (weight 1), A (weight 3).  A is taken while activeconns <= 3: four times
    # (0, 1, 2, 3 active); then B for activeconns 0 and 1; then nobody.
    svc = _svc("ovf", A={"weight": 3}, B={"weight": 1})
    got = ""
    for _ in range(7):
        dest = svc.scheduler.schedule(svc, PKT)
        got += _label(dest)
        if dest is not None:
            dest.activeconns += 1
    assert got == "AAAABB-"


def test_ovf_ties_go_to_the_newest_and_skip_quiesced() -> None:
    svc = _svc("ovf", A={"weight": 2}, B={"weight": 2}, C={"weight": 0})
    assert _pick(svc) == "B"
    _get(svc, "B").overloaded = True
    assert _pick(svc) == "A"

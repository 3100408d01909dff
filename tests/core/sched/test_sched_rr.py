"""rr: the kernel's cursor walk over svc->destinations (ip_vs_rr.c)."""

from __future__ import annotations

from typing import Any

from director.core.sched import create_scheduler
from director.core.service import Dest, Service, ServiceTable, pack_addr
from director.model.config import Config, DestConf, ServiceConf

PKT: Any = None  # rr never looks at the packet


def _svc() -> Service:
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler="rr")
    return Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler("rr")
    )


def _add(svc: Service, name: str, **kw: Any) -> Dest:
    """ipvsadm -a: the new real server goes in at the head of the list."""
    octet = 2 + ord(name) - ord("A")
    dest = Dest(addr=pack_addr(f"198.18.0.{octet}"), port=80, method="masq", **kw)
    svc.dests.insert(0, dest)
    svc.scheduler.update(svc)
    return dest


def _remove(svc: Service, dest: Dest) -> None:
    svc.dests.remove(dest)
    svc.scheduler.update(svc)


def _picks(svc: Service, count: int) -> str:
    names = {f"198.18.0.{i + 2}": chr(ord("A") + i) for i in range(26)}
    out = []
    for _ in range(count):
        dest = svc.scheduler.schedule(svc, PKT)
        out.append("-" if dest is None else names[dest.describe().split(":")[0]])
    return "".join(out)


def _abc() -> tuple[Service, Dest, Dest, Dest]:
    svc = _svc()
    a, b, c = _add(svc, "A"), _add(svc, "B"), _add(svc, "C")
    return svc, a, b, c


def test_order_is_newest_first() -> None:
    # Added A, B, C: the list is C, B, A and the cursor starts at the head.
    svc, *_ = _abc()
    assert _picks(svc, 7) == "CBACBAC"


def test_remove_current_goes_on_with_its_successor() -> None:
    # Cursor on B; ip_vs_rr_del_dest moves it back to C, so A (B's successor) is next.
    svc, _a, b, _c = _abc()
    assert _picks(svc, 2) == "CB"
    _remove(svc, b)
    assert _picks(svc, 4) == "ACAC"


def test_remove_current_at_front_goes_back_to_head() -> None:
    svc, _a, _b, c = _abc()
    assert _picks(svc, 1) == "C"
    _remove(svc, c)
    assert _picks(svc, 3) == "BAB"


def test_remove_current_at_end_wraps() -> None:
    svc, a, _b, _c = _abc()
    assert _picks(svc, 3) == "CBA"
    _remove(svc, a)  # cursor moves back to B; the walk wraps to C
    assert _picks(svc, 3) == "CBC"


def test_remove_other_server_keeps_cursor() -> None:
    svc, a, _b, _c = _abc()
    assert _picks(svc, 1) == "C"
    _remove(svc, a)
    assert _picks(svc, 3) == "BCB"


def test_add_keeps_cursor_new_server_waits_for_the_wrap() -> None:
    svc, *_ = _abc()
    assert _picks(svc, 1) == "C"
    _add(svc, "D")  # list D, C, B, A; cursor still on C
    assert _picks(svc, 5) == "BADCB"


def test_quiesced_and_overloaded_are_skipped() -> None:
    svc, a, b, _c = _abc()
    b.weight = 0
    assert _picks(svc, 4) == "CACA"
    a.overloaded = True
    assert _picks(svc, 2) == "CC"
    svc.dests[0].overloaded = True
    assert _picks(svc, 2) == "--"


def test_none_available_keeps_cursor() -> None:
    svc, a, b, c = _abc()
    assert _picks(svc, 1) == "C"
    for d in (a, b, c):
        d.overloaded = True
    assert _picks(svc, 1) == "-"
    for d in (a, b, c):
        d.overloaded = False
    assert _picks(svc, 1) == "B"


def test_empty_service() -> None:
    assert _svc().scheduler.schedule(_svc(), PKT) is None
    svc = _svc()
    assert svc.scheduler.schedule(svc, PKT) is None


def test_through_service_table_apply() -> None:
    def config(*octets: int) -> Config:
        dests = tuple(DestConf(f"198.18.0.{o}", 80, "masq") for o in octets)
        return Config(
            services=(ServiceConf("tcp", "203.0.113.5", 80, scheduler="rr", dests=dests),)
        )

    table = ServiceTable()
    table.apply(config(2, 3, 4))  # A, B, C in one go: list C, B, A
    (svc,) = table
    assert _picks(svc, 2) == "CB"
    table.apply(config(2, 4))  # delete B, the current server
    assert _picks(svc, 3) == "ACA"

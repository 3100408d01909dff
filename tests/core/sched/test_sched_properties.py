"""Properties every scheduler here shares, over random sets of real servers."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.core.sched import create_scheduler, scheduler_names
from director.core.service import Dest, Service, pack_addr
from director.model.config import ServiceConf

PKT: Any = None
OURS = ("rr", "wrr", "lc", "wlc")

_dest = st.fixed_dictionaries(
    {
        "weight": st.sampled_from([0, 0, 1, 2, 3, 5, 8, 2147483647]),
        "overloaded": st.booleans(),
        "activeconns": st.integers(0, 50),
        "inactconns": st.integers(0, 1000),
    }
)


def _svc(name: str, specs: list[dict[str, Any]]) -> Service:
    conf = ServiceConf("tcp", "203.0.113.5", 80, scheduler=name)
    svc = Service(
        key=(6, pack_addr("203.0.113.5"), 80), conf=conf, scheduler=create_scheduler(name)
    )
    for i, spec in enumerate(specs):
        dest = Dest(addr=pack_addr(f"198.18.0.{2 + i}"), port=80, method="masq", **spec)
        svc.dests.insert(0, dest)
        svc.scheduler.update(svc)
    return svc


def _eligible(dest: Dest) -> bool:
    return dest.weight > 0 and not dest.overloaded


def test_registered() -> None:
    assert set(OURS) <= set(scheduler_names())


@pytest.mark.parametrize("name", OURS)
@given(specs=st.lists(_dest, max_size=8), picks=st.integers(1, 20))
def test_never_quiesced_or_overloaded(name: str, specs: list[dict[str, Any]], picks: int) -> None:
    svc = _svc(name, specs)
    anyone = any(_eligible(d) for d in svc.dests)
    for _ in range(picks):
        dest = svc.scheduler.schedule(svc, PKT)
        if anyone:
            assert dest is not None
            assert _eligible(dest)
        else:
            assert dest is None


@pytest.mark.parametrize("name", OURS)
def test_empty_service(name: str) -> None:
    svc = _svc(name, [])
    assert svc.scheduler.schedule(svc, PKT) is None


def _overhead(dest: Dest) -> int:
    return dest.activeconns * 256 + dest.inactconns


@given(specs=st.lists(_dest, max_size=8))
def test_lc_takes_the_first_least_loaded(specs: list[dict[str, Any]]) -> None:
    svc = _svc("lc", specs)
    eligible = [d for d in svc.dests if _eligible(d)]
    expected = min(eligible, key=_overhead, default=None)  # min keeps the first of equals
    assert svc.scheduler.schedule(svc, PKT) is expected


@given(specs=st.lists(_dest, max_size=8))
def test_wlc_takes_the_first_least_weighted_load(specs: list[dict[str, Any]]) -> None:
    svc = _svc("wlc", specs)
    eligible = [d for d in svc.dests if _eligible(d)]
    expected = min(eligible, key=lambda d: Fraction(_overhead(d), d.weight), default=None)
    assert svc.scheduler.schedule(svc, PKT) is expected


@given(specs=st.lists(_dest, min_size=1, max_size=8))
def test_rr_visits_every_eligible_server_once_per_round(specs: list[dict[str, Any]]) -> None:
    svc = _svc("rr", specs)
    eligible = [d for d in svc.dests if _eligible(d)]
    got = [svc.scheduler.schedule(svc, PKT) for _ in range(2 * len(eligible))]
    assert got == eligible * 2

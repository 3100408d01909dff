"""``list --stats/--rate/--exact``: ipvsadm's print_largenum and rate rows, with rates."""

from __future__ import annotations

import json

import pytest

from director.ctl.listing import ListFormat, find_service, format_json, format_list, largenum
from director.ctl.snapshot import Snapshot
from tests.conftest import MakeTarget


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "        0"),
        (99_999_999, " 99999999"),  # below 100 million: exact, 9 wide
        (100_000_000, "  100000K"),  # below 1 billion: thousands
        (999_999_999, "  999999K"),
        (1_000_000_000, "    1000M"),  # below 100 billion: millions (8 wide, then the unit)
        (99_999_999_999, "   99999M"),
        (100_000_000_000, "     100G"),  # below 100 trillion: billions
        (99_999_999_999_999, "   99999G"),
        (100_000_000_000_000, "     100T"),  # then trillions
        (123_456_789_012_345_678, "  123456T"),
    ],
)
def test_largenum_abbreviates_as_ipvsadm(value: int, text: str) -> None:
    assert largenum(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7, "        7"),  # up to 8 digits: %9llu
        (12_345_678, " 12345678"),
        (123_456_789, " 123456789"),  # 9 digits and more: width len + 1
        (123_456_789_012_345_678, " 123456789012345678"),
    ],
)
def test_largenum_exact(value: int, text: str) -> None:
    assert largenum(value, exact=True) == text


def _snapshot(make_target: MakeTarget) -> Snapshot:
    """The daemon's own snapshot, with rates (the estimator's, decoded) put in."""
    snap = make_target(
        "-A -t 203.0.113.5:80 -s rr\n"
        "-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m\n"
        "-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m\n"
    ).snapshot(conns=False)
    (svc,) = snap["services"]
    svc["stats"].update(cps=12, inpps=345, outpps=300, inbps=150_000_000, outbps=2_500_000_000)
    first, second = sorted(svc["dests"], key=lambda d: d["addr"])
    first["stats"].update(cps=7, inpps=200, outpps=180, inbps=90_000, outbps=1_200_000)
    second["stats"].update(cps=5, inpps=145, outpps=120, inbps=60_000, outbps=800_000)
    return snap


def test_rate_rows_service_all_largenum_servers_three_plain_columns(
    make_target: MakeTarget,
) -> None:
    snap = _snapshot(make_target)
    assert format_list(snap, ListFormat(rate=True)) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
        "  -> RemoteAddress:Port\n"
        "TCP  203.0.113.5:80                     12      345      300  150000K    2500M\n"
        "  -> 198.18.0.2:80                       7      200      180    90000  1200000\n"
        "  -> 198.18.0.3:8000                     5      145      120    60000   800000\n"
    )


def test_rate_exact_and_json_carry_the_same_numbers(make_target: MakeTarget) -> None:
    snap = _snapshot(make_target)
    svc = find_service(snap, ("tcp", "203.0.113.5", 80))
    assert svc is not None
    lines = format_list(snap, ListFormat(rate=True, exact=True), svc).splitlines()
    assert lines[2] == (
        "TCP  203.0.113.5:80                     12      345      300 150000000 2500000000"
    )
    data = json.loads(format_json(svc))
    assert data["stats"]["inbps"] == 150_000_000
    assert sorted(d["stats"]["cps"] for d in data["dests"]) == [5, 7]

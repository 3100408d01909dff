"""``dirctl top``: frames drawn from snapshots, busiest first; fixed frame counts."""

from __future__ import annotations

import io
from typing import Any

from director.cli import top
from tests.conftest import MakeTarget

RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -m
-a -t 203.0.113.5:80 -r 198.18.0.3:8000 -m
-A -t 203.0.113.5:21 -s rr
-a -t 203.0.113.5:21 -r 198.18.0.3:21 -m
"""


def _snapshot(make_target: MakeTarget) -> Any:
    """The daemon's own snapshot of RULES, with counters and rates put in."""
    snap: Any = make_target(RULES).snapshot(conns=False)
    snap["conn_entries"] = 9
    ftp, web = sorted(snap["services"], key=lambda s: s["port"])
    ftp["stats"].update(cps=1, conns=30)
    web["stats"].update(cps=40, inpps=400, outpps=380, inbps=40_000, outbps=900_000, conns=80)
    dests = {(d["addr"], d["port"]): d for d in web["dests"]}
    dests["198.18.0.2", 80]["stats"].update(cps=30)
    dests["198.18.0.3", 8000]["stats"].update(cps=10)
    dests["198.18.0.2", 80]["activeconns"] = 4
    dests["198.18.0.2", 80]["inactconns"] = 2
    return snap


def test_render_sorts_services_and_servers_by_rate(make_target: MakeTarget) -> None:
    lines = top.render(_snapshot(make_target), "12:00:00").splitlines()
    assert lines[0].startswith("director top 12:00:00  services 2  connection entries 9")
    body = [line.split()[:2] for line in lines[4:]]
    assert body == [
        ["TCP", "203.0.113.5:80"],
        ["->", "198.18.0.2:80"],
        ["->", "198.18.0.3:8000"],
        ["TCP", "203.0.113.5:21"],
        ["->", "198.18.0.3:21"],
    ]
    web = lines[4].split()
    # CPS InPPS OutPPS InBPS OutBPS ActConn InActConn Conns
    assert web[2:] == ["40", "400", "380", "40000", "900000", "4", "2", "80"]
    assert lines[5].split()[2:] == ["30", "0", "0", "0", "0", "4", "2", "0"]


def test_run_draws_the_asked_number_of_frames_without_clearing(make_target: MakeTarget) -> None:
    out = io.StringIO()
    calls = []
    snap = _snapshot(make_target)

    def fetch() -> Any:
        calls.append(1)
        return snap

    top.run(fetch, interval=0.01, iterations=3, out=out)
    assert len(calls) == 3
    assert out.getvalue().count("director top ") == 3
    assert top.CLEAR not in out.getvalue()

"""The route marker in listings: a DR or TUN real server the director has no usable
route to is listed with ``[unreachable]`` after ipvsadm's columns (as ``[down]`` is),
and the reason is in the JSON.  ipvsadm has no such marker: the kernel keeps no route
state per real server it shows (ip_vs_ctl.c, ip_vs_new_dest takes the server whatever
the routes say)."""

from __future__ import annotations

from director.ctl.listing import format_json, format_list
from director.ctl.report import snapshot
from tests.core.test_unreachable import director_one_unreachable


def test_listing_marks_the_unreachable_server_after_ipvsadms_columns() -> None:
    snap = snapshot(director_one_unreachable(), (900, 120, 300), 0.0, conns=False)
    lines = format_list(snap).splitlines()
    (rs2,) = [line for line in lines if "198.18.0.3:80" in line]
    (rs1,) = [line for line in lines if "198.18.0.2:80" in line]
    # ipvsadm's five columns untouched, the marker after them (as [down] is)
    assert rs2.split()[:6] == ["->", "198.18.0.3:80", "Route", "1", "0", "0"]
    assert rs2.endswith(" [unreachable]")
    assert "[unreachable]" not in rs1
    dests = {d["addr"]: d for d in snap["services"][0]["dests"]}
    assert dests["198.18.0.3"]["unreachable"] == "no route"
    assert "unreachable" not in dests["198.18.0.2"]
    assert '"unreachable": "no route"' in format_json(snap)

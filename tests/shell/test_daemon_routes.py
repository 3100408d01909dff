"""The daemon's own commit with real servers it has no route to (tests/target.py's
StaticRoutes answering None): taken, as IPVS takes them (net/netfilter/ipvs/ip_vs_ctl.c,
ip_vs_new_dest checks only the address type), shown unreachable, and served once a
route appears (the route change netlink announces re-annotates every real server)."""

from __future__ import annotations

from pathlib import Path

from director.ctl.listing import format_list
from tests.conftest import MakeTarget
from tests.target import CONNECTED, StaticRoutes

RULES = """\
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 198.18.0.2:80 -g -w 1
-A -t 203.0.113.6:80 -s rr
-a -t 203.0.113.6:80 -r 198.19.0.2:80 -i -w 1
"""


def test_rules_with_unroutable_dr_and_tun_servers_are_committed(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    routes = StaticRoutes(default=None)  # a LAN link down at boot: no route at all
    daemon = make_target(RULES, routes=routes)  # before the fix: ConfigError, no route
    assert daemon.settings.rules.read_text().count("-a ") == 2  # persisted as given
    listing = format_list(daemon.snapshot(conns=False))
    rows = [line for line in listing.splitlines() if line.startswith("  -> 198.")]
    assert len(rows) == 2 and all(row.endswith(" [unreachable]") for row in rows), listing

    routes.default = CONNECTED  # the link came up: the kernel announced the route
    daemon._annotate_routes()
    listing = format_list(daemon.snapshot(conns=False))
    assert "[unreachable]" not in listing, listing

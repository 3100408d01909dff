"""ignore_tunneled in the hooks (iptables/director*.rules, director/shell/netfilter.py):
a packet that came in from a tunnel device leaves every director chain by a RETURN
before anything else of it can queue, NOTRACK or DNAT it, as
net/netfilter/ipvs/ip_vs_core.c accepts a packet with ipvs_property at the very top of
ip_vs_in_hook (LOCAL_IN) and ip_vs_out_hook (FORWARD); the devices come from netlink's
links (director/shell/netlink.py link_of).  The kernel loads the rules and fills the
sets in tests/netns/test_netns_ignore_tunneled.py."""

from __future__ import annotations

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from director.core.tunneled import Link
from director.shell.netfilter import (
    TUNNEL6_SET,
    TUNNEL_SET,
    Hooks,
    _set_family,
    fast_rules_text,
    render,
    render6,
    rules6_text,
    rules_text,
)
from director.shell.netlink import link_of

QUEUE, MARK = 10, 0x1D1


def chain(text: str, table: str, name: str) -> list[str]:
    """The rules appended to ``name`` in ``table``, in order."""
    found: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif current == table and line.startswith(f"-A {name} "):
            found.append(line[len(f"-A {name} ") :])
    return found


def ignored(name: str) -> str:
    return f"-m set --match-set {name} src,src -j RETURN"


RENDERED = {
    "ipv4": (render(rules_text(), QUEUE, MARK), TUNNEL_SET),
    "ipv4-fast": (render(rules_text(), QUEUE, MARK, fast=fast_rules_text()), TUNNEL_SET),
    "ipv6": (render6(rules6_text(), QUEUE, MARK), TUNNEL6_SET),
}


@pytest.mark.parametrize("family", list(RENDERED))
@pytest.mark.parametrize(
    ("table", "name"),
    [("raw", "DIRECTOR_PRE"), ("filter", "DIRECTOR_IN"), ("filter", "DIRECTOR_FWD")],
)
def test_a_tunnel_devices_packets_leave_each_chain_first(
    family: str, table: str, name: str
) -> None:
    """First in raw PREROUTING (no NOTRACK: conntrack tracks them as the host's own, as
    with the kernel's IPVS), LOCAL_IN (no queue: ip_vs_in_hook) and FORWARD (no queue
    for a NAT reply: ip_vs_out_hook), the fast path's rules after it."""
    text, tunnel_set = RENDERED[family]
    rules = chain(text, table, name)
    assert rules[0] == ignored(tunnel_set), rules
    assert sum(tunnel_set in rule for rule in rules) == 1


def test_a_tunnel_devices_packet_opens_no_fast_flow() -> None:
    text, _ = RENDERED["ipv4-fast"]
    assert chain(text, "mangle", "DIRECTOR_FAST")[0] == ignored(TUNNEL_SET)


def test_the_sets_are_made_with_the_hooks_one_per_family() -> None:
    """hash:net,iface, matched src,src: any source address, the input device."""
    both = Hooks(queue=QUEUE, mark=MARK, ipv6=True).sets
    assert both[TUNNEL_SET] == both[TUNNEL6_SET] == "hash:net,iface"
    assert TUNNEL6_SET not in Hooks(queue=QUEUE, mark=MARK, ipv6=False).sets
    assert (_set_family(TUNNEL_SET), _set_family(TUNNEL6_SET)) == (2, 10)


def _message(
    name: str, kind: str | None = None, data: list[list[object]] | None = None
) -> ifinfmsg:
    """An RTM_NEWLINK message as the kernel sends it: encoded, then decoded."""
    msg = ifinfmsg()
    msg["attrs"] = [["IFLA_IFNAME", name]]
    if kind is not None:
        info: list[list[object]] = [["IFLA_INFO_KIND", kind]]
        if data is not None:
            info.append(["IFLA_INFO_DATA", {"attrs": data}])
        msg["attrs"].append(["IFLA_LINKINFO", {"attrs": info}])
    msg.encode()
    got = ifinfmsg(msg.data)
    got.decode()
    return got


@pytest.mark.parametrize(
    ("args", "link"),
    [
        (("eth0",), Link("eth0")),
        (("dirtun0", "tun"), Link("dirtun0", "tun")),
        (("t4", "ipip", [["IFLA_IPIP_TTL", 64]]), Link("t4", "ipip")),
        (("t4", "ipip", [["IFLA_IPIP_ENCAP_TYPE", 2]]), Link("t4", "ipip", 2)),
        (("s6", "sit", [["IFLA_SIT_ENCAP_TYPE", 1]]), Link("s6", "sit", 1)),
        (("g", "gre", [["IFLA_GRE_ENCAP_TYPE", 0], ["IFLA_GRE_TTL", 3]]), Link("g", "gre")),
        (("g6", "ip6gre", [["IFLA_IP6GRE_ENCAP_TYPE", 1]]), Link("g6", "ip6gre", 1)),
        (("x", "ip6tnl", [["IFLA_IP6TNL_ENCAP_TYPE", 2]]), Link("x", "ip6tnl", 2)),
        (("v", "veth"), Link("v", "veth")),
    ],
)
def test_link_of_reads_the_kind_and_the_encapsulation(args: tuple[object, ...], link: Link) -> None:
    assert link_of(_message(*args)) == link  # type: ignore[arg-type]
